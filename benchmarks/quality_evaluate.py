#!/usr/bin/env python3
"""How fast a quality profile evaluates threshold vectors (the threshold search calls this thousands of times).

Uses the committed examples/profiles/deepseek.csv (2000 prompts, 3 stages). Prints figures; the last line is one
JSON object of them. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cascadia_sky.quality import load_profile

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
          "deepseek-ai/DeepSeek-R1"]


def _per_call_us(fn, calls: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(3):  # best of 3 repeats: the least disturbed by other work on the machine
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> None:
    t0 = time.perf_counter()
    prof = load_profile(ROOT / "examples" / "profiles" / "deepseek.csv", MODELS)
    load_ms = (time.perf_counter() - t0) * 1e3
    rng = np.random.default_rng(0)
    thr_list = [rng.choice(prof.scores[:, j], 64) for j in range(2)]
    thr = np.stack(thr_list, axis=1)
    k = iter(range(10**9))

    def one() -> None:
        prof.evaluate(thr[next(k) % 64])

    train, _hold = prof.split(0.3, seed=0)
    train_prof = prof.subset(train)
    grid = np.array(np.meshgrid(prof.threshold_grid(0, 49), prof.threshold_grid(1, 49))).reshape(2, -1).T
    figures = {
        "prompts": prof.n_prompts,
        "stages": prof.n_stages,
        "load_ms": round(load_ms, 1),
        "evaluate_us": round(_per_call_us(one, 5000), 1),
        "evaluate_idx_train_us": round(_per_call_us(lambda: prof.evaluate(thr[0], train), 2000), 1),
        "evaluate_subset_train_us": round(_per_call_us(lambda: train_prof.evaluate(thr[0]), 2000), 1),
        "route_us": round(_per_call_us(lambda: prof.route(thr[1]), 5000), 1),
        "evaluate_many_us_per_vector": round(_per_call_us(lambda: prof.evaluate_many(grid), 5) / len(grid), 2),
        "evaluate_many_vectors": len(grid),
        "bootstrap_bound_us_1000_resamples": round(
            _per_call_us(lambda: prof.quality_lower_bound(thr[2], 0.95, 1000, 0), 200), 1),
    }
    for key, value in figures.items():
        print(f"{key:36s} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
