"""Load with injected faults: 10,000 requests at concurrency 256 through a two-stage cascade whose engines fail.

Engines (fast fakes on 127.0.0.1, see router_common.py): stage `small` has 4 endpoints: a healthy one that answers
with confident logprobs (-0.1, accepted), a healthy unconfident one (-1.0, escalated), one answering HTTP 500 on 20 %
of requests, one hanging 3 s on 3 % of requests (stage timeout 1 s) and one refusing connections; stage `big` has a
healthy endpoint and one failing 10 %. Requests mix chat/completions and streamed/non-streamed (1 in 4 streamed).
"Lost" = the client got no complete HTTP answer (connection error, timeout, truncated or malformed stream); a clean
refusal is an OpenAI-style error body with a 4xx/5xx status. Goal: 0 lost. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import yaml
from router_common import Conn, pct, start_fake, start_router, stop, wait_http  # type: ignore[import-not-found]

from cascadia_sky.engines import free_port

CLIENT_TIMEOUT_S = 60.0


def _body(i: int) -> tuple[str, bytes, bool]:
    stream = i % 4 == 0
    if i % 2:
        return "/v1/chat/completions", json.dumps({"model": "load", "messages": [{"role": "user", "content": f"q{i}"}],
                                                   "max_tokens": 2, "stream": stream}).encode(), stream
    return "/v1/completions", json.dumps({"model": "load", "prompt": f"q{i}", "max_tokens": 2,
                                          "stream": stream}).encode(), stream


async def _run(port: int, total: int, concurrency: int) -> tuple[Counter, list[float], float]:
    counts: Counter = Counter()
    lat: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        conn = Conn("127.0.0.1", port)
        while next_i < total:
            i, next_i = next_i, next_i + 1
            path, body, stream = _body(i)
            t0 = time.perf_counter()
            try:
                status, hdrs, data = await asyncio.wait_for(conn.post_full(path, body), CLIENT_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - every kind of loss is counted
                counts[f"lost:{type(exc).__name__}"] += 1
                conn.close()
                continue
            lat.append(time.perf_counter() - t0)
            if status != 200:
                err = json.loads(data).get("error", {})
                counts[f"refused:{status}:{err.get('code')}"] += 1
                continue
            if stream:
                if not data.rstrip().endswith(b"data: [DONE]"):
                    counts["lost:truncated_stream"] += 1
                    continue
                if b'"error"' in data:
                    counts["refused:stream_error_event"] += 1
                    continue
            else:
                json.loads(data)
            counts["answered"] += 1
            counts[f"stage:{hdrs.get('x-cascadia-stage')}"] += 1
            counts["fallback"] += hdrs.get("x-cascadia-fallback") == "true"
            counts["retries"] += int(hdrs.get("x-cascadia-retries", "0"))
            counts["escalated"] += hdrs.get("x-cascadia-escalations", "0") != "0"
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts, lat, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=256)
    a = ap.parse_args()
    fakes = {"confident": {"logprob": -0.1}, "unsure": {"logprob": -1.0}, "flaky500": {"fail_rate": 0.2},
             "hangs": {"hang_rate": 0.03, "hang_s": 3.0}, "big": {"logprob": -0.3},
             "big-flaky": {"fail_rate": 0.1, "logprob": -0.3}}
    ports = {name: free_port() for name in fakes}
    dead = free_port()
    router_port = free_port()
    url = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    cfg = {"name": "load", "health_cooldown_s": 0.5, "stages": [
        {"name": "small", "served_model_name": "s", "threshold": -0.5, "timeout_s": 1.0,
         "endpoints": [url["confident"], url["unsure"], url["flaky500"], url["hangs"], f"http://127.0.0.1:{dead}"]},
        {"name": "big", "served_model_name": "b", "timeout_s": 1.0, "endpoints": [url["big"], url["big-flaky"]]}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "router.yaml"
        path.write_text(yaml.safe_dump(cfg))
        procs = [start_fake(ports[n], seed=i, **opts) for i, (n, opts) in enumerate(fakes.items())]
        try:
            procs.append(start_router(path, router_port))
            for n in fakes:
                wait_http(url[n] + "/v1/models")
            wait_http(f"http://127.0.0.1:{router_port}/health")
            counts, lat, wall = asyncio.run(_run(router_port, a.requests, a.concurrency))
            stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{router_port}/stats").read())
        finally:
            stop(procs)
    lost = sum(v for k, v in counts.items() if k.startswith("lost"))
    refused = sum(v for k, v in counts.items() if k.startswith("refused"))
    win = stats["windows"][min(stats["windows"], key=int)]
    fig = {"requests": a.requests, "concurrency": a.concurrency, "answered": counts["answered"],
           "cleanly_refused": refused, "lost": lost, "answered_by_small": counts["stage:small"],
           "answered_by_big": counts["stage:big"], "escalated": counts["escalated"], "fallbacks": counts["fallback"],
           "endpoint_retries": counts["retries"], "wall_s": wall, "req_per_s": a.requests / wall,
           "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
           "router_seen": stats["windows"][max(stats["windows"], key=int)]["requests"],
           "router_small_stage_failures": win["stages"]["small"]["failed"],
           "detail": {k: v for k, v in sorted(counts.items()) if k.startswith(("lost", "refused"))}}
    for k, v in fig.items():
        print(f"{k:>34}: {v:.3f}" if isinstance(v, float) else f"{k:>34}: {v}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in fig.items()}))


if __name__ == "__main__":
    main()
