"""Re-plan time of a cascade (default examples/deepseek.yaml: the paper's 32 x H100 pool) for a workload that drifted:
the same rate, 1.6x the rate (more load) and 0.5x (less load). Each is one `replan()` call as the re-schedule loop
makes it (make_plan on the observed workload, a second plan at peak x headroom when the first would remove
replicas, and the current plan judged on the observed workload), in three states of the watcher's cache:

- cold: new lengths, their curves computed (the cascade file's own trace as the router's quantiles report them,
  with the cache emptied: what every length drift cost before curves were kept);
- cold code: lengths never seen (the Azure code trace's quantiles; the cache filled by `warm_up`);
- recalled: lengths seen before (the cascade file's own trace, from the router's quantiles): the kept curves of
  `warm_up` are reused;
- warm: rate-only drift (`same_lengths`), the current plan's curves reused.

Each case runs `--repeat` times (default 3); the median is reported. Prints one line per case and a JSON line at
the end (with the load average: on a shared machine it matters).

    python benchmarks/replan_speed.py [examples/deepseek.yaml] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from cascadia_sky.planner.planner import make_plan
from cascadia_sky.reschedule.observe import LENGTH_QUANTILES, Reference, spec_reference
from cascadia_sky.reschedule.replan import forget, replan, warm_up
from cascadia_sky.spec import load_spec
from cascadia_sky.workload import load_trace

CODE_TRACE = "traces/AzureLLMInferenceTrace_code.csv"


def quantiles(x: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((q, float(np.quantile(x, q))) for q in LENGTH_QUANTILES) if x.size else ()


def main(path: str = "examples/deepseek.yaml", repeat: int = 3) -> dict:
    spec = load_spec(path)
    t0 = time.perf_counter()
    plan = make_plan(spec)
    first_s = time.perf_counter() - t0
    ref = spec_reference(plan, path)
    own = load_trace(spec.resolve(spec.workload.trace), rate_scale=spec.workload.rate_scale) if spec.workload.trace \
        else None
    code = load_trace(spec.resolve(CODE_TRACE), rate_scale=1.0)
    rs = spec.reschedule
    cases: dict[str, dict] = {}
    warm_s = []
    for state in ("cold", "cold code", "recalled", "warm"):
        if state in ("cold", "recalled") and own is None:
            continue
        src = code if state == "cold code" else own
        iq = quantiles(src.input_tokens) if src is not None else ()
        oq = quantiles(src.output_tokens) if src is not None else ()
        for factor in (1.0, 1.6, 0.5):
            name = f"x{factor:g} {state}"
            walls, r = [], None
            for _ in range(repeat):
                forget()
                t0 = time.perf_counter()
                warm_up(spec)   # what the watcher does at start: the cascade file's lengths
                warm_s.append(time.perf_counter() - t0)
                if state == "cold":
                    forget()
                target = Reference(ref.rate_rps * factor, ref.reach, dict(iq).get(0.5, ref.input_p50),
                                   dict(oq).get(0.5, ref.output_p50), iq, oq)
                r = replan(plan, spec, target, target.rate_rps, min_gain=rs.min_gain, down_headroom=rs.down_headroom,
                           less_load=factor < 1, same_lengths=state == "warm")
                assert r.warm == (state in ("recalled", "warm")), (name, r.warm)
                walls.append(r.wall_s)
            assert r is not None
            cases[name] = {"replan_s_median": round(statistics.median(walls), 3), "replan_s": [round(w, 3) for w in walls],
                           "worth_it": r.worth_it, "reason": r.reason, "gpus": [s.gpus for s in r.plan.stages]}
            print(f"{name:15} median {statistics.median(walls):.2f} s ({', '.join(f'{w:.2f}' for w in walls)}); "
                  f"{r.reason}; gpus {[s.gpus for s in r.plan.stages]}", flush=True)
    out = {"spec": path, "first_plan_s": round(first_s, 3), "warm_up_s_median": round(statistics.median(warm_s), 3),
           "cases": cases, "repeat": repeat, "loadavg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", default="examples/deepseek.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    main(a.spec, a.repeat)
