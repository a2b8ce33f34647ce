"""Shared pieces of the router benchmarks: a fast fake engine (raw asyncio HTTP, optional injected faults), a
light keep-alive HTTP client, and process helpers. Everything binds 127.0.0.1.

Run a fake engine alone: python benchmarks/router_common.py --port 9001 [--fail-rate 0.1] [--hang-rate 0.01]
[--delay-s 0.01 --slots 8] [--low-rate 0.1 --low-logprob -2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _answer(chat: bool, stream: bool, logprob: float) -> bytes:
    toks = [" ok", "."]
    lp = {"content": [{"token": t, "logprob": logprob, "bytes": None,
                       "top_logprobs": [{"token": t, "logprob": logprob, "bytes": None}]} for t in toks]}
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    if not stream:
        choice = {"index": 0, "finish_reason": "stop", "logprobs": lp,
                  **({"message": {"role": "assistant", "content": "".join(toks)}} if chat else {"text": " ok."})}
        return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice],
                           "usage": usage}).encode()
    out = []
    for t, item in zip(toks, lp["content"], strict=True):
        c = {"index": 0, "finish_reason": None, "logprobs": {"content": [item]},
             **({"delta": {"content": t}} if chat else {"text": t})}
        out.append(b"data: " + json.dumps({"id": "x", "object": "chunk", "model": "m", "choices": [c]}).encode())
    out.append(b"data: " + json.dumps({"id": "x", "object": "chunk", "choices": [], "usage": usage}).encode())
    out.append(b"data: [DONE]")
    return b"\n\n".join(out) + b"\n\n"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    length = 0
    for ln in lines[1:]:
        if ln[:15].lower() == "content-length:":
            length = int(ln[15:])
    body = await reader.readexactly(length) if length else b""
    return path, body


def serve_fake(port: int, fail_rate: float, hang_rate: float, hang_s: float, logprob: float, seed: int,
               delay_s: float = 0.0, slots: int = 0, low_rate: float = 0.0, low_logprob: float = -2.0) -> None:
    """A minimal OpenAI-style engine: instant answers (2 tokens with logprobs), some 500s and hangs if asked.
    `delay_s`: each answer takes this long, at most `slots` at once (0: no limit; more wait their turn, as in an
    engine's batch); `low_rate`: this share of answers carries `low_logprob` instead (a cascade escalates them)."""
    rng = random.Random(seed)
    canned = {(c, s, lp): _answer(c, s, lp) for c in (True, False) for s in (True, False)
              for lp in (logprob, low_logprob)}
    busy = asyncio.Semaphore(slots) if slots > 0 else None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await _read_request(reader)
                path, body = req
                if path.endswith("/models"):
                    payload, status, ctype = b'{"object":"list","data":[]}', "200 OK", "application/json"
                else:
                    r = rng.random()
                    if r < hang_rate:
                        await asyncio.sleep(hang_s)
                    if r < hang_rate + fail_rate:
                        payload = b'{"error":{"message":"injected","type":"server_error"}}'
                        status, ctype = "500 Internal Server Error", "application/json"
                    else:
                        if delay_s > 0:
                            if busy is None:
                                await asyncio.sleep(delay_s)
                            else:
                                async with busy:
                                    await asyncio.sleep(delay_s)
                        stream = b'"stream": true' in body or b'"stream":true' in body
                        lp = low_logprob if low_rate > 0 and rng.random() < low_rate else logprob
                        payload = canned[(b"chat" in path.encode(), stream, lp)]
                        status, ctype = "200 OK", "text/event-stream" if stream else "application/json"
                writer.write(f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(payload)}\r\n"
                             f"\r\n".encode() + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # client gone, or shutting down
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


class Conn:
    """One keep-alive HTTP/1.1 connection; `post` returns (status, body bytes)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: str = "") -> tuple[int, bytes]:
        status, _, data = await self.post_full(path, body, headers)
        return status, data

    async def post_full(self, path: str, body: bytes, headers: str = "") -> tuple[int, dict[str, str], bytes]:
        """POST; return (status, response headers lower-cased, body)."""
        return await self.request("POST", path, body, headers)

    async def get(self, path: str, headers: str = "") -> tuple[int, bytes]:
        status, _, data = await self.request("GET", path, b"", headers)
        return status, data

    async def request(self, method: str, path: str, body: bytes, headers: str = ""
                      ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                          f"content-length: {len(body)}\r\n{headers}\r\n".encode() + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                if k:
                    hdrs[k.strip().lower()] = v.strip()
            if "chunked" in hdrs.get("transfer-encoding", ""):
                data = b""
                while True:
                    size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                    data += (await self.reader.readexactly(size + 2))[:-2]
                    if size == 0:
                        break
                return status, hdrs, data
            return status, hdrs, await self.reader.readexactly(int(hdrs.get("content-length", "0")))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def start_fake(port: int, **opts: float) -> subprocess.Popen:
    argv = [sys.executable, __file__, "--port", str(port)]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(argv, start_new_session=True)


def start_router(config_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "router", "--config", str(config_path), "--port", str(port)],
                            env=env, start_new_session=True)


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else float("nan")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--hang-rate", type=float, default=0.0)
    ap.add_argument("--hang-s", type=float, default=5.0)
    ap.add_argument("--logprob", type=float, default=-0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--delay-s", type=float, default=0.0)
    ap.add_argument("--slots", type=int, default=0)
    ap.add_argument("--low-rate", type=float, default=0.0)
    ap.add_argument("--low-logprob", type=float, default=-2.0)
    a = ap.parse_args()
    serve_fake(a.port, a.fail_rate, a.hang_rate, a.hang_s, a.logprob, a.seed, a.delay_s, a.slots, a.low_rate,
               a.low_logprob)
