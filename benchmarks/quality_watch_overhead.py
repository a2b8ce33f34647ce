"""Quality watch overhead: the client's latency with shadow checks off, at every accepted answer, and at the default.

Set-up (all on 127.0.0.1): two fake engines (benchmarks/router_common.py: 2-token answers with logprobs) as a
small -> big cascade (threshold -0.5). The small one answers in `--small-ms` with logprob -0.1 (accepted), except a
`--low-rate` share at -2.0 (escalated to the big one); the big one answers in `--big-ms`, at most `--big-slots` at
once (more wait their turn, as in an engine's batch), so a shadow check occupies the last stage as a real one does.
Four routers (one uvicorn worker each) share the two engines, one per variant:
  off        no quality_watch
  full       fraction 1.0, max_per_s 1000, max_in_flight 64: every accepted answer checked (the worst case)
  default    quality_watch: {} (fraction 0.03, max_per_s 1, max_in_flight 4)
  off_again  no quality_watch, again: its ratio to `off` shows what differences noise alone makes
The same bounded load goes to each, interleaved in `--rounds` rounds (the variants' order rotating, so a drift of
this machine's load hits all of them): sequential requests on one keep-alive connection, then a concurrent phase on
`--concurrency` connections; after each block the watch's checks in flight are waited for, so one variant's
shadow traffic never overlaps another's block. Client latency p50/p99 per variant (all requests, accepted only,
escalated only), ratios to `off`, the router's CPU ms per client request (/proc), and the shadow checks
graded/skipped/failed from each router's /metrics (`cascadia_router_shadow_checks_total`), with its client request
count (`cascadia_router_requests_total`) equal to the requests sent: shadow requests are counted apart. Asserts
that the `full` variant's checks really ran (graded >= 90 % of its accepted answers). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from router_common import Conn, pct, start_fake, start_router, stop, wait_http  # type: ignore[import-not-found]

from cascadia_sky.engines import free_port

BODY = json.dumps({"model": "cascade", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}).encode()
VARIANTS = {
    "off": None,
    "full": {"fraction": 1.0, "max_per_s": 1000, "max_in_flight": 64},
    "default": {},
    "off_again": None,   # a second `off`: its ratio to `off` is this run's noise floor
}
RESULTS = ("graded", "failed", "skipped_rate", "skipped_busy", "cancelled")
_SHADOW = re.compile(r'^cascadia_router_shadow_checks_total\{[^}]*result="(\w+)"[^}]*\} ([0-9.e+]+)$', re.MULTILINE)
_REQUESTS = re.compile(r'^cascadia_router_requests_total\{[^}]*\} ([0-9.e+]+)$', re.MULTILINE)

Sample = tuple[float, str]   # (seconds, answering stage)


async def _sequential(port: int, n: int) -> list[Sample]:
    conn = Conn("127.0.0.1", port)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, hdrs, _ = await conn.post_full("/v1/chat/completions", BODY)
        out.append((time.perf_counter() - t0, hdrs.get("x-cascadia-stage", "")))
        assert status == 200, status
    conn.close()
    return out


async def _concurrent(port: int, total: int, concurrency: int) -> tuple[list[Sample], float]:
    remaining = total
    out: list[Sample] = []

    async def worker() -> None:
        nonlocal remaining
        conn = Conn("127.0.0.1", port)
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            status, hdrs, _ = await conn.post_full("/v1/chat/completions", BODY)
            out.append((time.perf_counter() - t0, hdrs.get("x-cascadia-stage", "")))
            assert status == 200, status
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out, time.perf_counter() - t0


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def _drain(port: int, timeout_s: float = 30.0) -> None:
    """Wait until the router has no shadow check in flight (no-op when its watch is off)."""
    deadline = time.monotonic() + timeout_s
    while True:
        q = json.loads(_get(port, "/stats")).get("quality")
        if not q or q["shadow"]["in_flight"] == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"router :{port} still has {q['shadow']['in_flight']} shadow checks in flight")
        time.sleep(0.02)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; nan elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counters(port: int) -> dict[str, int]:
    text = _get(port, "/metrics")
    out = dict.fromkeys(RESULTS, 0)
    for result, value in _SHADOW.findall(text):
        out[result] += int(float(value))
    out["client_requests"] = sum(int(float(v)) for v in _REQUESTS.findall(text))
    return out


def _summary(samples: list[Sample], small: str) -> dict[str, float]:
    lat = [s for s, _ in samples]
    acc = [s for s, st in samples if st == small]
    esc = [s for s, st in samples if st != small]
    return {"p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "accepted_p50_ms": pct(acc, 0.5) * 1e3, "accepted_p99_ms": pct(acc, 0.99) * 1e3,
            "escalated_p50_ms": pct(esc, 0.5) * 1e3, "escalated_p99_ms": pct(esc, 0.99) * 1e3,
            "accepted": len(acc), "escalated": len(esc)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="sequential requests per variant (all rounds)")
    ap.add_argument("--load", type=int, default=800, help="requests per variant in the concurrent phase")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--small-ms", type=float, default=2.0)
    ap.add_argument("--big-ms", type=float, default=10.0)
    ap.add_argument("--big-slots", type=int, default=8)
    ap.add_argument("--low-rate", type=float, default=0.1, help="share of small answers escalated")
    a = ap.parse_args()
    small_port, big_port = free_port(), free_port()
    ports = {v: free_port() for v in VARIANTS}
    seq: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
    conc: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
    wall = dict.fromkeys(VARIANTS, 0.0)
    warm = 50
    pids: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        procs = [start_fake(small_port, delay_s=a.small_ms / 1e3, low_rate=a.low_rate, low_logprob=-2.0),
                 start_fake(big_port, delay_s=a.big_ms / 1e3, slots=a.big_slots)]
        try:
            for v, watch in VARIANTS.items():
                doc = {"name": "cascade", "stages": [
                    {"name": "small", "served_model_name": "small", "threshold": -0.5,
                     "endpoints": [f"http://127.0.0.1:{small_port}"]},
                    {"name": "big", "served_model_name": "big", "threshold": None,
                     "endpoints": [f"http://127.0.0.1:{big_port}"]}]}
                if watch is not None:
                    doc["quality_watch"] = watch
                cfg = Path(tmp) / f"{v}.yaml"
                cfg.write_text(yaml.safe_dump(doc))
                procs.append(start_router(cfg, ports[v]))
                pids[v] = procs[-1].pid
            wait_http(f"http://127.0.0.1:{small_port}/v1/models")
            wait_http(f"http://127.0.0.1:{big_port}/v1/models")
            for v in VARIANTS:
                wait_http(f"http://127.0.0.1:{ports[v]}/health")
                asyncio.run(_sequential(ports[v], warm))
                _drain(ports[v])
            before = {v: _counters(ports[v]) for v in VARIANTS}
            cpu0 = {v: _cpu_s(pids[v]) for v in VARIANTS}
            names = list(VARIANTS)
            for r in range(a.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                n_seq = a.requests // a.rounds + (r < a.requests % a.rounds)
                n_conc = a.load // a.rounds + (r < a.load % a.rounds)
                for v in order:
                    seq[v] += asyncio.run(_sequential(ports[v], n_seq))
                    _drain(ports[v])
                for v in order:
                    samples, w = asyncio.run(_concurrent(ports[v], n_conc, a.concurrency))
                    conc[v] += samples
                    wall[v] += w
                    _drain(ports[v])
            cpu1 = {v: _cpu_s(pids[v]) for v in VARIANTS}
            after = {v: _counters(ports[v]) for v in VARIANTS}
        finally:
            stop(procs)
    fig: dict[str, object] = {}
    for v in VARIANTS:
        s, c = _summary(seq[v], "small"), _summary(conc[v], "small")
        shadow = {k: after[v][k] - before[v][k] for k in (*RESULTS, "client_requests")}
        sent = len(seq[v]) + len(conc[v])
        fig[v] = {"sequential": s, "concurrent": {**c, "req_per_s": len(conc[v]) / wall[v]}, "shadow": shadow,
                  "router_cpu_ms_per_request": (cpu1[v] - cpu0[v]) * 1e3 / sent}
        assert shadow["client_requests"] == sent, (v, shadow["client_requests"], sent)   # shadows counted apart
    full = fig["full"]
    accepted_full = full["sequential"]["accepted"] + full["concurrent"]["accepted"]   # type: ignore[index]
    graded_full = full["shadow"]["graded"]   # type: ignore[index]
    assert graded_full >= 0.9 * accepted_full, f"full: only {graded_full} of {accepted_full} accepted answers checked"
    assert fig["off"]["shadow"]["graded"] == fig["off_again"]["shadow"]["graded"] == 0   # type: ignore[index]
    ratios = {}
    for v in ("full", "default", "off_again"):
        for phase in ("sequential", "concurrent"):
            for k in ("p50_ms", "p99_ms", "accepted_p50_ms", "escalated_p50_ms"):
                ratios[f"{v}_{phase}_{k.removesuffix('_ms')}"] = (
                    fig[v][phase][k] / fig["off"][phase][k])   # type: ignore[index]
    print(f"{'':>10} {'seq p50':>8} {'seq p99':>8} {'esc p50':>8} {'conc p50':>9} {'conc p99':>9} {'esc p50':>8} "
          f"{'req/s':>7} {'cpu/req':>7}  shadow graded/skipped_rate/skipped_busy/failed")
    for v in VARIANTS:
        s, c, sh = fig[v]["sequential"], fig[v]["concurrent"], fig[v]["shadow"]   # type: ignore[index]
        print(f"{v:>10} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['escalated_p50_ms']:8.2f} {c['p50_ms']:9.2f} "
              f"{c['p99_ms']:9.2f} {c['escalated_p50_ms']:8.2f} {c['req_per_s']:7.0f} "
              f"{fig[v]['router_cpu_ms_per_request']:7.2f}  "
              f"{sh['graded']}/{sh['skipped_rate']}/{sh['skipped_busy']}/{sh['failed']}")
    for k, val in ratios.items():
        print(f"{k:>40}: {val:.3f}")

    def rounded(x: object) -> object:
        if isinstance(x, dict):
            return {k: rounded(v) for k, v in x.items()}
        return round(x, 4) if isinstance(x, float) else x

    print(json.dumps({"variants": rounded(fig), "ratios_to_off": rounded(ratios), "requests": a.requests,
                      "load": a.load, "concurrency": a.concurrency, "rounds": a.rounds, "small_ms": a.small_ms,
                      "big_ms": a.big_ms, "big_slots": a.big_slots, "low_rate": a.low_rate,
                      "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
