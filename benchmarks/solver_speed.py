"""Deployment MILP wall time on realistic candidate-table sizes (3 stages): pools of 32, 80 and 256 H100s, and
cloud mode with 5 GPU types (on-demand and spot). Prints a table; the last line is one JSON object of the figures.

The candidate tables have the size and shape the planner produces (every DP x TP x PP that fits: TP within a node,
PP up to 8, replicas up to the pool), but their latencies come from a small synthetic queueing formula below, not
from the performance model: this measures the solver, not the predictions. Pool optima are cross-checked with the
exact DP (`bruteforce.dp_pool`). Goal: < 1 s at 32 GPUs, < 10 s at 256 GPUs (median of several runs).

    .venv/bin/python benchmarks/solver_speed.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time

from cascadia_sky.planner.bruteforce import dp_pool
from cascadia_sky.planner.deploy import Candidate, DeployProblem, reduce_candidates, solve
from cascadia_sky.planner.verify import verify

# (name, weights GB, decode GB read per token per request batch-amortised) for a 7B -> 70B -> 671B-AWQ cascade
MODELS = [("7b", 15.0), ("70b", 140.0), ("671b-awq", 380.0)]
SHARES = (1.0, 0.45, 0.15)
RATE_RPS = 6.0            # requests/s into the cascade
OUTPUT_TOKENS = 300
# GPU type: (memory GB, bandwidth TB/s, GPUs per instance, on-demand $/GPU/h, spot $/GPU/h)
GPUS = {"H100": (80, 3.35, 8, 4.0, 2.2), "A100-80GB": (80, 2.0, 8, 2.9, 1.4), "L40S": (48, 0.86, 8, 1.9, 0.9),
        "A10G": (24, 0.6, 4, 1.2, 0.5), "L4": (24, 0.3, 8, 0.8, 0.35)}


def p95_latency_s(weights_gb: float, gpu: str, tp: int, pp: int, replicas: int, share: float) -> float:
    """Synthetic p95: decode-bound service time per request, M/M/1 queue per replica; inf when it cannot keep up."""
    mem, tbs, *_ = GPUS[gpu]
    if weights_gb / (tp * pp) > 0.8 * mem:
        return math.inf
    step_s = weights_gb / (tp * pp * tbs * 1000) * (1 + 0.08 * (tp - 1)) + 0.004 * (pp - 1)
    batch = 16
    service_s = OUTPUT_TOKENS * step_s * pp                  # one request end to end, batch-shared below
    capacity_rps = replicas * batch / service_s
    rho = RATE_RPS * share / capacity_rps
    if rho >= 0.95:
        return math.inf
    return service_s * (1 + math.log(20) * rho / (1 - rho))


def table(mode: str, n: int | None = None) -> tuple[tuple[Candidate, ...], ...]:
    """Every DP x TP x PP per stage: a pool of n H100s, or all cloud GPU types, spot and on-demand, <= 16 replicas."""
    stages = []
    for i, (name, weights) in enumerate(MODELS):
        cands = []
        types = ["H100"] if mode == "pool" else sorted(GPUS)
        for gpu in types:
            _, _, gpi, od, spot_price = GPUS[gpu]
            for tp in (1, 2, 4, 8):
                for pp in (1, 2, 4, 8):
                    if tp > gpi:
                        continue
                    top = n // (tp * pp) if mode == "pool" else 16
                    for r in range(1, top + 1):
                        lat = p95_latency_s(weights, gpu, tp, pp, r, SHARES[i])
                        instances = r * math.ceil(tp * pp / gpi)
                        for spot in ((False,) if mode == "pool" else (False, True)):
                            usd = 0.0 if mode == "pool" else instances * gpi * (spot_price if spot else od)
                            cands.append(Candidate(
                                stage=i, gpu_type=gpu, tp=tp, pp=pp, replicas=r, gpus=tp * pp * r,
                                p95_latency_s=lat, usd_per_hour=usd, gpus_per_instance=gpi, instances=instances,
                                spot=spot, key=f"s{i}_{name}_{gpu}_tp{tp}_pp{pp}_r{r}{'_spot' if spot else ''}"))
        stages.append(tuple(cands))
    return tuple(stages)


def dense_pool(n: int, seed: int = 0) -> tuple[tuple[Candidate, ...], ...]:
    """Worst case for the reduction: every GPU count 1..n has its own finite, noisy latency in every stage."""
    rng = random.Random(seed)
    return tuple(tuple(Candidate(stage=i, gpu_type="H100", tp=1, pp=1, replicas=g, gpus=g, usd_per_hour=0.0,
                                 p95_latency_s=(i + 1) * 30 / g ** rng.uniform(0.6, 0.9) + rng.uniform(0, 0.5),
                                 key=f"s{i}_dense_r{g}") for g in range(1, n + 1)) for i in range(3))


def timed(problem: DeployProblem, runs: int, reduce: bool = True) -> tuple[float, object]:
    walls, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = solve(problem, reduce=reduce)
        walls.append(time.perf_counter() - start)
        assert not verify(problem, result), verify(problem, result)
    return statistics.median(walls), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, dict] = {}
    for n in (32, 80, 256):
        for kind, cands in (("", table("pool", n)), ("dense", dense_pool(n))):
            for objective in ("e2e", "max-stage"):
                problem = DeployProblem(candidates=cands, shares=SHARES, pool_gpus=n, pool_gpu_type="H100",
                                        objective=objective)
                wall, result = timed(problem, args.runs)
                unreduced, _ = timed(problem, max(1, args.runs // 2), reduce=False)
                exact = dp_pool(problem)
                figures[f"pool{n}{kind}_{objective}"] = {
                    "median_s": round(wall, 4), "unreduced_median_s": round(unreduced, 4),
                    "candidates": sum(map(len, cands)), "reduced": sum(map(len, reduce_candidates(problem))),
                    "status": str(result.status), "L_s": round(result.latency_s, 4),
                    "gpus": [c.gpus for c in result.chosen],
                    "dp_agrees": exact is not None and math.isclose(exact[0], result.latency_s, rel_tol=1e-6)}
    cloud = table("cloud")
    quotas = {"H100": 32, "A100-80GB": 32, "L40S": 64, "A10G": 64, "L4": 64}
    for goal, limit in (("min-latency", {"budget_usd_per_hour": 250.0}), ("min-cost", {"slo_p95_s": 60.0})):
        problem = DeployProblem(candidates=cloud, shares=SHARES, mode="cloud", goal=goal, quotas=quotas, **limit)
        wall, result = timed(problem, args.runs)
        unreduced, _ = timed(problem, 1, reduce=False)
        figures[f"cloud5types_{goal}"] = {
            "median_s": round(wall, 4), "unreduced_median_s": round(unreduced, 4), "candidates": sum(map(len, cloud)),
            "reduced": sum(map(len, reduce_candidates(problem))),
            "status": str(result.status), "L_s": round(result.latency_s, 4),
            "usd_per_hour": round(result.usd_per_hour, 2), "chosen": [c.key for c in result.chosen]}
    print(f"{'case':28} {'cands':>6} {'reduced':>7} {'median s':>9} {'unreduced s':>12} {'status':>8} {'L s':>8}")
    for name, f in figures.items():
        print(f"{name:28} {f['candidates']:6d} {f['reduced']:7d} {f['median_s']:9.3f} {f['unreduced_median_s']:12.3f} "
              f"{f['status']:>8} {f['L_s']:8.3f}")

    def worst(prefix: str) -> float:
        return max(f["median_s"] for name, f in figures.items() if name.startswith(prefix))

    figures["goal_met"] = {"pool32_under_1s": worst("pool32") < 1, "pool256_under_10s": worst("pool256") < 10,
                           "dp_agrees_everywhere": all(f.get("dp_agrees", True) for f in figures.values())}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
