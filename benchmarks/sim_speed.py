"""Simulator wall time: one hour of the Azure conversation trace (19,366 requests) through a 3-stage plan.

Settings: the DeepSeek cascade of examples/deepseek.yaml, its cascadia plan (made once, not timed), replayed
- at the trace's own rate (one hour, 5.5 req/s) and at the example's 4x rate (the same requests in 15 minutes),
- with the trace's output lengths and with the profile's reasoning-length answers (about 6,000 tokens; 2x the
  trace's rate, far over what a plan made for short answers sustains: a stress case of long queues),
- and once more at 4x with bulk decode turned off (one engine iteration at a time), to show what it saves.
Pinned to one core. Prints the median of several runs per setting; the last line is one JSON object.
Goal (issue 7): < 60 s for the hour of conversation trace on one core.

    python benchmarks/sim_speed.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from cascadia_sky.planner.planner import make_plan
from cascadia_sky.sim import engine
from cascadia_sky.sim.simulate import simulate, spec_requests
from cascadia_sky.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _time(fn, runs: int) -> tuple[float, object]:
    walls, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    spec = load_spec(EXAMPLES / "deepseek.yaml")
    plan = make_plan(spec)
    figures: dict[str, float] = {}
    settings = [("conv_1h_rate1", 0.25, "workload"), ("conv_1h_rate4", 1.0, "workload"),
                ("conv_reasoning_lengths_rate2", 0.5, "profile")]
    for key, mult, lengths in settings:
        reqs = spec_requests(spec, rate_multiplier=mult, output_lengths=lengths)
        wall, res = _time(lambda reqs=reqs: simulate(spec, plan, requests=reqs), args.runs)
        s = res.summary()  # type: ignore[union-attr]
        figures[f"{key}_s"] = round(wall, 3)
        print(f"{key}: {reqs.n} requests, {s['rate_rps']:.1f} req/s, output tokens mean "
              f"{reqs.output_tokens.mean():.0f}: {wall:.2f} s (e2e p95 {s['e2e_p95_s']:.1f} s)")
    reqs = spec_requests(spec)
    bulk = engine.Replica._bulk_decode
    engine.Replica._bulk_decode = lambda self, t, done: self._iteration(done)  # type: ignore[method-assign]
    try:
        wall, _ = _time(lambda: simulate(spec, plan, requests=reqs), 1)
    finally:
        engine.Replica._bulk_decode = bulk  # type: ignore[method-assign]
    figures["conv_1h_rate4_no_bulk_s"] = round(wall, 3)
    print(f"conv_1h_rate4 without bulk decode: {wall:.2f} s")
    figures["requests"] = reqs.n
    figures["goal_s"] = 60.0
    figures["goal_met"] = figures["conv_1h_rate1_s"] < 60.0 and figures["conv_1h_rate4_s"] < 60.0
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
