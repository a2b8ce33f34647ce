"""Engine endpoints of a stage: least-outstanding-requests balancing, passive health, and the HTTP calls.

Balancing: among endpoints not in cooldown pick the one with the fewest requests in flight (ties rotate). An endpoint
that fails (refused, timed out, 5xx, broken stream) is put in cooldown for `health_cooldown_s` and skipped while any
other endpoint is healthy; one success clears it. If every endpoint is cooling down, the one whose cooldown ends
first is tried anyway (better a retry than a certain failure).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp


class UpstreamError(Exception):
    """One failed attempt at one endpoint. `retryable` False means the request itself was rejected (4xx)."""

    def __init__(self, kind: str, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.kind = kind  # "connect" | "timeout" | "status" | "auth" | "protocol" | "stream"
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
        """False only for the engine refusing the request itself (a 4xx other than 408/429); 401/403 are the
        router's own key being refused (a deployment fault), so they fail over like a 5xx."""
        return self.kind != "status" or self.status is None or self.status >= 500 or self.status in (408, 429)


@dataclass(eq=False)
class Endpoint:
    url: str
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0
    requests: int = 0


@dataclass(eq=False)
class StagePool:
    """The endpoints of one stage with their load and health."""

    endpoints: list[Endpoint]
    cooldown_s: float
    _rr: int = field(default=-1)

    @classmethod
    def of(cls, urls: list[str], cooldown_s: float, previous: StagePool | None = None) -> StagePool:
        """Build a pool; endpoints that also exist in `previous` keep their state (hot swap)."""
        old = {e.url: e for e in previous.endpoints} if previous else {}
        return cls([old.get(u) or Endpoint(u) for u in urls], cooldown_s)

    def pick(self, exclude: set[Endpoint]) -> Endpoint | None:
        now = time.monotonic()
        candidates = [e for e in self.endpoints if e not in exclude]
        if not candidates:
            return None
        healthy = [e for e in candidates if e.down_until <= now]
        if not healthy:
            return min(candidates, key=lambda e: e.down_until)
        self._rr = (self._rr + 1) % len(healthy)
        best = healthy[self._rr]
        for e in healthy:
            if e.outstanding < best.outstanding:
                best = e
        return best

    def failed(self, ep: Endpoint) -> None:
        ep.failures += 1
        ep.down_until = time.monotonic() + self.cooldown_s

    @staticmethod
    def succeeded(ep: Endpoint) -> None:
        ep.failures = 0
        ep.down_until = 0.0


def _status_error(status: int, content: bytes) -> UpstreamError:
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        body = None
    msg = content[:300].decode(errors="replace")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        msg = str(body["error"].get("message", msg))[:300]
    if status in (401, 403):
        return UpstreamError("auth", f"HTTP {status}: the engine refused the router's credentials (check the "
                                     f"stage's upstream_api_key_env): {msg}", status=status, body=body)
    return UpstreamError("status", f"HTTP {status}: {msg}", status=status, body=body)


@dataclass(frozen=True, slots=True)
class UpstreamAuth:
    """The request headers for one stage's engines, with its Bearer key if it has one. The repr hides the key."""

    json_headers: dict[str, str]
    sse_headers: dict[str, str]

    def __repr__(self) -> str:
        return f"UpstreamAuth(key={'set' if 'authorization' in self.json_headers else 'none'})"


def upstream_auth(key: str | None) -> UpstreamAuth:
    extra = {"authorization": f"Bearer {key}"} if key else {}
    return UpstreamAuth({"content-type": "application/json", **extra},
                        {"content-type": "application/json", "accept": "text/event-stream", **extra})


NO_AUTH = upstream_auth(None)


def make_session(max_connections: int) -> aiohttp.ClientSession:
    """The shared client session (open it inside a running event loop, e.g. in the app's lifespan)."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True,
                                 timeout=aiohttp.ClientTimeout(total=None))


def _translate(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):  # aiohttp's connect/read timeouts are TimeoutError subclasses
        return UpstreamError("timeout", f"timed out ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("connect", f"cannot connect: {exc.os_error}")
    return UpstreamError("connect", f"{type(exc).__name__}: {exc}")


async def post_json(session: aiohttp.ClientSession, ep: Endpoint, path: str, payload: dict, timeout_s: float,
                    connect_s: float, auth: UpstreamAuth = NO_AUTH) -> dict:
    """POST and return the JSON body; every failure becomes UpstreamError."""
    ep.outstanding += 1
    ep.requests += 1
    try:
        async with session.post(ep.url + path, data=json.dumps(payload).encode(), headers=auth.json_headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_s)) as resp:
            content = await resp.read()
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _translate(exc) from None
    finally:
        ep.outstanding -= 1
    if status != 200:
        raise _status_error(status, content)
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        raise UpstreamError("protocol", "engine answered with invalid JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise UpstreamError("protocol", "engine answer has no choices")
    return data


@asynccontextmanager
async def open_stream(session: aiohttp.ClientSession, ep: Endpoint, path: str, payload: dict, timeout_s: float,
                      connect_s: float, auth: UpstreamAuth = NO_AUTH) -> AsyncIterator[AsyncIterator[dict]]:
    """POST a streamed request; yield an iterator of parsed SSE `data:` objects (ends at [DONE]).

    `timeout_s` bounds the wait for the headers and every gap between chunks. Leaving the context early closes the
    connection, which makes the engine stop generating (cancellation).
    """
    ep.outstanding += 1
    ep.requests += 1
    try:
        try:
            resp = await session.post(ep.url + path, data=json.dumps(payload).encode(), headers=auth.sse_headers,
                                      timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s,
                                                                    sock_read=timeout_s))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc) from None
        try:
            if resp.status != 200:
                try:
                    content = await resp.read()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise _translate(exc) from None
                raise _status_error(resp.status, content)
            yield _events(resp)
        finally:
            resp.close()  # never reuse a connection whose stream we may have left early
    finally:
        ep.outstanding -= 1


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict]:
    buf = b""
    try:
        async for data in resp.content.iter_any():
            buf += data
            while (i := buf.find(b"\n")) >= 0:
                line, buf = buf[:i].rstrip(b"\r"), buf[i + 1:]
                if not line.startswith(b"data:"):
                    continue  # comments, event names, blank separators
                text = line[5:].strip()
                if text == b"[DONE]":
                    return
                try:
                    obj = json.loads(text)
                except (ValueError, RecursionError):
                    raise UpstreamError("protocol", "engine sent an invalid SSE data line") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("choices", []), list):
                    raise UpstreamError("protocol", "engine sent an SSE event that is not a chunk object")
                if "error" in obj:
                    err = obj["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise UpstreamError("stream", f"engine reported an error mid-stream: {msg}")
                yield obj
    except TimeoutError:
        raise UpstreamError("timeout", "stream stalled past the stage timeout") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError("stream", f"stream broke: {type(exc).__name__}") from None
    raise UpstreamError("stream", "stream ended without [DONE]")
