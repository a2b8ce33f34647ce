"""Reference solvers that share nothing with the MILP: exhaustive enumeration and, for pool mode, an exact DP.

`brute_force` tries every combination of one candidate per stage (tests only, small instances) and applies the
same lexicographic goal as `deploy.solve` (see `verify.objective_values`). Pool mode also has an exact dynamic
programme (`pooldp.pool_dp`), which scales to the benchmark's 256-GPU pools.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time

from cascadia_sky.errors import PlanError
from cascadia_sky.planner.deploy import (
    Candidate,
    DeployProblem,
    DeployResult,
    DeployStatus,
    validate_problem,
)
from cascadia_sky.planner.verify import (
    evaluate,
    gpu_key,
    objective_values,
    tie_bound,
    violations,
)

BRUTE_FORCE_MAX_PLANS = 200_000
_REGIONS = ("r1", "r2", "r3")
_CAP_GROUPS = ("aws:vcpu:r1:G:on-demand", "aws:vcpu:r1:P:on-demand")


def _best_plan(problem: DeployProblem, *, pool_relaxed: bool) -> tuple[Candidate, ...] | None:
    """Lexicographic optimum over all feasible plans: minimal primary, then minimal tie-break among ties."""
    scored = [(objective_values(problem, plan), plan) for plan in itertools.product(*problem.candidates)
              if not violations(problem, plan, pool_relaxed=pool_relaxed)]
    if not scored:
        return None
    bound = tie_bound(min(primary for (primary, _), _ in scored))
    return min(((tie, plan) for (primary, tie), plan in scored if primary <= bound), key=lambda tp: tp[0])[1]


def brute_force(problem: DeployProblem) -> DeployResult:
    """The optimum by enumerating every plan; pool mode falls back to sum <= N exactly like `deploy.solve`."""
    validate_problem(problem)
    plans = math.prod(len(stage) for stage in problem.candidates)
    if plans > BRUTE_FORCE_MAX_PLANS:
        raise PlanError(f"brute force: {plans} plans exceed {BRUTE_FORCE_MAX_PLANS}; use a smaller instance")
    start = time.perf_counter()
    relaxed = False
    plan = _best_plan(problem, pool_relaxed=False)
    if plan is None and problem.mode == "pool":
        relaxed = True
        plan = _best_plan(problem, pool_relaxed=True)
    wall = time.perf_counter() - start
    if plan is None:
        return DeployResult(status=DeployStatus.INFEASIBLE, chosen=(), latency_s=math.inf, usd_per_hour=0.0, gpus=0,
                            wall_s=wall, binding={}, reason="no plan satisfies the constraints (brute force)")
    m = evaluate(problem, plan)
    return DeployResult(status=DeployStatus.OPTIMAL, chosen=plan, latency_s=m.latency_s,
                        usd_per_hour=m.usd_per_hour, gpus=m.gpus, wall_s=wall, binding={"method": "brute-force"},
                        pool_relaxed=relaxed, objective_value=objective_values(problem, plan)[0])


def random_problem(seed: int, *, mode: str = "pool", objective: str = "e2e", goal: str = "min-latency",
                   stages: int = 3, per_stage: int = 6, quotas: bool = False, budget: bool = False,
                   slo: bool = False, tail_fraction: float = 0.05, caps: bool = False, places: bool = False,
                   same_region: bool = False) -> DeployProblem:
    """A small seeded instance for brute-force comparisons: duplicates and dominated candidates on purpose,
    some infinite latencies, shares that drop below the tail fraction or to zero (that stage then has one zero-GPU
    candidate, as the planner gives it), and tight pools, budgets, quotas (caps "gpu:<type>") and SLOs. With
    `caps`, candidates also use one of two capacity groups (like vCPUs of an EC2 quota per family and purchase
    option) and the groups get tight limits. With `places`, cloud candidates run in one of three regions with
    round trips between them (the router in stage 0's region); `same_region` keeps every stage in one.

    Latencies are multiples of 1/8 s and prices multiples of $0.5/h, so sums are exact and ties are real ties.
    """
    rng = random.Random(seed)
    types = {"A": (8, 4.0), "B": (4, 2.0), "C": (1, 1.0)} if mode == "cloud" else {"H100": (8, 0.0)}
    table = []
    for i in range(stages):
        cands = []
        for j in range(per_stage):
            gpu_type = rng.choice(sorted(types))
            gpi, usd_per_gpu = types[gpu_type]
            tp, pp, replicas = min(rng.choice([1, 2]), gpi), rng.choice([1, 2]), rng.randint(1, 3)
            gpus = tp * pp * replicas
            speed = {"A": 1.6, "B": 1.2, "C": 1.0, "H100": 1.0}[gpu_type] * gpus ** 0.7 * rng.uniform(0.6, 1.4)
            latency = math.inf if rng.random() < 0.1 else max(1, round(8 * (1 + i) * 2.0 / speed)) / 8
            usd = max(1, round(2 * usd_per_gpu * gpus * rng.choice([0.5, 1.0, 1.0, 1.5]))) / 2 if usd_per_gpu else 0.0
            cands.append(Candidate(stage=i, gpu_type=gpu_type, tp=tp, pp=pp, replicas=replicas, gpus=gpus,
                                   p95_latency_s=latency, usd_per_hour=usd, key=f"s{i}_{gpu_type}_tp{tp}_pp{pp}"
                                   f"_r{replicas}_{j}", gpus_per_instance=gpi if mode == "cloud" else None,
                                   instances=replicas * math.ceil(tp * pp / gpi) if mode == "cloud" else None))
        if caps:  # drawn after the candidates, so instances without caps stay what they were
            cands = [dataclasses.replace(c, uses={rng.choice(_CAP_GROUPS): float(4 * c.gpus)}) for c in cands]
        if places or same_region:
            cands = [dataclasses.replace(c, cloud="x", region=rng.choice(_REGIONS)) for c in cands]
        table.append(tuple(cands))
    shares = [1.0]
    for _ in range(stages - 1):
        shares.append(shares[-1] * rng.choice([1.0, 0.5, 0.25, 0.03, 0.0]))
    for i, share in enumerate(shares):
        if share == 0:
            table[i] = (Candidate(stage=i, gpu_type=sorted(types)[0], tp=1, pp=1, replicas=0, gpus=0,
                                  p95_latency_s=0.0, usd_per_hour=0.0, key=f"s{i}_off"),)
    cost_lo = sum(min(c.usd_per_hour for c in s) for s in table)
    cost_hi = sum(max(c.usd_per_hour for c in s) for s in table)
    return DeployProblem(
        candidates=tuple(table), shares=tuple(shares), mode=mode, objective=objective, goal=goal,
        pool_gpus=rng.randint(stages, 5 * stages) if mode == "pool" else None,
        pool_gpu_type="H100" if mode == "pool" else None,
        budget_usd_per_hour=round(rng.uniform(cost_lo * 0.9, (cost_lo + cost_hi) / 2) * 2) / 2 if budget else None,
        slo_p95_s=rng.randint(4, 8 * 3 * stages) / 8 if slo else None,
        caps={**({gpu_key(t): rng.randint(2, 4 * stages) for t in sorted(types) if rng.random() < 0.6} if quotas
                 else {}),
              **({g: float(4 * rng.randint(2, 4 * stages)) for g in _CAP_GROUPS} if caps else {})},
        tail_fraction=tail_fraction, same_region=same_region,
        rtt_s={(f"x/{a}", f"x/{b}"): rng.randint(1, 3) / 8 for a in _REGIONS for b in _REGIONS if a != b}
        if places else {})
