"""Deployment level of the planner: one deployment per stage, chosen by a MILP (PuLP + CBC).

The only module that imports PuLP (inside functions, so importing this module stays light).

Pipeline: data (an immutable `DeployProblem`) -> reduce (drop candidates no optimum needs) -> build
(`_add_<group>_constraints`, each docstring is its formula) -> solve (CBC, explicit time limit and gap, status kept)
-> extract -> explain (what binds each stage) -> `verify.verify` re-checks the answer in plain Python.

Notation: stages i = 0..S-1 (0 = smallest model); candidates c in C_i with p95 latency l_c, GPUs g_c, cost p_c
($/h), GPU type t_c and resource use u_c[r] (its GPUs under "gpu:<t_c>", plus any `uses`); x[c] in {0,1} (c
deploys stage i); s_i the share of all requests that reach stage i; w_i = min(1, s_i / alpha) its tail weight
(alpha = `tail_fraction`, see `verify`); K = {k : w_k > 0}. A stage no request reaches is given a zero-GPU
candidate by the planner (replicas = 0) and weighs nothing.

Goals are lexicographic, solved exactly with two CBC runs (no weights to tune, no epsilon that could flip the
optimum): 1) optimise the primary; 2) constrain primary <= optimum * (1 + DEPLOY_TIE_TOL_REL) and optimise the
tie-break.
  min-latency: primary L; tie-break $/h in cloud mode (the cheapest of the fastest plans), and in pool mode the
               share-weighted stage latency sum_i s_i l_i (stages off the critical path still get fast).
  min-cost:    primary $/h; tie-break L (the fastest of the cheapest plans).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from cascadia_sky.constants import (
    DEPLOY_MILP_GAP_REL,
    DEPLOY_MILP_TIME_LIMIT_SECONDS,
    DEPLOY_TAIL_FRACTION,
)
from cascadia_sky.errors import PlanError
from cascadia_sky.planner.verify import (
    PlanMetrics,
    binding_stages,
    evaluate,
    objective_values,
    place_of,
    stage_weights,
    tie_bound,
    uses_of,
    violations,
    within,
)

if TYPE_CHECKING:
    import pulp

Mode = Literal["pool", "cloud"]
Objective = Literal["e2e", "max-stage"]
Goal = Literal["min-latency", "min-cost"]


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One way to deploy one stage: GPU type, parallelism and replicas, with its p95 latency and price."""

    stage: int
    gpu_type: str
    tp: int
    pp: int
    replicas: int
    gpus: int                              # tp * pp * replicas (0 for a stage that gets no replicas)
    p95_latency_s: float                   # p95 of this stage under its workload; math.inf = cannot sustain it
    usd_per_hour: float                    # 0.0 in pool mode; cloud mode: instance granularity already priced in
    key: str                               # deterministic id, used in variable names ("s1_H100_tp2_pp1_r3")
    cloud: str | None = None
    region: str | None = None
    instance_type: str | None = None
    gpus_per_instance: int | None = None
    instances: int | None = None
    spot: bool = False
    # resources beyond its GPUs (which count under "gpu:<type>"), e.g. {"vcpu:aws:p": 192}; checked against
    # DeployProblem.caps
    uses: Mapping[str, float] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, kw_only=True)
class DeployProblem:
    """Everything the deployment level needs; no I/O, no perf model (candidates come precomputed)."""

    candidates: tuple[tuple[Candidate, ...], ...]   # per stage
    shares: tuple[float, ...]                        # fraction of all requests reaching each stage; shares[0] = 1
    mode: Mode = "pool"
    pool_gpus: int | None = None
    pool_gpu_type: str | None = None
    objective: Objective = "e2e"
    goal: Goal = "min-latency"
    budget_usd_per_hour: float | None = None
    slo_p95_s: float | None = None
    caps: Mapping[str, float] = field(default_factory=dict)   # resource key -> most summed over stages;
                                                               # GPU quotas are "gpu:<type>"
    rtt_s: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (place, place) -> round trip (s);
                                                                          # the router runs in stage 0's place
    same_region: bool = False                                 # every deployed stage in one cloud/region
    tail_fraction: float = DEPLOY_TAIL_FRACTION
    time_limit_s: float = DEPLOY_MILP_TIME_LIMIT_SECONDS
    gap: float = DEPLOY_MILP_GAP_REL


class DeployStatus(StrEnum):
    """How a solve ended."""

    OPTIMAL = "optimal"          # proven optimal (within `gap`)
    FEASIBLE = "feasible"        # time limit hit with a plan in hand; it may not be optimal
    INFEASIBLE = "infeasible"    # no plan satisfies the constraints; `reason` names what to relax
    TIME_LIMIT = "time_limit"    # time limit hit before any plan was found
    ERROR = "error"              # the solver gave an undefined answer


@dataclass(frozen=True)
class DeployResult:
    """The chosen deployment (empty `chosen` unless optimal/feasible) and why it looks the way it does."""

    status: DeployStatus
    chosen: tuple[Candidate, ...]
    latency_s: float             # L (math.inf when nothing is chosen)
    usd_per_hour: float
    gpus: int
    wall_s: float
    binding: dict[str, Any]      # {"critical", "constraints", "stages"}; see `_explain`
    pool_relaxed: bool = False   # pool mode: sum = N was infeasible, so sum <= N was used
    reason: str = ""
    objective_value: float = math.nan   # the solver's own value of the primary objective (`verify` checks it)             # for infeasible / time_limit / error: what happened and what to relax


# ---------------------------------------------------------------------------------------------- validation

def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _check_candidate(problem: DeployProblem, i: int, c: Candidate) -> None:
    where = f"deploy problem: candidates[{i}] {c.key!r}"
    if c.stage != i:
        raise PlanError(f"{where}: stage={c.stage} but it is listed under stage {i}; fix the candidate table")
    if min(c.tp, c.pp) < 1 or c.replicas < 0 or c.gpus != c.tp * c.pp * c.replicas:
        raise PlanError(f"{where}: gpus must equal tp*pp*replicas with tp, pp >= 1 and replicas >= 0 (got "
                        f"{c.gpus}, {c.tp}, {c.pp}, {c.replicas}); fix the candidate generator")
    if any(not math.isfinite(v) or v < 0 for v in c.uses.values()):
        raise PlanError(f"{where}: uses must be finite and >= 0, got {dict(c.uses)}")
    if math.isnan(c.p95_latency_s) or c.p95_latency_s < 0:
        raise PlanError(f"{where}: p95_latency_s must be >= 0 or inf, got {c.p95_latency_s}")
    if not math.isfinite(c.usd_per_hour) or c.usd_per_hour < 0:
        raise PlanError(f"{where}: usd_per_hour must be finite and >= 0, got {c.usd_per_hour}")
    if problem.mode == "pool" and problem.pool_gpu_type is not None and c.gpu_type != problem.pool_gpu_type:
        raise PlanError(f"{where}: gpu_type {c.gpu_type} in a pool of {problem.pool_gpu_type}; "
                        "generate pool candidates for the pool's GPU type only")


def validate_problem(problem: DeployProblem) -> None:
    """Raise PlanError (one line: field and fix) on malformed problem data, before any solving."""
    stages = len(problem.candidates)
    if stages == 0 or len(problem.shares) != stages:
        raise PlanError(f"deploy problem: {stages} candidate tables but {len(problem.shares)} shares; "
                        "give one share per stage")
    if not math.isclose(problem.shares[0], 1.0) or any(not 0.0 <= s <= 1.0 for s in problem.shares) or any(
            b > a + 1e-12 for a, b in itertools.pairwise(problem.shares)):
        raise PlanError(f"deploy problem: shares {problem.shares} must start at 1 and not increase "
                        "(a cascade only loses requests)")
    if problem.mode not in ("pool", "cloud") or problem.objective not in ("e2e", "max-stage") or \
            problem.goal not in ("min-latency", "min-cost"):
        raise PlanError(f"deploy problem: unknown mode/objective/goal {problem.mode}/{problem.objective}/"
                        f"{problem.goal}; use pool|cloud, e2e|max-stage, min-latency|min-cost")
    if problem.mode == "pool" and (problem.pool_gpus is None or problem.pool_gpus < 1):
        raise PlanError("deploy problem: pool mode needs pool_gpus >= 1; set the pool size")
    if problem.mode == "pool" and problem.goal == "min-cost":
        raise PlanError("deploy problem: goal min-cost needs cloud mode (a pool has no price); use min-latency")
    if problem.budget_usd_per_hour is not None and problem.budget_usd_per_hour < 0:
        raise PlanError("deploy problem: budget_usd_per_hour must be >= 0")
    if problem.slo_p95_s is not None and problem.slo_p95_s <= 0:
        raise PlanError("deploy problem: slo_p95_s must be > 0")
    if any(not q >= 0 for q in problem.caps.values()):
        raise PlanError(f"deploy problem: caps must be >= 0, got {dict(problem.caps)}")
    if not 0.0 <= problem.tail_fraction <= 1.0 or problem.time_limit_s <= 0 or problem.gap < 0:
        raise PlanError("deploy problem: need 0 <= tail_fraction <= 1, time_limit_s > 0 and gap >= 0")
    names: set[str] = set()
    for i, cands in enumerate(problem.candidates):
        for c in cands:
            _check_candidate(problem, i, c)
            name = _safe_name(c.key)
            if name in names:
                raise PlanError(f"deploy problem: candidate key {c.key!r} is not unique (as a variable name); "
                                "make keys unique, e.g. include stage, GPU type, tp, pp and replicas")
            names.add(name)


# ---------------------------------------------------------------------------------------------- reduction

def _fits_alone(problem: DeployProblem, c: Candidate, weight: float) -> bool:
    """Whether c could be part of any feasible plan, judged on c alone (latencies, GPUs and costs are >= 0)."""
    if not math.isfinite(c.p95_latency_s):
        return False
    if problem.mode == "pool" and c.gpus > problem.pool_gpus:
        return False
    if any(not within(amount, problem.caps[key]) for key, amount in uses_of(c).items() if key in problem.caps):
        return False
    if problem.budget_usd_per_hour is not None and not within(c.usd_per_hour, problem.budget_usd_per_hour):
        return False
    # a stage's own weighted latency is a lower bound on L (the other terms are >= 0)
    return not (weight > 0 and problem.slo_p95_s is not None
                and not within(weight * c.p95_latency_s, problem.slo_p95_s))


def _pareto(problem: DeployProblem, cands: Sequence[Candidate]) -> tuple[Candidate, ...]:
    """Keep only candidates no other candidate of the stage dominates.

    A dominates B when l_A <= l_B, p_A <= p_B and A uses no more of any capped resource: in pool mode the GPU
    count must also be equal (sum = N is an equality). Every objective and constraint is monotone in these, so
    swapping B for A never hurts: the optimum (and its tie-break) is unchanged. Sorted sweep: a dominator always
    precedes what it dominates.
    """
    capped = sorted(problem.caps)

    def capped_use(c: Candidate) -> tuple[float, ...]:
        u = uses_of(c)
        return tuple(u.get(k, 0.0) for k in capped)

    order = sorted(cands, key=lambda c: (c.p95_latency_s, c.usd_per_hour, c.gpus, c.key))
    free_min_usd = math.inf                                  # cheapest kept candidate that uses no capped resource
    kept_counted: dict[Any, list[tuple[float, tuple[float, ...]]]] = {}   # class -> [(usd, capped use)]
    kept = []
    for c in order:
        use = capped_use(c)
        cls = c.gpus if problem.mode == "pool" else None
        if problem.mode != "pool" and not any(use):
            if free_min_usd <= c.usd_per_hour:
                continue
            free_min_usd = c.usd_per_hour
            kept.append(c)
            continue
        if problem.mode != "pool" and free_min_usd <= c.usd_per_hour:
            continue
        if any(u <= c.usd_per_hour and all(a <= b for a, b in zip(v, use)) for u, v in kept_counted.get(cls, [])):
            continue
        kept_counted.setdefault(cls, []).append((c.usd_per_hour, use))
        kept.append(c)
    return tuple(sorted(kept, key=lambda c: c.key))


def reduce_candidates(problem: DeployProblem) -> tuple[tuple[Candidate, ...], ...]:
    """Per stage, the candidates an optimal plan may need: finite, individually feasible, not dominated.

    In pool mode this is the paper's "for every GPU count f keep only the best strategy".
    """
    weights = stage_weights(problem)
    out = []
    for i, cands in enumerate(problem.candidates):
        fit = [c for c in cands if _fits_alone(problem, c, weights[i])]
        if problem.rtt_s or problem.same_region:   # where a stage runs matters: dominance only within a place
            by_place: dict[str | None, list[Candidate]] = {}
            for c in fit:
                by_place.setdefault(place_of(c), []).append(c)
            out.append(tuple(sorted((k for g in by_place.values() for k in _pareto(problem, g)), key=lambda c: c.key)))
        else:
            out.append(_pareto(problem, fit))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- build

@dataclass
class _Model:
    problem: DeployProblem
    cands: tuple[tuple[Candidate, ...], ...]
    prob: pulp.LpProblem
    x: dict[tuple[int, int], pulp.LpVariable]    # (stage, index into cands[stage]) -> binary
    latency: pulp.LpVariable                      # L

    def expr(self, coef: Any, stages: Sequence[int] | None = None) -> pulp.LpAffineExpression:
        """sum over stages i (default: all) of sum_{c in C_i} coef(i, c) x[c]."""
        import pulp
        stages = range(len(self.cands)) if stages is None else stages
        return pulp.LpAffineExpression([(self.x[i, j], coef(i, c)) for i in stages
                                        for j, c in enumerate(self.cands[i])])


def _add_choice_constraints(m: _Model) -> None:
    """choice_s{i}:  sum_{c in C_i} x[c] = 1   for every stage i (each stage gets exactly one deployment)."""
    for i in range(len(m.cands)):
        m.prob += (m.expr(lambda _i, c: 1, [i]) == 1, f"choice_s{i}")


def _add_pool_constraints(m: _Model, pool_le: bool) -> None:
    """pool:  sum_i sum_c g_c x[c] = N   (pool mode; <= N when = N is infeasible)."""
    if m.problem.mode != "pool":
        return
    used = m.expr(lambda _i, c: c.gpus)
    m.prob += ((used <= m.problem.pool_gpus) if pool_le else (used == m.problem.pool_gpus), "pool")


def _add_cap_constraints(m: _Model) -> None:
    """cap_{r}:  sum_i sum_c u_c[r] x[c] <= cap_r   for every capped resource r (GPU quotas: r = "gpu:<type>")."""
    for key, cap in sorted(m.problem.caps.items()):
        used = m.expr(lambda _i, c, r=key: uses_of(c).get(r, 0.0))
        m.prob += (used <= cap, f"cap_{_safe_name(key)}")


def _add_budget_constraints(m: _Model) -> None:
    """budget:  sum_i sum_c p_c x[c] <= B   (when a budget is given)."""
    if m.problem.budget_usd_per_hour is not None:
        m.prob += (m.expr(lambda _i, c: c.usd_per_hour) <= m.problem.budget_usd_per_hour, "budget")


def _add_round_trip_constraints(m: _Model) -> dict[int, pulp.LpVariable]:
    """rtt_s{k}_{q}_{p}:  r_k >= rtt(p, q) (sum_{c in C_k at q} x[c] + sum_{c0 in C_0 at p} x[c0] - 1)   for k >= 1
    and every place q of stage k and p of stage 0 (the router's place): r_k is the round trip of stage k. Each stage
    picks exactly one deployment (choice_s), so each sum is 0 or 1 and this linearises the product exactly, with one
    constraint per pair of places rather than per candidate."""
    import pulp

    r: dict[int, Any] = {}
    if not m.problem.rtt_s or not m.cands:
        return r

    def by_place(k: int) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for j, c in enumerate(m.cands[k]):
            if (p := place_of(c)) is not None:
                out.setdefault(p, []).append(m.x[k, j])
        return out

    homes = {p: pulp.lpSum(xs) for p, xs in sorted(by_place(0).items())}
    for k in range(1, len(m.cands)):
        for q, xs in sorted(by_place(k).items()):
            there = None
            for p, home in homes.items():
                rtt = m.problem.rtt_s.get((p, q), 0.0) if q != p else 0.0
                if rtt <= 0:
                    continue
                if k not in r:
                    r[k] = m.prob.add_variable(f"r_s{k}", lowBound=0)
                there = pulp.lpSum(xs) if there is None else there
                m.prob += (r[k] >= rtt * (there + home - 1), f"rtt_s{k}_{_safe_name(q)}_{_safe_name(p)}")
    return r


def _add_same_region_constraints(m: _Model) -> None:
    """region_s{i}_{p}:  sum_{c in C_i at p} x[c] <= z_p  for every stage i and place p;  one_region: sum_p z_p <= 1."""
    if not m.problem.same_region:
        return
    import pulp
    places = sorted({p for stage in m.cands for c in stage if (p := place_of(c)) is not None})
    z = {p: m.prob.add_variable(f"z_{_safe_name(p)}", cat=pulp.LpBinary) for p in places}
    for i, stage in enumerate(m.cands):
        for p in places:
            at = [m.x[i, j] for j, c in enumerate(stage) if place_of(c) == p]
            if at:
                m.prob += (pulp.lpSum(at) <= z[p], f"region_s{i}_{_safe_name(p)}")
    if z:
        m.prob += (pulp.lpSum(z.values()) <= 1, "one_region")


def _add_latency_constraints(m: _Model) -> None:
    """max-stage:  L >= w_k (sum_c l_c x[c] + r_k)                for every k in K  (latency_s{k});
    e2e:        L >= sum_{k in K} w_k (sum_c l_c x[c] + r_k)   (latency_tail: the tail-weighted path);
    r_k the round trip of stage k (0 without a round-trip table)."""
    import pulp
    w = stage_weights(m.problem)
    counted = binding_stages(m.problem)
    r = _add_round_trip_constraints(m)
    if m.problem.objective == "max-stage":
        for k in counted:
            extra = w[k] * r[k] if k in r else 0
            m.prob += (m.latency >= m.expr(lambda i, c: w[i] * c.p95_latency_s, [k]) + extra, f"latency_s{k}")
    elif counted:
        extra = pulp.lpSum(w[k] * r[k] for k in counted if k in r)
        m.prob += (m.latency >= m.expr(lambda i, c: w[i] * c.p95_latency_s, counted) + extra, "latency_tail")


def _add_slo_constraints(m: _Model) -> None:
    """slo:  L <= SLO   (when a p95 SLO is given)."""
    if m.problem.slo_p95_s is not None:
        m.prob += (m.latency <= m.problem.slo_p95_s, "slo")


def _build(problem: DeployProblem, cands: tuple[tuple[Candidate, ...], ...], *, pool_le: bool) -> _Model:
    """The MILP over the given (reduced) candidates; variable names are x_<key> and L."""
    import pulp
    prob = pulp.LpProblem("cascadia_deploy", pulp.LpMinimize)
    x = {(i, j): prob.add_variable(f"x_{_safe_name(c.key)}", cat=pulp.LpBinary)
         for i, stage in enumerate(cands) for j, c in enumerate(stage)}
    m = _Model(problem, cands, prob, x, prob.add_variable("L", lowBound=0))
    _add_choice_constraints(m)
    _add_pool_constraints(m, pool_le)
    _add_cap_constraints(m)
    _add_budget_constraints(m)
    _add_latency_constraints(m)
    _add_same_region_constraints(m)
    _add_slo_constraints(m)
    return m


def _objectives(m: _Model) -> tuple[pulp.LpAffineExpression, pulp.LpAffineExpression]:
    """(primary, tie-break) expressions; must match `verify.objective_values`."""
    import pulp
    latency = pulp.LpAffineExpression([(m.latency, 1.0)])
    cost = m.expr(lambda _i, c: c.usd_per_hour)
    if m.problem.goal == "min-cost":
        return cost, latency
    if m.problem.mode == "cloud":
        return latency, cost
    return latency, m.expr(lambda i, c: m.problem.shares[i] * c.p95_latency_s if m.problem.shares[i] else 0.0)


# ---------------------------------------------------------------------------------------------- solve

def _status_of(status: int, sol_status: int) -> DeployStatus:
    """Map PuLP's (status, sol_status) after a CBC run to ours."""
    import pulp
    if sol_status == pulp.LpSolutionOptimal:
        return DeployStatus.OPTIMAL
    if sol_status == pulp.LpSolutionIntegerFeasible:
        return DeployStatus.FEASIBLE
    if status == pulp.LpStatusInfeasible:
        return DeployStatus.INFEASIBLE
    if status == pulp.LpStatusNotSolved:
        return DeployStatus.TIME_LIMIT
    return DeployStatus.ERROR


def _run_cbc(m: _Model, objective: pulp.LpAffineExpression, seconds: float, gap: float,
             warm: bool = False) -> DeployStatus:
    import pulp
    m.prob.setObjective(objective)
    with warnings.catch_warnings():   # PuLP 3.x announces a 4.0 rename of PULP_CBC_CMD; the bundled CBC is ours
        warnings.simplefilter("ignore", DeprecationWarning)
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(seconds, 0.1), gapRel=gap, warmStart=warm)
        m.prob.solve(solver)
    return _status_of(m.prob.status, m.prob.sol_status)


def _extract(m: _Model) -> tuple[Candidate, ...]:
    """The candidate with x = 1 in each stage (the largest x, robust to CBC's integrality tolerance)."""
    return tuple(stage[max(range(len(stage)), key=lambda j: m.x[i, j].value() or 0.0)]
                 for i, stage in enumerate(m.cands))


_Solved = tuple[DeployStatus, tuple[Candidate, ...], float]   # (status, chosen, solver's primary objective)


def _solve_single(problem: DeployProblem, cands: tuple[tuple[Candidate, ...], ...], *, pool_le: bool) -> _Solved:
    """One candidate left per stage: nothing to choose, only constraints to check (no CBC run)."""
    chosen = tuple(stage[0] for stage in cands)
    if violations(problem, chosen, pool_relaxed=pool_le):
        return DeployStatus.INFEASIBLE, (), math.nan
    return DeployStatus.OPTIMAL, chosen, objective_values(problem, chosen)[0]


def _solve_lexicographic(problem: DeployProblem, cands: tuple[tuple[Candidate, ...], ...], *, pool_le: bool,
                         deadline: float) -> _Solved:
    """Optimise the primary, then the tie-break with the primary held at its optimum."""
    if any(not stage for stage in cands):
        return DeployStatus.INFEASIBLE, (), math.nan
    if all(len(stage) == 1 for stage in cands):
        return _solve_single(problem, cands, pool_le=pool_le)
    import pulp
    m = _build(problem, cands, pool_le=pool_le)
    primary, tie_break = _objectives(m)
    status = _run_cbc(m, primary, deadline - time.perf_counter(), problem.gap)
    if status not in (DeployStatus.OPTIMAL, DeployStatus.FEASIBLE):
        return status, (), math.nan
    reported = float(pulp.value(primary))
    chosen = _extract(m)
    best_primary = objective_values(problem, chosen)[0]
    m.prob += (primary <= tie_bound(best_primary), "tie_break_bound")
    # CBC's warm start returned fractional "optimal" values on models with round-trip variables: no warm start
    # there, and a tie-break answer is kept only when it checks out (else the primary's answer stands)
    warm = not (problem.rtt_s or problem.same_region)
    if _run_cbc(m, tie_break, deadline - time.perf_counter(), problem.gap, warm=warm) in (
            DeployStatus.OPTIMAL, DeployStatus.FEASIBLE):
        second = _extract(m)
        if not violations(problem, second, pool_relaxed=pool_le) and \
                objective_values(problem, second)[0] <= tie_bound(best_primary):
            chosen = second
    return status, chosen, reported


def _solve_core(problem: DeployProblem, *, reduce: bool) -> tuple[DeployStatus, tuple[Candidate, ...], bool, float]:
    """(status, chosen, pool_relaxed, solver objective): sum = N first, then sum <= N in pool mode."""
    deadline = time.perf_counter() + problem.time_limit_s
    cands = reduce_candidates(problem) if reduce else tuple(
        tuple(c for c in stage if math.isfinite(c.p95_latency_s)) for stage in problem.candidates)
    status, chosen, value = _solve_lexicographic(problem, cands, pool_le=False, deadline=deadline)
    if status == DeployStatus.INFEASIBLE and problem.mode == "pool":
        status, chosen, value = _solve_lexicographic(problem, cands, pool_le=True, deadline=deadline)
        return status, chosen, bool(chosen), value
    return status, chosen, False, value


def solve(problem: DeployProblem, *, reduce: bool = True) -> DeployResult:
    """The optimal deployment, or a result whose status and reason say why there is none. Never None.

    `reduce=False` skips dominance reduction (for benchmarks and tests; the optimum is the same). The time
    limit covers the solve (pool mode: sum = N, then sum <= N); diagnosing an infeasible problem re-solves it once
    per active constraint, each with the same limit.
    """
    start = time.perf_counter()
    validate_problem(problem)
    status, chosen, relaxed, value = _solve_core(problem, reduce=reduce)
    if not chosen:
        if status == DeployStatus.INFEASIBLE:
            reason, relax = _diagnose(problem)
        elif status == DeployStatus.TIME_LIMIT:
            reason, relax = f"no plan found within time_limit_s={problem.time_limit_s:g}; raise it", ["time_limit_s"]
        else:
            reason, relax = f"CBC returned an undefined status ({status}); rerun with a larger gap", []
        return DeployResult(status=status, chosen=(), latency_s=math.inf, usd_per_hour=0.0, gpus=0,
                            wall_s=time.perf_counter() - start, binding={"reason": reason, "relax": relax},
                            reason=reason)
    metrics = evaluate(problem, chosen)
    binding = _explain(problem, chosen, relaxed)
    return DeployResult(status=status, chosen=chosen, latency_s=metrics.latency_s,
                        usd_per_hour=metrics.usd_per_hour, gpus=metrics.gpus, wall_s=time.perf_counter() - start,
                        binding=binding, pool_relaxed=relaxed, objective_value=value,
                        reason="pool: sum = N is infeasible; the plan uses fewer GPUs" if relaxed else "")


# ---------------------------------------------------------------------------------------------- diagnose

def _feasible_without(problem: DeployProblem, **changes: Any) -> tuple[Candidate, ...]:
    """The chosen plan of `problem` with some constraints changed (empty when still infeasible)."""
    return _solve_core(dataclasses.replace(problem, **changes), reduce=True)[1]


def _diagnose(problem: DeployProblem) -> tuple[str, list[str]]:
    """Why no plan exists: which single constraint, relaxed, would make one, and by how much."""
    for i, cands in enumerate(problem.candidates):
        if not any(math.isfinite(c.p95_latency_s) for c in cands):
            return (f"stage {i}: no candidate sustains its workload (every p95 is inf); offer more or larger "
                    "GPU types, or lower the request rate", ["candidates"])
    def metrics(plan: tuple[Candidate, ...]) -> PlanMetrics:
        return evaluate(problem, plan)

    # (constraint, the problem without it, what the plan found then says); a pool's size is found as the cheapest
    # plan of a cloud problem where each GPU costs $1/h
    checks: list[tuple[str, dict[str, Any], Callable[[tuple[Candidate, ...]], str]]] = []
    if problem.mode == "pool":
        as_gpus = tuple(tuple(dataclasses.replace(c, usd_per_hour=float(c.gpus)) for c in s)
                        for s in problem.candidates)
        checks.append(("pool_gpus", dict(candidates=as_gpus, mode="cloud", goal="min-cost", pool_gpus=None,
                                         budget_usd_per_hour=None), lambda plan: (
            f"pool too small: the smallest plan meeting the other constraints needs {metrics(plan).gpus} GPUs, "
            f"the pool has {problem.pool_gpus}; raise pool_gpus to >= {metrics(plan).gpus}")))
    if problem.budget_usd_per_hour is not None:
        checks.append(("budget_usd_per_hour", dict(budget_usd_per_hour=None, goal="min-cost"), lambda plan: (
            f"budget too low: the cheapest plan meeting the other constraints costs "
            f"${metrics(plan).usd_per_hour:.2f}/h, the budget is ${problem.budget_usd_per_hour:.2f}/h; "
            "raise the budget")))
    if problem.caps:
        def _caps_message(plan: Any) -> str:
            over = [(k, q) for k, q in sorted(problem.caps.items()) if not within(metrics(plan).uses.get(k, 0.0), q)]
            ec2 = any(k.startswith("aws:vcpu:") for k, _ in over)
            return ("capacity too tight (quotas): without caps the best plan meeting the other constraints uses "
                    + ", ".join(f"{k}: {metrics(plan).uses.get(k, 0.0):g} (limit {q:g})" for k, q in over)
                    + "; raise those quotas" + (" (request an EC2 quota increase in Service Quotas)" if ec2 else "")
                    + " or allow other GPU types")
        checks.append(("caps", dict(caps={}), _caps_message))
    if problem.slo_p95_s is not None:
        checks.append(("slo_p95_s", dict(slo_p95_s=None, goal="min-latency"), lambda plan: (
            f"SLO unreachable: the lowest p95 within the other constraints is {metrics(plan).latency_s:.3g} s "
            f"> slo {problem.slo_p95_s:.3g} s; raise slo_p95_s")))
    found = [(name, say(plan)) for name, changes, say in checks if (plan := _feasible_without(problem, **changes))]
    if found:
        return "; or ".join(msg for _, msg in found), [name for name, _ in found]
    active = [name for name, _, _ in checks]
    return (f"no plan meets {', '.join(active) or 'the constraints'} together, and relaxing any one of them alone "
            "is not enough; relax several", active)


# ---------------------------------------------------------------------------------------------- explain

def _constraint_usage(problem: DeployProblem, chosen: Sequence[Candidate], relaxed: bool) -> dict[str, dict]:
    m = evaluate(problem, chosen)
    usage: dict[str, dict] = {}
    if problem.mode == "pool":
        usage["pool_gpus"] = {"used": m.gpus, "limit": problem.pool_gpus, "rule": "<=" if relaxed else "="}
    if problem.budget_usd_per_hour is not None:
        usage["budget_usd_per_hour"] = {"used": m.usd_per_hour, "limit": problem.budget_usd_per_hour}
    for key, cap in sorted(problem.caps.items()):
        usage[f"cap:{key}"] = {"used": m.uses.get(key, 0.0), "limit": cap}
    if problem.slo_p95_s is not None:
        usage["slo_p95_s"] = {"used": m.latency_s, "limit": problem.slo_p95_s}
    return usage


def _stage_explanation(problem: DeployProblem, stage_cands: Sequence[Candidate], chosen: tuple[Candidate, ...],
                       i: int, relaxed: bool) -> dict[str, Any]:
    """Why stage i got what it got: what stops the next better option for it (others held fixed)."""
    c = chosen[i]
    binds = i in binding_stages(problem)
    if problem.goal == "min-latency":
        better = sorted((a for a in stage_cands if a.p95_latency_s < c.p95_latency_s),
                        key=lambda a: (-a.p95_latency_s, a.usd_per_hour, a.key))
        word, best_word = "faster", "fastest"
    else:
        better = sorted((a for a in stage_cands if a.usd_per_hour < c.usd_per_hour),
                        key=lambda a: (-a.usd_per_hour, a.p95_latency_s, a.key))
        word, best_word = "cheaper", "cheapest"
    out: dict[str, Any] = {"stage": i, "key": c.key, "binds_latency": binds, "blocked_by": []}
    if not better:
        out["reason"] = f"the {best_word} candidate for this stage"
    else:
        alt = better[0]
        swapped = chosen[:i] + (alt,) + chosen[i + 1:]
        broken = violations(problem, swapped, pool_relaxed=relaxed)
        what = (f"the next {word} option {alt.key} ({alt.p95_latency_s:.3g} s, {alt.gpus} GPUs, "
                f"${alt.usd_per_hour:.2f}/h)")
        if broken:
            out["blocked_by"] = sorted({name for name, _ in broken})
            out["reason"] = f"{what} would break: " + "; ".join(msg for _, msg in broken)
            if out["blocked_by"] == ["pool_gpus"] and not relaxed:
                out["reason"] = (f"{what} needs {alt.gpus - c.gpus:+d} GPUs, but all {problem.pool_gpus} pool GPUs "
                                 "are assigned and moving them between stages does not lower L")
        elif problem.goal == "min-latency":
            out["reason"] = f"{what} would not lower L (not on the critical path" + (
                "; no request reaches it)" if not binds else ")") + (
                "; the plan keeps the cheaper option" if problem.mode == "cloud" else "")
        else:
            out["reason"] = f"{what} fits but is not cheaper overall"
    return out


def _explain(problem: DeployProblem, chosen: tuple[Candidate, ...], relaxed: bool) -> dict[str, Any]:
    """binding = {"critical": what sets L, "constraints": used vs limit (and which stages they block),
    "stages": per stage the one-swap explanation}."""
    m = evaluate(problem, chosen)
    stages = [_stage_explanation(problem, [c for c in problem.candidates[i] if math.isfinite(c.p95_latency_s)],
                                 chosen, i, relaxed) for i in range(len(chosen))]
    usage = _constraint_usage(problem, chosen, relaxed)
    for name, entry in usage.items():
        entry["blocks_stages"] = [s["stage"] for s in stages if name in s["blocked_by"]]
    return {"critical": {"objective": problem.objective, "stages": list(m.critical), "latency_s": m.latency_s},
            "constraints": usage, "stages": stages}
