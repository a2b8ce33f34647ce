"""Independent re-check of a deployment, in plain Python (no PuLP, nothing shared with the MILP's build).

`evaluate` computes what a chosen plan achieves (latency L, $/h, GPUs, resource use); `violations` lists the
constraints it breaks; `verify` re-checks a `DeployResult` against its `DeployProblem`, including the objective
value the MILP itself reported. The brute-force enumerator, the pool dynamic programme and the MILP's explanations
use the same definitions, so the semantics live in one place:

- tail weights w_k = min(1, share_k / tail_fraction): the fraction of the slowest-routed `tail_fraction` of
  requests (the deepest ones) that pass through stage k. A stage no request reaches weighs 0 (and may take no
  GPUs); there is no share below which a stage suddenly stops counting;
- `e2e`: L = sum_k w_k l_k (the mean, over the deepest tail of requests, of the p95s along their path; equal to
  the slowest path's sum l_1 + ... + l_S whenever every stage carries at least the tail fraction);
  `max-stage`: L = max_k w_k l_k;
- pool mode: sum_i g_i = N (or <= N when the result says the pool was relaxed); caps: for every resource key r,
  sum_i uses_i[r] <= cap[r] (GPU quotas are the keys "gpu:<type>"); budget: sum_i usd_i <= B; SLO: L <= slo;
- round trips (cloud mode, with a table): the router runs in stage 0's place; stage k's latency is l_k plus the
  round trip between that place and its own; `same_region`: every deployed stage in one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cascadia_sky.constants import DEPLOY_TIE_TOL_REL

if TYPE_CHECKING:
    from cascadia_sky.planner.deploy import Candidate, DeployProblem, DeployResult

_FEASIBILITY_TOL = 1e-9   # relative (and absolute below 1) slack when comparing floats with a limit
_FEASIBLE_STATUSES = ("optimal", "feasible")
_OBJECTIVE_TOL = 1e-6      # relative: CBC reports objective values to about this precision


def within(value: float, limit: float) -> bool:
    """value <= limit, forgiving float noise from summing (the same rule for MILP checks and brute force)."""
    return value <= limit + _FEASIBILITY_TOL * max(1.0, abs(limit))


def tie_bound(optimum: float) -> float:
    """Largest primary value still counted as optimal when breaking ties by the secondary objective."""
    return optimum + DEPLOY_TIE_TOL_REL * max(1.0, abs(optimum))


def stage_weights(problem: DeployProblem) -> tuple[float, ...]:
    """w_k = min(1, share_k / tail_fraction); a zero tail fraction counts every reached stage fully."""
    alpha = problem.tail_fraction
    return tuple((1.0 if share > 0 else 0.0) if alpha <= 0 else min(1.0, share / alpha) for share in problem.shares)


def binding_stages(problem: DeployProblem) -> tuple[int, ...]:
    """Stages whose latency counts in L: those any request reaches (weight > 0)."""
    return tuple(k for k, w in enumerate(stage_weights(problem)) if w > 0)


def gpu_key(gpu_type: str) -> str:
    """The resource key of a GPU type's quota in `DeployProblem.caps`."""
    return f"gpu:{gpu_type}"


def uses_of(c: Candidate) -> Mapping[str, float]:
    """Resources a candidate takes: its GPUs under "gpu:<type>", plus whatever its `uses` adds (or overrides)."""
    if not c.uses:
        return {gpu_key(c.gpu_type): float(c.gpus)} if c.gpus else {}
    return {**({gpu_key(c.gpu_type): float(c.gpus)} if c.gpus else {}), **c.uses}


@dataclass(frozen=True)
class PlanMetrics:
    """What one choice of candidates achieves."""

    latency_s: float                      # L under the problem's objective
    critical: tuple[int, ...]             # stages that count in L (e2e) or the stage that sets it (max-stage)
    usd_per_hour: float
    gpus: int
    gpus_by_type: dict[str, int]
    uses: dict[str, float]                # resource key -> amount used, summed over stages


def _weighted(w: float, latency: float) -> float:
    return 0.0 if w == 0 else w * latency


def place_of(c: Candidate) -> str | None:
    """Where a deployed cloud candidate runs (`cloud/region`); None for pool, local and idle candidates."""
    return f"{c.cloud}/{c.region}" if c.cloud and c.region and c.replicas else None


def round_trips(problem: DeployProblem, chosen: Sequence[Candidate]) -> tuple[float, ...]:
    """Per stage, the round trip between the router (in stage 0's place) and the stage's place (0 when unknown)."""
    home = place_of(chosen[0]) if chosen else None
    out = []
    for c in chosen:
        here = place_of(c)
        out.append(0.0 if home is None or here is None or here == home else problem.rtt_s.get((home, here), 0.0))
    return tuple(out)


def evaluate(problem: DeployProblem, chosen: Sequence[Candidate]) -> PlanMetrics:
    """L, cost, GPUs and resource use of a plan (one candidate per stage), straight from the definitions. A stage's
    latency counts its round trip to the router (`round_trips`) when the problem has a round-trip table."""
    rtt = round_trips(problem, chosen) if problem.rtt_s else (0.0,) * len(chosen)
    terms = [_weighted(w, c.p95_latency_s + r) for w, c, r in zip(stage_weights(problem), chosen, rtt, strict=True)]
    counted = tuple(k for k in binding_stages(problem))
    if problem.objective == "max-stage":
        critical = (max(counted, key=lambda k: (terms[k], k)),) if counted else ()
        latency = terms[critical[0]] if critical else 0.0
    else:
        critical, latency = counted, math.fsum(terms)
    by_type: dict[str, int] = {}
    uses: dict[str, float] = {}
    for c in chosen:
        if c.gpus:
            by_type[c.gpu_type] = by_type.get(c.gpu_type, 0) + c.gpus
        for key, amount in uses_of(c).items():
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
    return m.latency_s, math.fsum(_weighted(s, c.p95_latency_s) for s, c in zip(problem.shares, chosen, strict=True))


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
    for key, cap in sorted(problem.caps.items()):
        used = m.uses.get(key, 0.0)
        if not within(used, cap):
            out.append((f"cap:{key}", f"cap {key}: uses {used:g} > cap {cap:g}"))
    places = {p for c in chosen if (p := place_of(c)) is not None}
    if problem.same_region and len(places) > 1:
        out.append(("same_region", f"single region: stages run in {', '.join(sorted(places))}"))
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
    if min(c.tp, c.pp) < 1 or c.replicas < 0 or c.gpus != c.tp * c.pp * c.replicas:
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
    primary = objective_values(problem, result.chosen)[0]
    reported = result.objective_value
    # the solver's own optimum: the chosen plan must attain it (up to the tie tolerance and float noise)
    if not math.isfinite(reported) or not (reported - _OBJECTIVE_TOL * max(1.0, abs(reported)) <= primary
                                           <= tie_bound(reported) + _OBJECTIVE_TOL * max(1.0, abs(reported))):
        out.append(f"objective: the solver reported {reported:.9g}, the chosen stages give {primary:.9g}")
    return out
