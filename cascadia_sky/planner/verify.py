"""Independent re-check of a deployment, in plain Python (no PuLP, nothing shared with the MILP's build).

`evaluate` computes what a chosen plan achieves (latency L, $/h, GPUs); `violations` lists the constraints it
breaks; `verify` re-checks a `DeployResult` against its `DeployProblem`. The brute-force enumerator and the
MILP's explanations use the same evaluator, so the semantics live in one place:

- binding stages K = {k : share_k >= share_epsilon} (a stage below epsilon still needs a deployment);
- `max-stage`: L = max_{i in K} l_i;  `e2e`: L = max_{k in K} sum_{j <= k} l_j;
- pool mode: sum_i g_i = N (or <= N when the result says the pool was relaxed); quotas: per GPU type
  sum of GPUs <= quota; capacity groups: per key sum_i uses_i[key] <= cap; budget: sum_i usd_i <= B; SLO: L <= slo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cascadia_sky.constants import DEPLOY_TIE_TOL_REL

if TYPE_CHECKING:
    from cascadia_sky.planner.deploy import Candidate, DeployProblem, DeployResult

_FEASIBILITY_TOL = 1e-9   # relative (and absolute below 1) slack when comparing floats with a limit
_FEASIBLE_STATUSES = ("optimal", "feasible")


def within(value: float, limit: float) -> bool:
    """value <= limit, forgiving float noise from summing (the same rule for MILP checks and brute force)."""
    return value <= limit + _FEASIBILITY_TOL * max(1.0, abs(limit))


def tie_bound(optimum: float) -> float:
    """Largest primary value still counted as optimal when breaking ties by the secondary objective."""
    return optimum + DEPLOY_TIE_TOL_REL * max(1.0, abs(optimum))


def binding_stages(problem: DeployProblem) -> tuple[int, ...]:
    """Stages whose latency binds L: those reached by at least `share_epsilon` of all requests."""
    return tuple(k for k, share in enumerate(problem.shares) if share >= problem.share_epsilon)


@dataclass(frozen=True)
class PlanMetrics:
    """What one choice of candidates achieves."""

    latency_s: float                      # L under the problem's objective
    critical: tuple[int, ...]             # stages on the path (e2e) or the stage (max-stage) that sets L
    usd_per_hour: float
    gpus: int
    gpus_by_type: dict[str, int]
    uses: dict[str, float]                # capacity group -> total use of the plan


def evaluate(problem: DeployProblem, chosen: Sequence[Candidate]) -> PlanMetrics:
    """L, cost and GPUs of a plan (one candidate per stage), straight from the definitions."""
    binds = binding_stages(problem)
    lat = [c.p95_latency_s for c in chosen]
    if problem.objective == "max-stage":
        terms = {(k,): lat[k] for k in binds}
    else:
        terms = {tuple(range(k + 1)): math.fsum(lat[: k + 1]) for k in binds}
    critical, latency = max(terms.items(), key=lambda kv: (kv[1], len(kv[0]))) if terms else ((), 0.0)
    by_type: dict[str, int] = {}
    uses: dict[str, float] = {}
    for c in chosen:
        by_type[c.gpu_type] = by_type.get(c.gpu_type, 0) + c.gpus
        for key, amount in c.uses.items():
            uses[key] = uses.get(key, 0.0) + amount
    return PlanMetrics(latency_s=latency, critical=critical, usd_per_hour=math.fsum(c.usd_per_hour for c in chosen),
                       gpus=sum(c.gpus for c in chosen), gpus_by_type=by_type, uses=uses)


def objective_values(problem: DeployProblem, chosen: Sequence[Candidate]) -> tuple[float, float]:
    """(primary, secondary) of the lexicographic goal; see `deploy` for why these two.

    min-latency: (L, $/h) in cloud mode, (L, sum_i share_i * l_i) in pool mode; min-cost: ($/h, L).
    """
    m = evaluate(problem, chosen)
    if problem.goal == "min-cost":
        return m.usd_per_hour, m.latency_s
    if problem.mode == "cloud":
        return m.latency_s, m.usd_per_hour
    return m.latency_s, math.fsum(s * c.p95_latency_s for s, c in zip(problem.shares, chosen, strict=True))


def violations(problem: DeployProblem, chosen: Sequence[Candidate], *, pool_relaxed: bool) -> list[tuple[str, str]]:
    """(constraint name, message) for every constraint the plan breaks; empty when it is feasible."""
    out: list[tuple[str, str]] = []
    for i, c in enumerate(chosen):
        if not math.isfinite(c.p95_latency_s):
            out.append(("candidate", f"stage {i}: {c.key} cannot sustain its workload (p95 = inf)"))
    m = evaluate(problem, chosen)
    if problem.mode == "pool" and problem.pool_gpus is not None:
        n = problem.pool_gpus
        if pool_relaxed and m.gpus > n:
            out.append(("pool_gpus", f"pool: {m.gpus} GPUs used > pool of {n}"))
        if not pool_relaxed and m.gpus != n:
            out.append(("pool_gpus", f"pool: {m.gpus} GPUs used != pool of {n} (sum must equal N)"))
    if problem.budget_usd_per_hour is not None and not within(m.usd_per_hour, problem.budget_usd_per_hour):
        out.append(("budget_usd_per_hour",
                    f"budget: ${m.usd_per_hour:.4g}/h > budget ${problem.budget_usd_per_hour:.4g}/h"))
    for gpu_type, quota in sorted(problem.quotas.items()):
        used = m.gpus_by_type.get(gpu_type, 0)
        if used > quota:
            out.append((f"quota:{gpu_type}", f"quota {gpu_type}: {used} GPUs > quota {quota}"))
    for key, cap in sorted(problem.caps.items()):
        used_amount = m.uses.get(key, 0.0)
        if not within(used_amount, cap):
            out.append((f"cap:{key}", f"capacity {key}: {used_amount:g} used > limit {cap:g}"))
    if problem.slo_p95_s is not None and not within(m.latency_s, problem.slo_p95_s):
        out.append(("slo_p95_s", f"SLO: p95 {m.latency_s:.4g} s > slo {problem.slo_p95_s:.4g} s"))
    return out


def _candidate_problems(problem: DeployProblem, i: int, c: Candidate) -> list[str]:
    """Checks of one chosen candidate on its own: it belongs to stage i's table and is self-consistent."""
    out = []
    if c.stage != i:
        out.append(f"stage {i}: chosen {c.key} belongs to stage {c.stage}")
    if c not in problem.candidates[i]:
        out.append(f"stage {i}: chosen {c.key} is not in the stage's candidate table")
    if min(c.tp, c.pp, c.replicas) < 1 or c.gpus != c.tp * c.pp * c.replicas:
        out.append(f"stage {i}: {c.key} has gpus={c.gpus} but tp*pp*replicas={c.tp * c.pp * c.replicas}")
    if problem.mode == "pool" and problem.pool_gpu_type is not None and c.gpu_type != problem.pool_gpu_type:
        out.append(f"stage {i}: {c.key} uses {c.gpu_type}, the pool is {problem.pool_gpu_type}")
    gpi = c.gpus_per_instance
    if gpi is not None and c.tp > gpi:
        out.append(f"stage {i}: {c.key} has tp={c.tp} > {gpi} GPUs per instance (TP must stay within a node)")
    if gpi is not None and c.instances is not None and c.instances * gpi < c.gpus:
        out.append(f"stage {i}: {c.key} needs {c.gpus} GPUs but {c.instances} x {gpi}-GPU instances hold fewer")
    return out


def verify(problem: DeployProblem, result: DeployResult) -> list[str]:
    """Everything wrong with `result` as an answer to `problem`; empty when it checks out."""
    if result.status not in _FEASIBLE_STATUSES:
        return [f"status {result.status!r} but {len(result.chosen)} candidates chosen"] if result.chosen else []
    if len(result.chosen) != len(problem.candidates):
        return [f"status {result.status!r} but {len(result.chosen)} candidates chosen for "
                f"{len(problem.candidates)} stages"]
    out = []
    for i, c in enumerate(result.chosen):
        out += _candidate_problems(problem, i, c)
    if result.pool_relaxed and problem.mode != "pool":
        out.append("pool_relaxed is set outside pool mode")
    out += [msg for _, msg in violations(problem, result.chosen, pool_relaxed=result.pool_relaxed)]
    m = evaluate(problem, result.chosen)
    if not math.isclose(result.latency_s, m.latency_s, rel_tol=1e-9, abs_tol=1e-9):
        out.append(f"latency: result says L = {result.latency_s:.6g} s, the chosen stages give {m.latency_s:.6g} s")
    if not math.isclose(result.usd_per_hour, m.usd_per_hour, rel_tol=1e-9, abs_tol=1e-9):
        out.append(f"cost: result says ${result.usd_per_hour:.6g}/h, the chosen stages cost ${m.usd_per_hour:.6g}/h")
    if result.gpus != m.gpus:
        out.append(f"gpus: result says {result.gpus}, the chosen stages use {m.gpus}")
    return out
