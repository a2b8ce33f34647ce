"""GET /stats at 500k recorded requests: its latency, and what it does to /health latency while it runs.

Why: /stats runs on the router's event loop; when it walked every event (the old log) a key holder could stall every
request, /health included, for seconds. The aggregates make it O(buckets).

Set-up (127.0.0.1): one router process (`--serve` mode of this script: the real app from `create_app`, one uvicorn
worker) whose Stats first records --events synthetic finished requests through the same `Stats.record` the app
calls, their finish times spread evenly over the longest window (3,600 s) so every window and bucket is populated;
a two-stage cascade trace each, seeded random scores, latencies, token lengths and a 30 % escalation share. Then:
1. /health alone: sequential requests on one keep-alive connection, `--repeats` times (median, p99);
2. /stats: sequential requests, `--repeats` times (median, p99);
3. /health during /stats: one connection requests /stats back to back while another measures /health for the same
   number of requests (median, p99, max) - the stall a /stats caller inflicts on everyone else.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time

from router_common import ROOT, Conn, pct, stop, wait_http  # type: ignore[import-not-found]

from cascadia_sky.engines import free_port

KEY = "bench-stats-key"
AUTH = f"authorization: Bearer {KEY}\r\n"


def serve(port: int, events: int, seed: int) -> None:
    """The router with `events` requests already recorded in its /stats."""
    import uvicorn

    from router import Secrets, create_app, parse_config
    from router.serving import StageStep, Trace

    config = parse_config({"name": "bench", "stages": [
        {"name": "small", "served_model_name": "s", "endpoints": ["http://127.0.0.1:9"], "threshold": -0.5},
        {"name": "big", "served_model_name": "b", "endpoints": ["http://127.0.0.1:9"]}]}, "bench")
    app = create_app(config, Secrets(api_keys=[KEY]))
    stats = app.state.stats
    rng = random.Random(seed)
    horizon_s = max(config.stats_windows_s)
    t_end = time.monotonic()
    t0 = time.perf_counter()
    for i in range(events):
        s1 = -rng.expovariate(2.0)
        escalated = rng.random() < 0.3
        steps = [StageStep("small", "escalated" if escalated else "accepted", s1, rng.expovariate(20.0))]
        if escalated:
            steps.append(StageStep("big", "answered", -rng.expovariate(4.0), rng.expovariate(5.0)))
        trace = Trace(model="bench", steps=steps, stage=steps[-1].stage, score=steps[-1].score,
                      input_tokens=rng.randint(10, 4000), output_tokens=rng.randint(1, 1000))
        stats.record(trace, True, sum(s.seconds for s in steps), now=t_end - horizon_s * (1 - (i + 1) / events))
    print(f"recorded {events} events in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def _timed(conn: Conn, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, body = await conn.get(path, AUTH)
        out.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:200]!r}")
    return out


async def measure(port: int, repeats: int) -> dict[str, float]:
    """Fresh connections per phase (uvicorn closes a keep-alive connection idle for 5 s)."""
    conns: list[Conn] = []

    def conn() -> Conn:
        conns.append(Conn("127.0.0.1", port))
        return conns[-1]

    try:
        _, body = await conn().get("/stats", AUTH)
        requests = json.loads(body)["windows"]["3600"]["requests"]
        health_alone = await _timed(conn(), "/health", repeats)
        stats_alone = await _timed(conn(), "/stats", repeats)
        busy = True
        hammer_conn = conn()

        async def hammer() -> int:
            n = 0
            while busy:
                await hammer_conn.get("/stats", AUTH)
                n += 1
            return n

        task = asyncio.ensure_future(hammer())
        await asyncio.sleep(0.05)
        health_during = await _timed(conn(), "/health", repeats)
        busy = False
        stats_calls = await task
    finally:
        for c in conns:
            c.close()
    ms = 1e3
    return {"events_in_3600s_window": requests,
            "health_alone_p50_ms": statistics.median(health_alone) * ms,
            "health_alone_p99_ms": pct(health_alone, .99) * ms,
            "stats_p50_ms": statistics.median(stats_alone) * ms, "stats_p99_ms": pct(stats_alone, .99) * ms,
            "health_during_stats_p50_ms": statistics.median(health_during) * ms,
            "health_during_stats_p99_ms": pct(health_during, .99) * ms,
            "health_during_stats_max_ms": max(health_during) * ms, "stats_calls_during": stats_calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the router on this port
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.events, a.seed)
        return
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--events", str(a.events), "--seed",
                             str(a.seed)], env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout_s=600)
        result = asyncio.run(measure(port, a.repeats))
    finally:
        stop([proc])
    for k, v in result.items():
        print(f"{k:>30}: {v:,.3f}" if isinstance(v, float) else f"{k:>30}: {v}")
    print(json.dumps({"benchmark": "router_stats", "events": a.events, "repeats": a.repeats, **result}))


if __name__ == "__main__":
    main()
