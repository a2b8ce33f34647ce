"""Predicted request-level p95 (plan.json) against the simulator's, for Poisson and trace arrivals.

For each setting: plan it, then replay the plan in the simulator (`cascadia_sky/sim`) twice: with the trace's own
arrival times, and with Poisson arrivals at the trace's mean rate (same requests, same lengths, same prompts). The
plan's `request_p95_latency_s` predicts the Poisson run, `request_p95_latency_bursty_s` the trace run. Goal (issue
13): within 20 % for every example and paper setting. The last line is one JSON object.

    python benchmarks/latency_accuracy.py [--settings deepseek llama3 ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import yaml

from cascadia_sky.planner.planner import make_plan
from cascadia_sky.sim.check import latency_check
from cascadia_sky.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _settings(tmp: Path) -> dict[str, Path]:
    """The examples with a trace, and the paper comparison's settings (both cascades, both traces, 4x and 8x)."""
    out = {name: tmp / f"{name}.yaml" for name in ("deepseek", "llama3", "multicloud")}
    for name in out:
        shutil.copy(EXAMPLES / f"{name}.yaml", out[name])
    for cascade in ("deepseek", "llama3"):
        for trace in ("conv", "code"):
            for scale in (4.0, 8.0):
                data = yaml.safe_load((EXAMPLES / f"{cascade}.yaml").read_text())
                data["workload"]["trace"] = f"traces/AzureLLMInferenceTrace_{trace}.csv"
                data["workload"]["rate_scale"] = scale
                if scale == 8.0:
                    data["resources"]["pool"]["count"] = 64
                path = tmp / f"paper-{cascade}-{trace}-x{scale:g}.yaml"
                path.write_text(yaml.safe_dump(data, sort_keys=False))
                out[path.stem] = path
    return out


def run(path: Path) -> dict:
    spec = load_spec(path)
    plan = make_plan(spec)
    check = latency_check(spec, plan)
    trace = check["trace"] or {"predicted_s": None, "simulated_s": float("nan"), "error": None}
    return {"pred_poisson_s": check["poisson"]["predicted_s"], "sim_poisson_s": check["poisson"]["simulated_s"],
            "err_poisson": check["poisson"]["error"], "pred_trace_s": trace["predicted_s"],
            "sim_trace_s": trace["simulated_s"], "err_trace": trace["error"],
            "objective_L_s": plan.predicted.p95_latency_s, "planner_wall_s": plan.solver.wall_s,
            "shares": [s.share for s in plan.stages], "gpus": [s.gpus for s in plan.stages]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="*", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shutil.copytree(EXAMPLES / "profiles", tmp / "profiles")
        shutil.copytree(EXAMPLES / "traces", tmp / "traces")
        settings = _settings(tmp)
        results = {}
        for name, path in settings.items():
            if args.settings and name not in args.settings:
                continue
            r = run(path)
            results[name] = r
            print(f"{name:>28}: Poisson pred {r['pred_poisson_s']:.2f} s sim {r['sim_poisson_s']:.2f} s "
                  f"({r['err_poisson']:+.0%}); trace pred {r['pred_trace_s'] or float('nan'):.2f} s "
                  f"sim {r['sim_trace_s']:.2f} s ({(r['err_trace'] or float('nan')):+.0%}); L {r['objective_L_s']:.2f}",
                  flush=True)
    within = [abs(r["err_poisson"]) <= 0.2 and r["err_trace"] is not None and abs(r["err_trace"]) <= 0.2
              for r in results.values()]
    print(json.dumps({"results": results, "all_within_20pct": all(within), "within": sum(within),
                      "settings": len(within)}))


if __name__ == "__main__":
    main()
