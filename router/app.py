"""The router's HTTP face: an OpenAI-compatible API in front of the cascade.

`create_app(config, secrets)` builds the app; its state lives on `app.state` (`runtime`: the live config snapshot,
`client`: the shared HTTP client opened in the lifespan, `stats`, `metrics`, `secrets`). Every error has the OpenAI
shape `{"error": {"message", "type", "param", "code"}}`.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics, GET /stats,
GET/POST /admin/config (hot swap). Model name: the cascade's name (or absent) runs the cascade; a stage's name pins
the request to that stage (its endpoints, retries and fallbacks, no escalation).

The handlers are module-level functions on one APIRouter (`api`), reading everything from `request.app.state`, so
`create_app` only wires state, routes and error handling. Bodies are parsed and validated at the boundary
(`router/protocol.py`) before any work, so bad input is a 4xx; a bug is a 500 that keeps the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.config import ConfigError, RouterConfig, swap_config
from router.errors import RouterError
from router.protocol import CompletionRequest, parse_json, validate_request
from router.quality import QualityWatch, answer_text
from router.security import Secrets
from router.serving import Cascade, Runtime, Trace
from router.stats import Metrics, Stats
from router.upstream import make_session

_JSON = "application/json"
ADMIN_MAX_REQUEST_BYTES = 8 * 1024 * 1024  # admin bodies have their own limit: a swap can never lock the admin out
_log = logging.getLogger("router")


def _error_response(err: RouterError, headers: dict[str, str] | None = None) -> Response:
    return Response(err.json_bytes(), status_code=err.status, media_type=_JSON, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise RouterError(400, "invalid Content-Length header") from None
        if too_big:
            raise RouterError(413, f"request body over {limit} bytes", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RouterError(413, f"request body over {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ClientGone(Exception):
    """The client hung up before the answer was ready."""


async def _until_disconnect(receive: Receive, work: Awaitable[Any]) -> Any:
    """Run `work`; if the client disconnects first, cancel it (which closes the engine connections)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # engine connections closed before we go on
    if task.cancelled():
        raise ClientGone
    return task.result()


class CascadeStream(Response):
    """ASGI response for a streamed cascade: waits for the answering stage (then sends headers), relays SSE bytes,
    and cancels everything, engine streams included, when the client disconnects."""

    def __init__(self, gen: AsyncIterator[bytes | Trace], done: Any,  # noqa: D107 (no Response init)
                 after: Any = None) -> None:
        self.background = None
        self.gen = gen
        self.done = done  # callback(ok: bool) for stats/metrics
        self.after = after  # callback() once the client has the whole answer (the quality watch's offer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.ensure_future(self._produce(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        ok = False
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                ok = task.result()
        except OSError:
            pass  # the client went away while we were sending
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            watcher.cancel()
            await self.gen.aclose()  # type: ignore[attr-defined]
            self.done(ok)
        if ok and self.after is not None:
            self.after()

    async def _produce(self, send: Send) -> bool:
        try:
            first = await self.gen.__anext__()
        except RouterError as err:
            await send({"type": "http.response.start", "status": err.status,
                        "headers": [(b"content-type", _JSON.encode())]})
            await send({"type": "http.response.body", "body": err.json_bytes()})
            return False
        assert isinstance(first, Trace)
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        headers += [(k.encode(), v.encode()) for k, v in first.headers().items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in self.gen:
            assert isinstance(chunk, bytes)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return True


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The engine client lives as long as the server; its connection limit is fixed at start (see config.py)."""
    async with make_session(app.state.runtime.config.max_connections) as session:
        app.state.client = session
        try:
            yield
        finally:
            await app.state.watch.close()   # shadow checks in flight are cancelled before the client closes


def create_app(config: RouterConfig, secrets: Secrets | None = None) -> FastAPI:
    """Build the router app for `config` (keys from `secrets`; none: /v1 open, /admin disabled)."""
    app = FastAPI(title="cascadia router", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = Runtime(config)
    app.state.secrets = secrets or Secrets()
    app.state.stats = Stats(config.stats_windows_s)
    app.state.metrics = Metrics()
    app.state.metrics.config_version.set(1)
    app.state.watch = QualityWatch(app.state.metrics)
    app.state.in_flight = {}   # config version -> client requests in flight that started on it
    app.include_router(api)
    app.add_exception_handler(RouterError, _router_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_middleware(_InternalErrors)
    return app


async def _router_error(request: Request, exc: RouterError) -> Response:
    return _error_response(exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return _error_response(RouterError(exc.status_code, str(exc.detail), kind))


class _InternalErrors:
    """A bug answers 500 in the error shape and the connection stays usable. (Starlette's outermost handler would
    answer too, but then re-raise, and uvicorn drops the client's keep-alive socket.) A response already started
    cannot be turned into an error: that case re-raises, and the connection closes as it must."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            _log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            err = RouterError(500, f"internal error: {type(exc).__name__}", "server_error")
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", _JSON.encode())]})
            await send({"type": "http.response.body", "body": err.json_bytes()})


def _auth_api(request: Request) -> None:
    if not request.app.state.secrets.check_api(request.headers.get("authorization")):
        raise RouterError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                          "authentication_error", "invalid_api_key")


def _auth_admin(request: Request) -> None:
    secrets: Secrets = request.app.state.secrets
    if not secrets.admin_enabled:
        raise RouterError(403, "the admin API is disabled (no admin key configured)", "permission_error",
                          "admin_disabled")
    if not secrets.check_admin(request.headers.get("authorization")):
        raise RouterError(401, "missing or invalid admin key", "authentication_error", "invalid_admin_key")


api = APIRouter()


@api.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, "chat")


@api.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, "completions")


async def _serve(request: Request, kind: str) -> Response:
    _auth_api(request)
    body = parse_json(await _read_body(request, request.app.state.runtime.config.max_request_bytes))
    # one snapshot for the whole request (hot swap safe), taken after the last await before _Finish counts it as in
    # flight on its version: a drain that waits for no request on an older version misses none
    rt: Runtime = request.app.state.runtime
    req = validate_request(kind, body)  # typed view; `body` (unknown fields kept) goes to the engines
    model = req.model or rt.config.name
    if model != rt.config.name and model not in rt.stages:
        raise RouterError(404, f"model {model!r} does not exist; use {rt.config.name!r} (the cascade) or a "
                               f"stage name: {', '.join(rt.stages)}", "invalid_request_error",
                          "model_not_found", "model")
    pinned = model if model in rt.stages else None
    if isinstance(req, CompletionRequest) and req.echo and pinned is None:
        raise RouterError(400, "echo is not supported by the cascade (prompt logprobs would be scored); pin a "
                               "stage by its model name", param="echo", code="unsupported_parameter")
    wants = req.wants()
    cascade = Cascade(rt, request.app.state.client)
    trace = Trace(model=model)
    done = _Finish(request, trace, rt.version)
    watch: QualityWatch = request.app.state.watch
    shadow = rt.config.quality_watch is not None and pinned is None
    if req.stream:
        after = (lambda: watch.offer(rt, cascade.client, kind, body, None if trace.fallback else trace.stage,
                                     trace.score, answer_text(kind, events=trace.answer))) if shadow else None
        return CascadeStream(cascade.stream(kind, body, wants, trace, pinned), done, after)
    try:
        out = await _until_disconnect(request.receive, cascade.complete(kind, body, wants, trace, pinned))
    except ClientGone:
        done(False, "cancelled")
        return Response(status_code=499)
    except RouterError as err:
        done(False)
        return _error_response(err, trace.headers())
    except BaseException:
        done(False)
        raise
    done(True)
    # the shadow check (if sampled) starts after the response is sent: Starlette runs `background` then
    background = (BackgroundTask(_offer, watch, rt, cascade.client, kind, body, trace, out)
                  if shadow and not trace.fallback else None)
    return Response(json.dumps(out), media_type=_JSON, headers=trace.headers(), background=background)


async def _offer(watch: QualityWatch, rt: Runtime, client: Any, kind: str, body: dict, trace: Trace,
                 out: dict) -> None:
    watch.offer(rt, client, kind, body, trace.stage, trace.score, answer_text(kind, out))


class _Finish:
    """Called once when a request ends: in-flight gauge and count per config version (GET /admin/config), Prometheus
    metrics and /stats."""

    def __init__(self, request: Request, trace: Trace, version: int) -> None:
        self.metrics: Metrics = request.app.state.metrics
        self.stats: Stats = request.app.state.stats
        self.active: dict[int, int] = request.app.state.in_flight
        self.version = version
        self.trace = trace
        self.t0 = time.perf_counter()
        self.metrics.in_flight.inc()
        self.active[version] = self.active.get(version, 0) + 1

    def __call__(self, ok: bool, result: str | None = None) -> None:
        ok = ok and self.trace.error is None
        seconds = time.perf_counter() - self.t0
        self.metrics.in_flight.dec()
        left = self.active.get(self.version, 0) - 1
        if left > 0:
            self.active[self.version] = left
        else:
            self.active.pop(self.version, None)
        if result is None:
            result = ("fallback" if self.trace.fallback else "ok") if ok else "error"
        self.metrics.record(self.trace, result, seconds)
        self.stats.record(self.trace, ok, seconds)


@api.get("/v1/models")
async def models(request: Request) -> Response:
    _auth_api(request)
    rt: Runtime = request.app.state.runtime
    ids = [rt.config.name] + [s.name for s in rt.config.stages]
    data = [{"id": i, "object": "model", "created": 0, "owned_by": "cascadia"} for i in ids]
    return JSONResponse({"object": "list", "data": data})


@api.get("/health")
async def health(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    now = time.monotonic()
    stages = {name: [{"url": e.url, "healthy": e.down_until <= now, "outstanding": e.outstanding}
                     for e in pool.endpoints] for name, pool in rt.pools.items()}
    return JSONResponse({"status": "ok", "cascade": rt.config.name, "config_version": rt.version, "stages": stages})


@api.get("/metrics")
async def metrics(request: Request) -> Response:
    _auth_api(request)
    request.app.state.watch.export(request.app.state.runtime)
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@api.get("/stats")
async def stats(request: Request) -> Response:
    _auth_api(request)
    rt: Runtime = request.app.state.runtime
    snap = request.app.state.stats.snapshot([s.name for s in rt.config.stages])
    snap.update({"cascade": rt.config.name, "config_version": rt.version})
    quality = request.app.state.watch.snapshot(rt)
    if quality is not None:
        snap["quality"] = quality
    return JSONResponse(snap)


@api.get("/admin/config")
async def get_config(request: Request) -> Response:
    _auth_admin(request)
    rt: Runtime = request.app.state.runtime
    # model_dump_json writes a -inf threshold as "-Infinity" (RouterConfig's ser_json_inf_nan); JSONResponse would fail
    # in_flight: client requests per config version they started on; a replica taken out of the config gets no
    # more traffic once no request on an older version is in flight (requests keep their snapshot to the end)
    in_flight = json.dumps({str(v): n for v, n in sorted(request.app.state.in_flight.items())})
    return Response(f'{{"version": {rt.version}, "in_flight": {in_flight}, "config": {rt.config.model_dump_json()}}}',
                    media_type="application/json")


@api.post("/admin/config")
async def put_config(request: Request) -> Response:
    """Hot swap: a full router config, or {"plan": plan.json, "endpoints": {stage: [url]}}. Atomic: requests in
    flight finish on the snapshot they started with."""
    _auth_admin(request)
    old: Runtime = request.app.state.runtime
    doc = parse_json(await _read_body(request, ADMIN_MAX_REQUEST_BYTES), "admin config")
    try:
        new_config = swap_config(old.config, doc)
        runtime = Runtime(new_config, old.version + 1, previous=old)
    except ConfigError as exc:
        raise RouterError(400, str(exc), code="invalid_config") from None
    request.app.state.runtime = runtime
    request.app.state.metrics.config_version.set(old.version + 1)
    return JSONResponse({"version": old.version + 1, "cascade": new_config.name,
                         "stages": [s.name for s in new_config.stages]})
