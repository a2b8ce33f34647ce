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

import httpx


class UpstreamError(Exception):
    """One failed attempt at one endpoint. `retryable` False means the request itself was rejected (4xx)."""

    def __init__(self, kind: str, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.kind = kind  # "connect" | "timeout" | "status" | "protocol" | "stream"
        self.status = status
        self.body = body

    @property
    def retryable(self) -> bool:
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
    except ValueError:
        body = None
    msg = content[:300].decode(errors="replace")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        msg = str(body["error"].get("message", msg))
    return UpstreamError("status", f"HTTP {status}: {msg}", status=status, body=body)


def _timeout(timeout_s: float, connect_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, connect=connect_s)


async def post_json(client: httpx.AsyncClient, ep: Endpoint, path: str, payload: dict, timeout_s: float,
                    connect_s: float) -> dict:
    """POST and return the JSON body; every failure becomes UpstreamError."""
    ep.outstanding += 1
    ep.requests += 1
    try:
        resp = await client.post(ep.url + path, content=json.dumps(payload),
                                 headers={"content-type": "application/json"},
                                 timeout=_timeout(timeout_s, connect_s))
        if resp.status_code != 200:
            raise _status_error(resp.status_code, resp.content)
        try:
            data = json.loads(resp.content)
        except ValueError:
            raise UpstreamError("protocol", "engine answered with invalid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError("protocol", "engine answer has no choices")
        return data
    except httpx.TimeoutException as exc:
        raise UpstreamError("timeout", f"timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:  # refused, reset, DNS, ...
        raise UpstreamError("connect", f"{type(exc).__name__}: {exc}") from None
    finally:
        ep.outstanding -= 1


@asynccontextmanager
async def open_stream(client: httpx.AsyncClient, ep: Endpoint, path: str, payload: dict, timeout_s: float,
                      connect_s: float) -> AsyncIterator[AsyncIterator[dict]]:
    """POST a streamed request; yield an iterator of parsed SSE `data:` objects (ends at [DONE]).

    Leaving the context closes the connection, which makes the engine stop generating (cancellation).
    """
    ep.outstanding += 1
    ep.requests += 1
    try:
        try:
            req = client.build_request("POST", ep.url + path, content=json.dumps(payload),
                                       headers={"content-type": "application/json", "accept": "text/event-stream"},
                                       timeout=_timeout(timeout_s, connect_s))
            resp = await client.send(req, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError("timeout", f"timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc}") from None
        try:
            if resp.status_code != 200:
                raise _status_error(resp.status_code, await resp.aread())
            yield _events(resp)
        finally:
            await resp.aclose()
    finally:
        ep.outstanding -= 1


async def _events(resp: httpx.Response) -> AsyncIterator[dict]:
    done = False
    try:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # comments, event names, blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                return
            try:
                obj = json.loads(data)
            except ValueError:
                raise UpstreamError("protocol", "engine sent an invalid SSE data line") from None
            if isinstance(obj, dict) and "error" in obj:
                err = obj["error"]
                msg = err.get("message") if isinstance(err, dict) else str(err)
                raise UpstreamError("stream", f"engine reported an error mid-stream: {msg}")
            yield obj
    except httpx.TimeoutException:
        raise UpstreamError("timeout", "stream stalled past the stage timeout") from None
    except httpx.TransportError as exc:
        raise UpstreamError("stream", f"stream broke: {type(exc).__name__}") from None
    if not done:
        raise UpstreamError("stream", "stream ended without [DONE]")
