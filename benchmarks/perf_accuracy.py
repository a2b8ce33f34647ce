"""Accuracy and speed of the performance model.

Accuracy: every row of the measured vLLM benchmarks in ../shared/data/perf/aiconfigurator/vllm_measured.csv
(closed loop, H100/H200, 9 models) predicted with the same per-GPU-type efficiency factors; prints the error per
(model, GPU) and overall. Goal: median TPOT error <= 15 % and median TTFT error <= 25 %.

Speed: the planner calls `open_loop` for thousands of candidates; the median time of one evaluation (a 70B model
on 4 x H100, 4000 lognormal length samples compressed once) over several runs, plus one-off costs.

    .venv/bin/python benchmarks/perf_accuracy.py [--csv FILE] [--runs 7]

The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from cascadia_sky.catalog import get_gpu
from cascadia_sky.models import get_model
from cascadia_sky.perf import Deployment, LengthDist, closed_loop, hardware, open_loop, step_model
from cascadia_sky.perf.hardware import efficiency
from cascadia_sky.perf.validate import validate_csv

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perf" / "aiconfigurator" \
    / "vllm_measured.csv"
GOAL_TPOT_MEDIAN_APE = 0.15
GOAL_TTFT_MEDIAN_APE = 0.25


def accuracy(csv_path: Path) -> dict[str, object]:
    """Validate every row; print the per-group table and return the summary figures."""
    report = validate_csv(csv_path)
    summ = report.summary()
    print(f"accuracy on {csv_path.name}: {summ['rows']} rows modelled, {summ['skipped']} skipped")
    print(f"{'model':42} {'GPU':5} {'rows':>4} {'TTFT med':>9} {'TPOT med':>9}")
    for g in report.by_group():
        print(f"{g['model']:42} {g['system']:5} {g['rows']:4d} {g['ttft_median_ape']:9.1%} {g['tpot_median_ape']:9.1%}")
    reasons: dict[str, int] = {}
    for s in report.skipped:
        key = s.reason.split(":")[0] if s.reason.startswith(("mode=", "attention_dp")) else s.reason[:60]
        reasons[key] = reasons.get(key, 0) + 1
    for reason, n in sorted(reasons.items()):
        print(f"  skipped {n:3d}: {reason}")
    for key in ("ttft", "tpot"):
        print(f"{key.upper()}: median {summ[key]['median_ape']:.1%}  p90 {summ[key]['p90_ape']:.1%}  "
              f"mean {summ[key]['mean_ape']:.1%}")
    for gpu in sorted({r.system for r in report.rows}):
        print(f"efficiency factors {gpu}: {efficiency(get_gpu(gpu))}")
    return summ


def cross_check(csv_path: Path) -> dict[str, float]:
    """Generalisation: each Hopper GPU's rows predicted with the other's factors, and with the vendor default."""
    saved = dict(hardware._BY_NAME)
    figures: dict[str, float] = {}
    try:
        for label, factors in (("h100_factors", saved["H100"]), ("h200_factors", saved["H200"]),
                               ("default_factors", hardware._BY_VENDOR["NVIDIA"])):
            hardware._BY_NAME.update({"H100": factors, "H200": factors})
            step_model.cache_clear()
            report = validate_csv(csv_path)
            for gpu in ("H100", "H200"):
                rows = [r for r in report.rows if r.system == gpu]
                for key in ("ttft", "tpot"):
                    figures[f"{gpu.lower()}_rows_{label}_{key}_median_ape"] = float(
                        np.median([getattr(r, f"{key}_ape") for r in rows]))
    finally:
        hardware._BY_NAME.clear()
        hardware._BY_NAME.update(saved)
        step_model.cache_clear()
    print("generalisation (median TTFT / TPOT error of each GPU's rows under other factors):")
    for label in ("h100_factors", "h200_factors", "default_factors"):
        print("  " + label + ": " + "  ".join(
            f"{gpu} {figures[f'{gpu.lower()}_rows_{label}_ttft_median_ape']:.1%} / "
            f"{figures[f'{gpu.lower()}_rows_{label}_tpot_median_ape']:.1%}" for gpu in ("H100", "H200")))
    return figures


def speed(runs: int) -> dict[str, float]:
    """Median wall time of open_loop (and of the one-off parts) in milliseconds."""
    rng = np.random.default_rng(1)
    raw_in = np.rint(1000 * rng.lognormal(-0.32, 0.8, 4000)) + 1
    raw_out = np.rint(300 * rng.lognormal(-0.32, 0.8, 4000)) + 1
    lengths = LengthDist(raw_in, raw_out)
    dep = Deployment(model=get_model("meta-llama/Llama-3.1-70B"), gpu=get_gpu("H100"), tp=4, pp=1, precision="bf16")
    open_loop(dep, 1.0, lengths)                       # compress lengths and build the step model once
    per_call, n = [], 200
    for _ in range(runs):
        t0 = time.perf_counter()
        for k in range(n):
            open_loop(dep, 0.5 + 0.02 * k, lengths)   # rates from idle to near capacity
        per_call.append((time.perf_counter() - t0) / n * 1e3)
    build, compress, closed = [], [], []
    for _ in range(runs):
        step_model.cache_clear()
        t0 = time.perf_counter()
        step_model(dep)
        build.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        _ = LengthDist(raw_in, raw_out).cells
        compress.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        closed_loop(dep, 32, 2048, 512)
        closed.append((time.perf_counter() - t0) * 1e3)
    figures = {"open_loop_ms": statistics.median(per_call), "step_model_build_ms": statistics.median(build),
               "length_compress_4000_ms": statistics.median(compress), "closed_loop_ms": statistics.median(closed)}
    print(f"speed (median of {runs} runs): open_loop {figures['open_loop_ms']:.3f} ms per evaluation; "
          f"one-off: step model {figures['step_model_build_ms']:.3f} ms, compressing 4000 length samples "
          f"{figures['length_compress_4000_ms']:.3f} ms; closed_loop {figures['closed_loop_ms']:.3f} ms")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    figures: dict[str, object] = {}
    if args.csv.is_file():
        summ = accuracy(args.csv)
        figures.update({"rows": summ["rows"], "skipped": summ["skipped"],
                        "ttft_median_ape": summ["ttft"]["median_ape"], "ttft_p90_ape": summ["ttft"]["p90_ape"],
                        "tpot_median_ape": summ["tpot"]["median_ape"], "tpot_p90_ape": summ["tpot"]["p90_ape"]})
        figures["goal_met"] = bool(summ["tpot"]["median_ape"] <= GOAL_TPOT_MEDIAN_APE
                                   and summ["ttft"]["median_ape"] <= GOAL_TTFT_MEDIAN_APE)
        figures.update(cross_check(args.csv))
    else:
        print(f"measured data not found at {args.csv}; accuracy skipped (pass --csv)", file=sys.stderr)
    figures.update(speed(args.runs))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
