"""Test helpers for the router: run ASGI apps on real loopback ports, a fault-injecting fake engine, configs."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cascadia_sky.engines import free_port


@contextmanager
def serve_app(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=1, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class FakeEngine:
    """An OpenAI-compatible fake engine whose behaviour tests set: `mode` is one of
    ok | error500 | error400 | hang | die_mid_stream | slow_stream | bad_logprobs (`"logprob": "abc"`) | bad_sse
    (a `data: [1,2]` event first); `logprob` is every token's logprob; `api_key` set: requests without
    `Authorization: Bearer <api_key>` get 401 (as vLLM --api-key does). It counts requests, keeps the bodies and
    Authorization headers it saw, and notes streams that the router closed early (cancellation)."""

    name: str
    logprob: float = -0.1
    tokens: int = 8
    mode: str = "ok"
    legacy: bool = False          # legacy completions logprob layout (vLLM) instead of content[]
    token_delay_s: float = 0.0
    api_key: str | None = None
    requests: int = 0
    unauthorized: int = 0
    authorization: list[str | None] = field(default_factory=list)
    cancelled: int = 0
    finished: int = 0
    bodies: list[dict] = field(default_factory=list)

    def _tokens(self) -> list[str]:
        return [f" {self.name}{i}" for i in range(self.tokens)]

    def _logprobs(self, toks: list[str], chat: bool) -> dict:
        if self.legacy and not chat:
            return {"tokens": toks, "token_logprobs": [self.logprob] * len(toks),
                    "top_logprobs": [{t: self.logprob, "x": self.logprob - 1.0} for t in toks],
                    "text_offset": list(range(len(toks)))}
        lp: Any = "abc" if self.mode == "bad_logprobs" else self.logprob
        return {"content": [{"token": t, "logprob": lp, "bytes": None,
                             "top_logprobs": [{"token": t, "logprob": self.logprob, "bytes": None},
                                              {"token": "x", "logprob": self.logprob - 1.0, "bytes": None}]}
                            for t in toks]}

    def _choice(self, toks: list[str], chat: bool, finish: str | None, delta: bool) -> dict:
        text = "".join(toks)
        c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": self._logprobs(toks, chat)}
        if chat:
            c["delta" if delta else "message"] = {"role": "assistant", "content": text}
        else:
            c["text"] = text
        return c

    async def handle(self, request: Request) -> Response:
        chat = request.url.path.endswith("chat/completions")
        body = json.loads(await request.body())
        self.authorization.append(request.headers.get("authorization"))
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            self.unauthorized += 1
            return JSONResponse({"error": {"message": "invalid API key", "type": "authentication_error"}},
                                status_code=401)
        self.requests += 1
        self.bodies.append(body)
        if self.mode == "error500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
        if self.mode == "error400":
            return JSONResponse({"error": {"message": "bad prompt", "type": "invalid_request_error"}},
                                status_code=400)
        if self.mode == "hang":
            await asyncio.sleep(60)
        obj = "chat.completion" if chat else "text_completion"
        toks = self._tokens()
        usage = {"prompt_tokens": 5, "completion_tokens": len(toks), "total_tokens": 5 + len(toks)}
        if not body.get("stream"):
            self.finished += 1
            return JSONResponse({"id": f"{self.name}-1", "object": obj, "created": 0, "model": body.get("model"),
                                 "choices": [self._choice(toks, chat, "stop", False)], "usage": usage})

        async def events() -> Any:
            try:
                if self.mode == "bad_sse":
                    yield "data: [1,2]\n\n"
                for i, t in enumerate(toks):
                    if self.mode == "die_mid_stream" and i == len(toks) // 2:
                        raise RuntimeError("engine died")  # uvicorn drops the connection mid-body
                    chunk = {"id": f"{self.name}-1", "object": obj + ".chunk" if chat else obj, "created": 0,
                             "model": body.get("model"), "choices": [self._choice([t], chat, None, True)]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                    if self.token_delay_s:
                        await asyncio.sleep(self.token_delay_s)
                last = {"id": f"{self.name}-1", "object": obj, "created": 0, "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop", "delta": {}, "text": "",
                                     "logprobs": None}]}
                yield f"data: {json.dumps(last)}\n\n"
                yield f"data: {json.dumps({'id': 'u', 'object': obj, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
                self.finished += 1
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            except GeneratorExit:
                self.cancelled += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    def app(self) -> Starlette:
        async def models(request: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model"}]})

        return Starlette(routes=[Route("/v1/chat/completions", self.handle, methods=["POST"]),
                                 Route("/v1/completions", self.handle, methods=["POST"]),
                                 Route("/v1/models", models)])


def two_stage_config(small: list[str], big: list[str], threshold: float = -0.5, **extra: Any) -> dict:
    """A router config document for a small -> big cascade named 'cascade'."""
    return {"name": "cascade", **extra,
            "stages": [{"name": "small", "served_model_name": "small", "endpoints": small, "threshold": threshold},
                       {"name": "big", "served_model_name": "big", "endpoints": big, "threshold": None}]}


@contextmanager
def engine_pair(start_small: Any, start_big: Any) -> Iterator[tuple[Any, Any]]:
    """Start two engines (callables returning EngineProcess); stop both whatever happens."""
    small = start_small()
    try:
        big = start_big()
    except BaseException:
        small.stop()
        raise
    try:
        yield small, big
    finally:
        small.stop()
        big.stop()


class RawConnection:
    """One HTTP/1.1 keep-alive socket, no client library in between: a test sees exactly whether the server kept
    the connection after a response (httpx and openai would silently reconnect)."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.file = self.sock.makefile("rb")

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; return (status, lower-cased headers, body). OSError if the server dropped us."""
        head = f"{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n" \
               f"content-length: {len(body)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(head.encode() + b"\r\n" + body)
        status_line = self.file.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split()[1])
        hdrs: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "chunked" in hdrs.get("transfer-encoding", ""):
            data = b""
            while (size := int(self.file.readline().strip(), 16)) > 0:
                data += self.file.read(size)
                self.file.readline()
            self.file.readline()
            return status, hdrs, data
        return status, hdrs, self.file.read(int(hdrs.get("content-length", "0")))

    def close(self) -> None:
        self.file.close()
        self.sock.close()
