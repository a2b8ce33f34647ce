"""`make_plan(spec)`: the bi-level planner end to end — quality profile, workload, threshold search, deployment MILP.

Data flow: spec -> (profile split into planning / held-out prompts, workload) -> every distinct threshold vector
theta of the planning prompts (exact.py) -> the share of requests reaching each stage -> each stage's arrival rate is
the workload's rate times that share -> per-stage deployments from the performance model (candidates.py) -> the
deployment level L (level.py: the pool DP for every vector, or the MILP inside branch and bound) -> the least
J = L + penalty -> the deployment MILP at the chosen vector -> plan.json.

Request lengths per stage: when the workload states output lengths (a trace, or `output_tokens`), every stage sees
the workload's (input, output) pairs — routing by score is taken as independent of length. Without them, the
inputs come from the workload and the outputs from the quality profile: each stage's own answer lengths over all
planning prompts (a reasoning model answers at length; that matters). Either way a stage's lengths do not depend on
the thresholds, so L depends on them only through the reach vector, which makes the exact search possible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cascadia_sky.catalog import active_offer_file, catalog_dir, clouds, get_gpu
from cascadia_sky.constants import (
    PLANNER_EXACT_TIME_LIMIT_SECONDS,
    PLANNER_FRONTIER_POINTS,
    PLANNER_GRID_POINTS,
    PLANNER_JOINT_POINTS,
    PLANNER_LENGTH_SAMPLES,
    PLANNER_MAX_ROUNDS,
    PLANNER_REFINE_POINTS,
    PLANNER_SEED,
    PLANNER_STABLE_ROUNDS,
    PLANNER_TOLERANCE_FRACTION,
)
from cascadia_sky.errors import InfeasibleError, PlanError
from cascadia_sky.models import get_model
from cascadia_sky.perf import LengthDist
from cascadia_sky.perf.local import local_open_loop
from cascadia_sky.planner.candidates import StageSetup, estimate
from cascadia_sky.planner.deploy import DeployResult, solve
from cascadia_sky.planner.exact import (
    MAX_EXACT_STAGES,
    ExactResult,
    ThresholdSpace,
    branch_and_bound,
    dominated_in_row,
    exhaustive,
    penalty,
    threshold_space,
)
from cascadia_sky.planner.latency import request_latency
from cascadia_sky.planner.level import DeploymentLevel, stage_lengths
from cascadia_sky.planner.failover import equivalent_offers
from cascadia_sky.planner.plan import (
    FrontierPoint,
    OfferChoice,
    Plan,
    Predicted,
    SolverInfo,
    StagePlan,
    launch_settings,
)
from cascadia_sky.planner.route import Evaluation, SearchResult, chebyshev_search, objective_j
from cascadia_sky.planner.verify import gpu_key, round_trips
from cascadia_sky.quality import QualityProfile, load_profile
from cascadia_sky.spec import CascadeSpec, allowed_gpu_types
from cascadia_sky.workload import Workload, load_trace, sample_lengths

Progress = Callable[[str], None]


@dataclass
class PlanningContext:
    """Everything fixed during one planning run (built once from the spec)."""

    spec: CascadeSpec
    stages: list[StageSetup]
    profile: QualityProfile
    train: QualityProfile
    holdout_idx: np.ndarray
    workload: Workload
    q_min: float
    z1: float
    z2: float


# --- inputs ----------------------------------------------------------------------------------

def _model_ref(spec: CascadeSpec, model: str) -> str:
    return str(spec.resolve(model)) if model.endswith(".json") else model


def workload_from_spec(spec: CascadeSpec) -> Workload:
    """The trace, or samples drawn from the stated distributions (output lengths may be left to the profile)."""
    w = spec.workload
    if w.trace is not None:
        return load_trace(spec.resolve(w.trace), rate_scale=w.rate_scale)
    assert w.rate_rps is not None and w.input_tokens is not None
    rng = np.random.default_rng(PLANNER_SEED)
    ins = sample_lengths(**w.input_tokens.model_dump(), rng=rng)
    outs = (sample_lengths(**w.output_tokens.model_dump(), rng=rng) if w.output_tokens is not None
            else np.zeros(0, dtype=np.int64))
    return Workload(rate_rps=w.rate_rps * w.rate_scale, input_tokens=ins, output_tokens=outs, source="spec")


ProfileTransform = Callable[[QualityProfile], QualityProfile]
_PROFILES: dict[tuple, QualityProfile] = {}   # (file, mtime, size, stage models, aliases) -> profile (arrays read-only)


def spec_profile(spec: CascadeSpec) -> QualityProfile:
    """The spec's quality profile, read once per file version: a re-scheduling watcher plans the same cascade again
    and again (reading a 2,000-prompt profile costs ~0.3 s)."""
    path = spec.resolve(spec.quality.profile)
    models = tuple(st.model for st in spec.stages)
    aliases = {a: st.model for st in spec.stages for a in st.aliases}
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size, models, tuple(sorted(aliases.items())))
    except OSError:
        return load_profile(path, list(models), aliases)   # its own clear error
    if key not in _PROFILES:
        if len(_PROFILES) >= 8:
            _PROFILES.clear()
        _PROFILES[key] = load_profile(path, list(models), aliases)
    return _PROFILES[key]


def _joined(a: QualityProfile, b: QualityProfile) -> QualityProfile:
    """Two profiles of the same stage models, one after the other."""
    out = QualityProfile(*(np.vstack([x, y]) for x, y in ((a.scores, b.scores), (a.quality, b.quality),
                                                           (a.input_tokens, b.input_tokens),
                                                           (a.output_tokens, b.output_tokens))),
                         prompt_ids=a.prompt_ids + b.prompt_ids, stage_models=a.stage_models, source=a.source)
    out.provenance = a.provenance
    return out


def build_context(spec: CascadeSpec, target_override: float | None = None,
                  profile_transform: ProfileTransform | None = None) -> PlanningContext:
    """Load the profile and the workload, split the profile, and fix the quality target.

    `profile_transform` (re-scheduling: the profile re-weighted to the observed per-stage reach,
    `reschedule/reach.py`) is applied to the planning and the held-out part each on its own, after the split, so a
    prompt it repeats cannot land on both sides."""
    stages = []
    for i, (name, st) in enumerate(zip(spec.stage_names(), spec.stages)):
        stages.append(StageSetup(index=i, name=name, model=get_model(_model_ref(spec, st.model)),
                                 precision=st.precision, max_context=st.max_context,
                                 gpu_types=tuple(allowed_gpu_types(spec, i)), tp_pin=st.tp, pp_pin=st.pp))
    profile = spec_profile(spec)
    if spec.quality.holdout_fraction > 0 and profile.n_prompts >= 10:
        train_idx, hold_idx = profile.split(spec.quality.holdout_fraction, PLANNER_SEED)
    else:
        train_idx, hold_idx = np.arange(profile.n_prompts), np.zeros(0, dtype=np.intp)
    train = profile.subset(train_idx)
    if profile_transform is not None:
        train = profile_transform(train)
        if hold_idx.size:
            hold = profile_transform(profile.subset(hold_idx))
            profile = _joined(train, hold)
            hold_idx = np.arange(train.n_prompts, profile.n_prompts)
        else:
            profile = train
    z1, z2 = train.z1(), train.z2()
    if target_override is not None:
        q_min = target_override
    elif spec.quality.target is not None:
        q_min = spec.quality.target
    else:
        assert spec.quality.relative_target is not None
        q_min = spec.quality.relative_target * z1
    return PlanningContext(spec=spec, stages=stages, profile=profile, train=train, holdout_idx=hold_idx,
                           workload=workload_from_spec(spec), q_min=q_min, z1=z1, z2=z2)


# --- the whole planner ------------------------------------------------------------------------

def _quality_fn(ctx: PlanningContext) -> Callable[[tuple[float, ...]], float]:
    """Quality of one threshold vector as the search counts it (its confidence bound when one is asked)."""
    conf = ctx.spec.quality.confidence
    if conf is None:
        return lambda theta: ctx.train.evaluate(list(theta)).quality
    from cascadia_sky.planner.exact import normal_lower_bound
    return lambda theta: normal_lower_bound(ctx.train, list(theta), conf)


def encode_threshold(ctx: PlanningContext, stage: int, value: float, next_share: float | None = None) -> float:
    """JSON has no infinity for "never accept here": a value above every score of that stage. A threshold that
    accepts every planning prompt while the next stage gets no GPUs accepts everything (-inf, "-Infinity")."""
    if next_share == 0.0:
        return -math.inf
    if math.isfinite(value):
        return round(float(value), 6)
    top = float(np.max(ctx.profile.scores[:, stage]))
    return round(max(top, 0.0) + 1.0, 6)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _inputs(spec: CascadeSpec) -> dict[str, str]:
    out = {"spec": _sha256(spec.source) if spec.source else "",
           "profile": _sha256(spec.resolve(spec.quality.profile))}
    if spec.workload.trace:
        out["trace"] = _sha256(spec.resolve(spec.workload.trace))
    cat = catalog_dir()
    h = hashlib.sha256()
    user = [f.path for f in map(active_offer_file, clouds()) if f.user]   # refreshed catalogs in use
    for p in [*sorted(cat.rglob("*.csv")), *user]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    out["catalogs"] = h.hexdigest()
    return out


def _mu(primary_all_last: float) -> float:
    """mu = 10 x the primary objective with everything at the last stage (route.py's rule)."""
    return 10.0 * primary_all_last if math.isfinite(primary_all_last) and primary_all_last > 0 else 1e4


def _evaluation(ctx: PlanningContext, level: DeploymentLevel, space: ThresholdSpace, index: tuple[int, ...],
                mu: float, *, by_dp: bool = False) -> Evaluation:
    """One vector's evaluation: the MILP's deployment, or (frontier points in pool mode) the pool DP's."""
    dep = level.dp_at(space.reach(index)) if by_dp else level.solve_at(space.reach(index))
    primary = level.primary_of(dep)
    q = float(space.quality_bound[index])
    return Evaluation(space.thresholds(index), q, primary, dep.usd_per_hour,
                      objective_j(primary, q, ctx.q_min, ctx.z1, ctx.z2, mu), dep)


def _pool_frontier(space: ThresholdSpace, primary: np.ndarray, k: int) -> list[tuple[int, ...]]:
    """Grid indices of at most k points spread over the exact latency-quality frontier of every vector."""
    flat_l, flat_q = primary.reshape(-1), space.quality_bound.reshape(-1)
    ok = np.flatnonzero(np.isfinite(flat_l))
    order = ok[np.lexsort((-flat_q[ok], flat_l[ok]))]
    q_sorted = flat_q[order]
    prior = np.concatenate([[-np.inf], np.maximum.accumulate(q_sorted)[:-1]])
    front = order[q_sorted > prior + 1e-12]
    if front.size > k:
        front = front[np.round(np.linspace(0, front.size - 1, k)).astype(int)]
    return [tuple(int(v) for v in np.unravel_index(f, space.shape)) for f in front]


def exact_search(ctx: PlanningContext, level: DeploymentLevel,
                 progress: Progress | None = None) -> tuple[SearchResult, ExactResult]:
    """The exact routing level (exact.py): exhaustive with the pool DP, else branch and bound with the MILP."""
    t0 = time.perf_counter()
    space = threshold_space(ctx.train, ctx.spec.quality.confidence)
    all_last = tuple(g.size - 1 for g in space.grids)
    pool = ctx.spec.resources.pool is not None
    if pool:
        mu = _mu(level.primary_of(level.solve_at(space.reach(all_last))))
        pen = penalty(space, ctx.q_min, ctx.z1, ctx.z2, mu)
        primary, priced = level.pool_primary(space, dominated_in_row(space, pen))
        found = exhaustive(space, primary, pen, priced)
    else:
        mu = _mu(level.primary_of(level.solve_at(space.reach(all_last))))
        found = branch_and_bound(space, penalty(space, ctx.q_min, ctx.z1, ctx.z2, mu), level.relaxed_bound(space),
                                 lambda index: level.primary_of(level.solve_at(space.reach(index))),
                                 PLANNER_EXACT_TIME_LIMIT_SECONDS, start=all_last)
    found.wall_s = time.perf_counter() - t0
    best = _evaluation(ctx, level, space, found.index, mu)
    if pool and not math.isclose(best.latency_s, found.primary, rel_tol=1e-6, abs_tol=1e-9):
        raise PlanError(f"planner: the pool DP says L = {found.primary:.9g} s at thresholds {best.thresholds}, the "
                        f"MILP {best.latency_s:.9g} s; please report this (CASCADIA_DEBUG=1 for details)")
    points = (_pool_frontier(space, primary, PLANNER_FRONTIER_POINTS) if pool
              else [i for i, v in found.evaluated.items() if math.isfinite(v)])
    evaluations = [best] + [_evaluation(ctx, level, space, i, mu, by_dp=pool) for i in points if i != found.index]
    if progress:
        progress(f"{found.method}: {found.vectors} threshold vectors, {found.evaluations} priced, "
                 f"{'proven optimal' if found.proven else f'gap {found.gap:.3g}'}; J={best.j:.3f} "
                 f"Q={best.quality:.4f} ({found.wall_s:.2f} s)")
    result = SearchResult(best=best, evaluations=evaluations, rounds=1, deployment_solves=len(level._solved),
                          wall_s=found.wall_s, mu_s=mu, stable_rounds=0)
    return result, found


def search(ctx: PlanningContext, progress: Progress | None = None,
           level: DeploymentLevel | None = None) -> tuple[SearchResult, DeploymentLevel, ExactResult | None]:
    """Run the threshold search; raise InfeasibleError when no threshold vector has a deployment.

    Up to three stages the search is exact (`exact_search`); longer cascades use the coordinate search of
    route.py, a heuristic (the plan says so). `level` replaces the deployment level (baselines restrict its
    candidates; `sim/baselines.py`).
    """
    level = level if level is not None else DeploymentLevel(ctx)
    report = getattr(level, "quota_report", None)
    if progress and report is not None:
        progress("quota: auto: EC2 vCPUs left " + (", ".join(f"{k} {v:g}" for k, v in sorted(report.caps.items()))
                                                   or "(none read)"))
        for gap in report.gaps:
            progress(f"quota: auto: {gap}")
    found: ExactResult | None = None
    if len(ctx.stages) <= MAX_EXACT_STAGES:
        result, found = exact_search(ctx, level, progress)
    else:
        scores = [ctx.train.scores[:, i] for i in range(len(ctx.stages) - 1)]
        result = chebyshev_search(scores, _quality_fn(ctx), level, ctx.q_min, ctx.z1, ctx.z2,
                                  grid_points=PLANNER_GRID_POINTS, refine_points=PLANNER_REFINE_POINTS,
                                  stable_rounds=PLANNER_STABLE_ROUNDS, max_rounds=PLANNER_MAX_ROUNDS,
                                  tolerance=PLANNER_TOLERANCE_FRACTION, joint_points=PLANNER_JOINT_POINTS,
                                  progress=progress)
    if not math.isfinite(result.best.latency_s):
        first: DeployResult = result.best.deployment
        raise InfeasibleError(f"no deployment exists for any thresholds: {first.reason or first.status}")
    return result, level, found


def make_plan(spec: CascadeSpec, progress: Progress | None = None, target_override: float | None = None,
              level_factory: Callable[[PlanningContext], DeploymentLevel] | None = None,
              profile_transform: ProfileTransform | None = None) -> Plan:
    """Plan the cascade: thresholds, per-stage deployment, predicted quality/latency/cost.

    `level_factory` builds the deployment level from the context (default `DeploymentLevel`); the baselines of
    `sim/baselines.py` pass restricted ones. `profile_transform`: see `build_context`.
    """
    t0 = time.perf_counter()
    ctx = build_context(spec, target_override, profile_transform)
    if progress:
        progress(f"profile: {ctx.profile.n_prompts} prompts ({ctx.train.n_prompts} for planning), z1={ctx.z1:.4f} "
                 f"z2={ctx.z2:.4f}, target {ctx.q_min:.4f}; workload {ctx.workload.rate_rps:.2f} req/s")
    result, level, found = search(ctx, progress, level_factory(ctx) if level_factory is not None else None)
    return assemble_plan(ctx, result, level, time.perf_counter() - t0, found)


def _spread(points: list[Evaluation], best: Evaluation, k: int) -> list[Evaluation]:
    """At most k frontier points evenly spread over its length, always including the chosen one."""
    if len(points) <= k:
        chosen = points
    else:
        chosen = [points[int(round(j))] for j in np.linspace(0, len(points) - 1, k)]
    if all(e is not best for e in chosen) and math.isfinite(best.latency_s):
        chosen = sorted([*chosen, best], key=lambda e: e.latency_s)
    return chosen


def _status(ctx: PlanningContext, best: Evaluation, found: ExactResult | None) -> str:
    if best.quality < ctx.q_min - 1e-12:
        return "target_missed"
    return "optimal" if found is not None and found.proven else "feasible"
def assemble_plan(ctx: PlanningContext, result: SearchResult, level: DeploymentLevel, wall_s: float,
                  found: ExactResult | None = None) -> Plan:
    """The Plan of a search result's best evaluation (public so that baselines with their own choice of thresholds
    and deployment produce the same plan.json)."""
    spec = ctx.spec
    best: Evaluation = result.best
    dep: DeployResult = best.deployment
    theta = list(best.thresholds)
    out = ctx.train.evaluate(theta)
    stages: list[StagePlan] = []
    binding = {s["stage"]: s.get("reason", "") for s in dep.binding.get("stages", [])}
    estimates = []
    for i, (st, c) in enumerate(zip(ctx.stages, dep.chosen)):
        reach = float(out.reach[i])
        rate = ctx.workload.rate_rps * reach
        lengths = level.lengths(i)
        if c.replicas == 0:
            est = None
        elif spec.resources.local is not None:
            est = local_open_loop(st.model, rate / c.replicas, lengths)   # the load split over the engines
        else:
            est = estimate(st, get_gpu(c.gpu_type), c.tp, c.pp, c.replicas, rate, lengths)
        estimates.append(est)
    latency = request_latency(ctx, level, dep.chosen, [float(a) for a in out.answered])
    bands = _failover_offers(ctx, level, dep)
    rtts = (round_trips(level.problem_at(tuple(float(r) for r in out.reach)), dep.chosen)
            if spec.resources.cloud is not None else (0.0,) * len(dep.chosen))
    promised_q, promised_agree = ctx.profile.accepted(theta)   # the quality watch's promise per stage
    for i, (st, c) in enumerate(zip(ctx.stages, dep.chosen)):
        reach = float(out.reach[i])
        est = estimates[i]
        next_share = float(out.reach[i + 1]) if i + 1 < len(ctx.stages) else None
        stages.append(StagePlan(
            name=st.name, model=spec.stages[i].model,  # as the user wrote it: what the engine will load
            served_model_name=st.name, precision=st.precision, max_context=st.max_context,
            gpu_type=c.gpu_type, gpus=c.gpus, tp=c.tp, pp=c.pp, replicas=c.replicas, cloud=c.cloud,
            region=c.region, instance_type=c.instance_type, gpus_per_instance=c.gpus_per_instance,
            instances=c.instances, spot=c.spot, usd_per_hour=c.usd_per_hour,
            threshold=encode_threshold(ctx, i, theta[i], next_share) if i < len(theta) else None,
            share=round(reach, 6), answered_share=round(float(out.answered[i]), 6),
            rate_rps=round(ctx.workload.rate_rps * reach, 6), p95_latency_s=c.p95_latency_s,
            e2e_p50_s=est.e2e_p50_s if est else None, ttft_p50_s=est.ttft_p50_s if est else None,
            tpot_s=est.tpot_s if est else None, max_rate_rps_per_replica=est.max_rate_rps if est else None,
            utilization=est.utilization if est else None, binding=binding.get(i, ""),
            path_p95_latency_s=(None if latency.path_p95_s[i] is None else latency.path_p95_s[i] + sum(rtts[:i + 1])),
            bursty_p95_latency_s=latency.bursty_stage_p95_s[i], rtt_s=rtts[i], offers=bands[i],
            accepted_quality=_rounded(promised_q[i]), accepted_agreement=_rounded(promised_agree[i])))
    holdout_q = (ctx.profile.evaluate(theta, ctx.holdout_idx).quality if ctx.holdout_idx.size else None)
    conf = spec.quality.confidence
    lower = _quality_bound(ctx, theta, conf) if conf else None
    hold_lo, hold_hi = _holdout_interval(ctx, theta, conf)
    predicted = Predicted(quality=out.quality, quality_holdout=holdout_q, quality_lower_bound=lower,
                          quality_target=ctx.q_min, quality_all_last=ctx.z1, quality_all_first=ctx.z2,
                          p95_latency_s=dep.latency_s, usd_per_hour=dep.usd_per_hour, gpus=dep.gpus,
                          request_p95_latency_s=latency.request_p95_s,
                          request_p95_latency_bursty_s=latency.request_p95_bursty_s,
                          trace_burstiness=latency.burstiness,
                          quality_holdout_interval=[hold_lo, hold_hi] if hold_lo is not None else None,
                          quality_note=_quality_note(ctx, best, conf), **_single_model(ctx, level, dep))
    status = _status(ctx, best, found)
    solver = SolverInfo(status=status, wall_s=round(wall_s, 4), iterations=result.rounds,
                        deployment_solves=result.deployment_solves, objective_j=best.j, mu_s=result.mu_s,
                        stable_rounds=result.stable_rounds, milp_status=str(dep.status),
                        pool_relaxed=dep.pool_relaxed,
                        search=found.method if found is not None else ("heuristic" if len(theta) else "fixed"),
                        proven_optimal=bool(found is not None and found.proven),
                        gap_j=found.gap if found is not None else None,
                        threshold_vectors=found.vectors if found is not None else len(result.evaluations),
                        vectors_priced=found.evaluations if found is not None else len(result.evaluations))
    frontier = []
    for ev in _spread(result.frontier(), best, PLANNER_FRONTIER_POINTS):
        d: DeployResult = ev.deployment
        routed = ctx.train.evaluate(list(ev.thresholds))
        frontier.append(FrontierPoint(
            thresholds=[encode_threshold(ctx, i, v, float(routed.reach[i + 1])) for i, v in enumerate(ev.thresholds)]
            + [None], quality=ev.quality, p95_latency_s=d.latency_s, usd_per_hour=d.usd_per_hour,
            last_stage_share=float(routed.reach[-1]), last_stage_gpus=d.chosen[-1].gpus))
    res = spec.resources
    return Plan(name=spec.name, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                scorer=spec.quality.scorer, mode=res.mode,
                objective=spec.objective.latency, goal=spec.objective.goal, slo_p95_s=spec.objective.slo_p95_s,
                budget_usd_per_hour=res.cloud.budget_usd_per_hour if res.cloud is not None else None,
                workload_rate_rps=ctx.workload.rate_rps, stages=stages, predicted=predicted, solver=solver,
                inputs=_inputs(spec), frontier=frontier, launch=launch_settings(spec))


def _failover_offers(ctx: PlanningContext, level: DeploymentLevel, dep: DeployResult) -> list[list[OfferChoice]]:
    """Per stage, the chosen offer and its equivalents (planner/failover.py); empty outside cloud mode."""
    cloud = ctx.spec.resources.cloud
    if cloud is None:
        return [[] for _ in dep.chosen]
    caps = {**{gpu_key(t): float(q) for t, q in level.quotas.items()}, **level.caps}
    return equivalent_offers(dep.chosen, getattr(level, "_offers", []), band=cloud.failover_band, caps=caps,
                             offer_uses=level._offer_uses if level.caps else None,
                             budget_usd_per_hour=cloud.budget_usd_per_hour, single_region=cloud.single_region)


def _single_model(ctx: PlanningContext, level: DeploymentLevel, dep: DeployResult) -> dict[str, Any]:
    """The last stage's model alone on the same resources (its quality is z1): its objective, $/h, and a note when
    it beats the cascade at no loss of quality."""
    if len(ctx.stages) < 2 or ctx.spec.resources.local is not None:
        return {}
    last = len(ctx.stages) - 1
    cands = tuple(dataclasses.replace(c, stage=0) for c in level.candidates(last, 1.0))
    base = level.problem_at(tuple(1.0 for _ in ctx.stages))
    alone = solve(dataclasses.replace(base, candidates=(cands,), shares=(1.0,)))
    if not alone.chosen:
        return {"single_model_note": f"the last model alone has no deployment here ({alone.reason})"}
    out: dict[str, Any] = {"single_model_p95_latency_s": alone.latency_s,
                           "single_model_usd_per_hour": alone.usd_per_hour}
    conf = ctx.spec.quality.confidence
    everything_last = [math.inf] * last
    q_alone = _quality_bound(ctx, everything_last, conf) if conf else ctx.z1
    if q_alone < ctx.q_min - 1e-12:
        return out
    name = ctx.stages[-1].name
    if ctx.spec.objective.goal == "min-cost" and alone.usd_per_hour < dep.usd_per_hour - 1e-9:
        out["single_model_note"] = (f"'{name}' alone meets the target and the SLO for ${alone.usd_per_hour:.2f}/h, "
                                    f"less than this cascade's ${dep.usd_per_hour:.2f}/h")
    elif ctx.spec.objective.goal == "min-latency" and alone.latency_s < dep.latency_s - 1e-9:
        out["single_model_note"] = (f"'{name}' alone meets the target with L = {alone.latency_s:.3g} s, lower than "
                                    f"this cascade's {dep.latency_s:.3g} s (same resources)")
    return out


def _quality_bound(ctx: PlanningContext, theta: list[float], conf: float) -> float:
    from cascadia_sky.planner.exact import normal_lower_bound
    return normal_lower_bound(ctx.train, theta, conf)


def _holdout_interval(ctx: PlanningContext, theta: list[float], conf: float | None) -> tuple[float | None, ...]:
    """Two-sided normal interval of the held-out quality at `conf` (0.9 when none is asked)."""
    if not ctx.holdout_idx.size:
        return None, None
    from statistics import NormalDist
    per = ctx.profile.subset(ctx.holdout_idx)
    stage = per.route(theta)
    q = per.quality[np.arange(stage.size), stage]
    half = NormalDist().inv_cdf(0.5 + (conf or 0.9) / 2) * (float(q.std(ddof=1)) / math.sqrt(q.size)
                                                            if q.size > 1 else 0.0)
    return float(q.mean() - half), float(q.mean() + half)


def _quality_note(ctx: PlanningContext, best: Evaluation, conf: float | None) -> str:
    if best.quality >= ctx.q_min - 1e-12:
        return ""
    if conf is not None:
        top = ctx.train.quality.max(axis=1).mean()
        return (f"the target {ctx.q_min:.4f} cannot be met at confidence {conf:g} with {ctx.train.n_prompts} "
                f"planning prompts (best lower bound {best.quality:.4f}; every prompt at its best stage would "
                f"give {top:.4f}); add prompts to the profile, lower the confidence or the target")
    return f"no thresholds reach the target {ctx.q_min:.4f} (best {best.quality:.4f}); lower the target"


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
