"""Router overhead: latency added versus calling the engine directly, and the request rate of one router worker.

Set-up (all on 127.0.0.1): a fast fake engine (raw asyncio, instant 2-token answers with logprobs) and the router
(one uvicorn worker, a one-stage cascade pinned to it, so every request is one engine call plus scoring).
1. Latency: N sequential non-streamed chat requests straight to the engine, then N through the router, one
   keep-alive connection each; added = router - direct at p50 and p99.
2. Throughput: C concurrent keep-alive connections hammer the router for a fixed count; req/s = count / wall time.
The client, the fake engine and the router share this machine's cores, so req/s is a lower bound of the worker's.
Goals (issue 4): <= 1 ms p50 and <= 3 ms p99 added; >= 1,500 req/s per worker. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import yaml
from router_common import Conn, pct, start_fake, start_router, stop, wait_http  # type: ignore[import-not-found]

from cascadia_sky.engines import free_port

BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}).encode()


async def _latencies(port: int, n: int) -> list[float]:
    conn = Conn("127.0.0.1", port)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _ = await conn.post("/v1/chat/completions", BODY)
        out.append(time.perf_counter() - t0)
        assert status == 200, status
    conn.close()
    return out


async def _throughput(port: int, total: int, concurrency: int) -> tuple[float, int]:
    remaining = total
    errors = 0

    async def worker() -> None:
        nonlocal remaining, errors
        conn = Conn("127.0.0.1", port)
        while remaining > 0:
            remaining -= 1
            status, _ = await conn.post("/v1/chat/completions", BODY)
            errors += status != 200
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests per latency run")
    ap.add_argument("--load", type=int, default=10000, help="requests in the throughput run")
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    eng_port, router_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "router.yaml"
        cfg.write_text(yaml.safe_dump({"name": "bench", "stages": [
            {"name": "only", "served_model_name": "m", "endpoints": [f"http://127.0.0.1:{eng_port}"]}]}))
        procs = [start_fake(eng_port)]
        try:
            procs.append(start_router(cfg, router_port))
            wait_http(f"http://127.0.0.1:{eng_port}/v1/models")
            wait_http(f"http://127.0.0.1:{router_port}/health")
            asyncio.run(_latencies(router_port, 200))  # warm-up
            direct = asyncio.run(_latencies(eng_port, a.requests))
            routed = asyncio.run(_latencies(router_port, a.requests))
            wall, errors = asyncio.run(_throughput(router_port, a.load, a.concurrency))
        finally:
            stop(procs)
    fig = {
        "direct_p50_ms": pct(direct, 0.5) * 1e3, "direct_p99_ms": pct(direct, 0.99) * 1e3,
        "router_p50_ms": pct(routed, 0.5) * 1e3, "router_p99_ms": pct(routed, 0.99) * 1e3,
        "added_p50_ms": (pct(routed, 0.5) - pct(direct, 0.5)) * 1e3,
        "added_p99_ms": (pct(routed, 0.99) - pct(direct, 0.99)) * 1e3,
        "router_req_per_s": a.load / wall, "throughput_errors": errors, "concurrency": a.concurrency,
        "requests_latency": a.requests, "requests_load": a.load, "cpus": os.cpu_count(),
    }
    for k, v in fig.items():
        print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in fig.items()}))


if __name__ == "__main__":
    main()
