"""Re-plan time of a cascade (default examples/deepseek.yaml: the paper's 32 x H100 pool) for a workload that drifted:
the same rate (nothing to change), 1.6x the rate (more load) and 0.5x (less load). Each is one `replan()` call as the
re-schedule loop makes it: make_plan on the observed workload plus the current plan re-evaluated on it; cold (the
observed lengths are new: latency curves rebuilt) and warm (rate-only drift: the planned lengths' curves reused). Prints one
line per case and a JSON line at the end (with the load average: on a shared machine it matters).

    python benchmarks/replan_speed.py [examples/deepseek.yaml]
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from cascadia_sky.planner.planner import make_plan, workload_from_spec
from cascadia_sky.reschedule.observe import LENGTH_QUANTILES, Reference, spec_reference
from cascadia_sky.reschedule.replan import replan, warm_up
from cascadia_sky.spec import load_spec


def main(path: str = "examples/deepseek.yaml") -> dict:
    spec = load_spec(path)
    t0 = time.perf_counter()
    plan = make_plan(spec)
    first_s = time.perf_counter() - t0
    ref = spec_reference(plan, path)
    w = workload_from_spec(spec)
    iq = tuple((q, float(np.quantile(w.input_tokens, q))) for q in LENGTH_QUANTILES)
    oq = tuple((q, float(np.quantile(w.output_tokens, q))) for q in LENGTH_QUANTILES) if w.output_tokens.size else ()
    cases = {}
    t0 = time.perf_counter()
    warm_up(spec)   # what the watcher does at start: the planned lengths' latency curves
    warm_s = time.perf_counter() - t0
    for same_lengths in (False, True):
        for factor in (1.0, 1.6, 0.5):
            target = Reference(ref.rate_rps * factor, ref.reach, ref.input_p50, ref.output_p50, iq, oq)
            rs = spec.reschedule
            r = replan(plan, spec, target, target.rate_rps, min_gain=rs.min_gain, down_headroom=rs.down_headroom,
                       less_load=factor < 1, same_lengths=same_lengths)
            name = f"x{factor:g}" + (" warm" if same_lengths else " cold")
            cases[name] = {"replan_s": round(r.wall_s, 3), "worth_it": r.worth_it, "reason": r.reason,
                           "replicas": [s.replicas for s in r.plan.stages], "gpus": [s.gpus for s in r.plan.stages]}
            print(f"rate {name}: {r.wall_s:.2f} s; {r.reason}; gpus {[s.gpus for s in r.plan.stages]}", flush=True)
            if same_lengths is False and factor == 0.5:
                warm_up(spec)   # the cold cases replaced the cache with the observed lengths' curves
    out = {"spec": path, "first_plan_s": round(first_s, 3), "warm_up_s": round(warm_s, 3), "cases": cases, "loadavg_1min": os.getloadavg()[0],
           "cpus": os.cpu_count()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(*sys.argv[1:])
