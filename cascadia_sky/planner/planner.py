"""`make_plan(spec)`: the bi-level planner end to end — quality profile, workload, threshold search, deployment MILP.

Data flow: spec -> (profile split into planning / held-out prompts, workload) -> for each threshold vector theta the
profile gives the share of requests reaching each stage -> each stage's arrival rate is the workload's rate times
that share -> candidates per stage from the performance model -> the deployment MILP -> L(theta) -> the
Chebyshev-guided search over theta (route.py) -> plan.json.

Request lengths per stage: when the workload states output lengths (a trace, or `output_tokens`), every stage sees
the workload's (input, output) pairs — routing by score is taken as independent of length. Without them, the
inputs come from the workload and the outputs from the quality profile: each stage's own answer lengths on the
prompts that reach it (a reasoning model answers at length; that matters).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cascadia_sky.catalog import catalog_dir, get_gpu, offers
from cascadia_sky.constants import (
    PLANNER_BOOTSTRAP_SAMPLES,
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
from cascadia_sky.errors import InfeasibleError
from cascadia_sky.models import get_model
from cascadia_sky.perf import LengthDist
from cascadia_sky.perf.local import local_open_loop
from cascadia_sky.planner.candidates import (
    StageSetup,
    cloud_candidates,
    estimate,
    local_candidates,
    pool_candidates,
)
from cascadia_sky.planner.deploy import Candidate, DeployProblem, DeployResult, solve
from cascadia_sky.planner.plan import FrontierPoint, Plan, Predicted, SolverInfo, StagePlan, launch_settings
from cascadia_sky.planner.route import Evaluation, SearchResult, chebyshev_search
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


def build_context(spec: CascadeSpec, target_override: float | None = None) -> PlanningContext:
    """Load the profile and the workload, split the profile, and fix the quality target."""
    stages = []
    for i, (name, st) in enumerate(zip(spec.stage_names(), spec.stages)):
        stages.append(StageSetup(index=i, name=name, model=get_model(_model_ref(spec, st.model)),
                                 precision=st.precision, max_context=st.max_context,
                                 gpu_types=tuple(allowed_gpu_types(spec, i)), tp_pin=st.tp, pp_pin=st.pp))
    aliases = {a: st.model for st in spec.stages for a in st.aliases}
    profile = load_profile(spec.resolve(spec.quality.profile), [st.model for st in spec.stages], aliases)
    if spec.quality.holdout_fraction > 0 and profile.n_prompts >= 10:
        train_idx, hold_idx = profile.split(spec.quality.holdout_fraction, PLANNER_SEED)
    else:
        train_idx, hold_idx = np.arange(profile.n_prompts), np.zeros(0, dtype=np.intp)
    train = profile.subset(train_idx)
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


def _subsample(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return a if a.size <= n else rng.choice(a, size=n, replace=False)


def stage_lengths(ctx: PlanningContext, stage: int, outputs: np.ndarray) -> LengthDist:
    """Request lengths at one stage (see the module docstring)."""
    rng = np.random.default_rng(PLANNER_SEED + stage)
    w = ctx.workload
    if w.output_tokens.size:
        idx = _subsample(np.arange(w.n), PLANNER_LENGTH_SAMPLES, rng)
        return LengthDist(w.input_tokens[idx], w.output_tokens[idx])
    outs = outputs if outputs.size else ctx.train.output_tokens[:, stage]
    n = min(PLANNER_LENGTH_SAMPLES, max(outs.size, 1) * 4)
    return LengthDist(rng.choice(w.input_tokens, size=n), rng.choice(outs, size=n))


# --- the deployment level for one threshold vector --------------------------------------------

def pool_lower_bound(problem: DeployProblem) -> float:
    """The pool MILP's optimum L, ignoring only the SLO: a vectorised dynamic programme over (stage, GPUs used).

    best_i[g] = least objective of stages 0..i on exactly g GPUs; a stage combines by + (e2e; the binding stages
    are a prefix) or max (max-stage), non-binding stages only use GPUs. Like the MILP, = N first, then <= N.
    Cross-checked against `bruteforce.dp_pool` and brute force in the tests.
    """
    n = int(problem.pool_gpus or 0)
    cap = min([n] + [q for t, q in problem.quotas.items() if t == problem.pool_gpu_type])
    binds = {k for k, share in enumerate(problem.shares) if share >= problem.share_epsilon}
    best = np.full(cap + 1, math.inf)
    best[0] = 0.0
    for i, stage in enumerate(problem.candidates):
        per_count = np.full(cap + 1, math.inf)  # fastest candidate per GPU count
        for c in stage:
            if c.gpus <= cap and c.p95_latency_s < per_count[c.gpus]:
                per_count[c.gpus] = c.p95_latency_s
        nxt = np.full(cap + 1, math.inf)
        for f in np.flatnonzero(np.isfinite(per_count)):
            lat = per_count[f] if i in binds else 0.0
            shifted = best[: cap + 1 - f]
            value = np.maximum(shifted, lat) if problem.objective == "max-stage" else shifted + lat
            np.minimum(nxt[f:], value, out=nxt[f:])
        best = nxt
    if n <= cap and math.isfinite(best[n]):
        return float(best[n])
    return float(best.min())

class DeploymentLevel:
    """L(theta): per-stage candidates (cached per stage and reach) and the MILP."""

    def __init__(self, ctx: PlanningContext) -> None:
        self.ctx = ctx
        spec = ctx.spec
        self.res = spec.resources
        self._cands: dict[tuple[int, float], tuple[Candidate, ...]] = {}
        self._lengths: dict[tuple[int, float], LengthDist] = {}
        self._curves: dict[tuple[int, float], dict] = {}  # per lengths key: latency curves per shape
        self._offers = []
        if self.res.cloud is not None:
            self._offers = offers(clouds=[c.lower() for c in self.res.cloud.clouds], spot=self.res.cloud.spot)
        self.quotas = ({get_gpu(g).name: q for g, q in self.res.cloud.quotas.items()}
                       if self.res.cloud is not None else {})

    def _lengths_key(self, stage: int, reach: float) -> tuple[int, float]:
        return (stage, reach) if not self.ctx.workload.output_tokens.size else (stage, -1.0)

    def lengths(self, stage: int, reach: float, outputs: np.ndarray) -> LengthDist:
        key = self._lengths_key(stage, reach)
        if key not in self._lengths:
            self._lengths[key] = stage_lengths(self.ctx, stage, outputs)
        return self._lengths[key]

    def candidates(self, stage: int, reach: float, outputs: np.ndarray) -> tuple[Candidate, ...]:
        key = (stage, reach)
        if key not in self._cands:
            st = self.ctx.stages[stage]
            rate = self.ctx.workload.rate_rps * reach
            lengths = self.lengths(stage, reach, outputs)
            curves = self._curves.setdefault(self._lengths_key(stage, reach), {})
            if self.res.local is not None:
                self._cands[key] = local_candidates(st, rate, lengths, self.res.local.max_replicas)
            elif self.res.pool is not None:
                self._cands[key] = pool_candidates(st, get_gpu(self.res.pool.gpu).name, self.res.pool.count, rate,
                                                   lengths, curves)
            else:
                self._cands[key] = cloud_candidates(st, self._offers, self.res.cloud.spot, rate, lengths,
                                                    self.quotas, curves)
        return self._cands[key]

    def problem(self, thresholds: tuple[float, ...]) -> DeployProblem:
        out = self.ctx.train.evaluate(list(thresholds))
        reach = tuple(float(r) for r in out.reach)
        cands = tuple(self.candidates(i, reach[i], out.stage_output_tokens[i]) for i in range(len(reach)))
        obj = self.ctx.spec.objective
        common: dict[str, Any] = dict(candidates=cands, shares=reach, objective=obj.latency, goal=obj.goal,
                                      slo_p95_s=obj.slo_p95_s)
        if self.res.pool is not None:
            return DeployProblem(mode="pool", pool_gpus=self.res.pool.count,
                                 pool_gpu_type=get_gpu(self.res.pool.gpu).name, **common)
        if self.res.local is not None:  # one candidate per stage; nothing shared, nothing priced
            return DeployProblem(mode="cloud", **common)
        return DeployProblem(mode="cloud", budget_usd_per_hour=self.res.cloud.budget_usd_per_hour,
                             quotas=self.quotas, **common)

    def lower_bound(self, thresholds: tuple[float, ...]) -> float:
        """A cheap bound below the MILP's primary objective, used only to skip MILP solves that cannot win.

        Pool mode: the exact dynamic programme over (stage, GPUs used) of `bruteforce.dp_pool` (tight, and
        cross-checked against the MILP in the tests); otherwise every stage at its best candidate, no shared
        limits. Every incumbent and the final plan still come from the MILP.
        """
        problem = self.problem(thresholds)
        if problem.mode == "pool" and problem.budget_usd_per_hour is None:
            return pool_lower_bound(problem) * (1.0 - 1e-9)
        if problem.goal == "min-cost":
            return sum(min((c.usd_per_hour for c in cands), default=math.inf) for cands in problem.candidates)
        best = [min((c.p95_latency_s for c in cands), default=math.inf) for cands in problem.candidates]
        binding = [k for k, share in enumerate(problem.shares) if k == 0 or share >= problem.share_epsilon]
        if problem.objective == "max-stage":
            return max(best[k] for k in binding)
        return max(sum(best[: k + 1]) for k in binding)

    def __call__(self, thresholds: tuple[float, ...]) -> tuple[float, float, DeployResult]:
        result = solve(self.problem(thresholds))
        primary = result.usd_per_hour if self.ctx.spec.objective.goal == "min-cost" else result.latency_s
        if not result.chosen:
            primary = math.inf
        return primary, result.usd_per_hour, result


# --- the whole planner ------------------------------------------------------------------------

def _quality_fn(ctx: PlanningContext) -> Callable[[tuple[float, ...]], float]:
    conf = ctx.spec.quality.confidence
    if conf is None:
        return lambda theta: ctx.train.evaluate(list(theta)).quality
    return lambda theta: ctx.train.quality_lower_bound(list(theta), conf, PLANNER_BOOTSTRAP_SAMPLES, PLANNER_SEED)


def encode_threshold(ctx: PlanningContext, stage: int, value: float) -> float:
    """JSON has no infinity: "never accept here" becomes a value above every score of that stage."""
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
    for p in sorted(cat.rglob("*.csv")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    out["catalogs"] = h.hexdigest()
    return out


def search(ctx: PlanningContext, progress: Progress | None = None,
           level: DeploymentLevel | None = None) -> tuple[SearchResult, DeploymentLevel]:
    """Run the threshold search; raise InfeasibleError when no threshold vector has a deployment.

    `level` replaces the deployment level (baselines restrict its candidates; `sim/baselines.py`).
    """
    level = level if level is not None else DeploymentLevel(ctx)
    scores = [ctx.train.scores[:, i] for i in range(len(ctx.stages) - 1)]
    result = chebyshev_search(scores, _quality_fn(ctx), level, ctx.q_min, ctx.z1, ctx.z2,
                              grid_points=PLANNER_GRID_POINTS, refine_points=PLANNER_REFINE_POINTS,
                              stable_rounds=PLANNER_STABLE_ROUNDS, max_rounds=PLANNER_MAX_ROUNDS,
                              tolerance=PLANNER_TOLERANCE_FRACTION, lower_bound=level.lower_bound,
                              joint_points=PLANNER_JOINT_POINTS,
                              progress=progress)
    if not math.isfinite(result.best.latency_s):
        first: DeployResult = result.evaluations[0].deployment
        raise InfeasibleError(f"no deployment exists for any thresholds: {first.reason or first.status}")
    return result, level


def make_plan(spec: CascadeSpec, progress: Progress | None = None, target_override: float | None = None,
              level_factory: Callable[[PlanningContext], DeploymentLevel] | None = None) -> Plan:
    """Plan the cascade: thresholds, per-stage deployment, predicted quality/latency/cost.

    `level_factory` builds the deployment level from the context (default `DeploymentLevel`); the baselines of
    `sim/baselines.py` pass restricted ones.
    """
    t0 = time.perf_counter()
    ctx = build_context(spec, target_override)
    if progress:
        progress(f"profile: {ctx.profile.n_prompts} prompts ({ctx.train.n_prompts} for planning), z1={ctx.z1:.4f} "
                 f"z2={ctx.z2:.4f}, target {ctx.q_min:.4f}; workload {ctx.workload.rate_rps:.2f} req/s")
    result, level = search(ctx, progress, level_factory(ctx) if level_factory is not None else None)
    return assemble_plan(ctx, result, level, time.perf_counter() - t0)


def _spread(points: list[Evaluation], best: Evaluation, k: int) -> list[Evaluation]:
    """At most k frontier points evenly spread over its length, always including the chosen one."""
    if len(points) <= k:
        chosen = points
    else:
        chosen = [points[int(round(j))] for j in np.linspace(0, len(points) - 1, k)]
    if all(e is not best for e in chosen) and math.isfinite(best.latency_s):
        chosen = sorted([*chosen, best], key=lambda e: e.latency_s)
    return chosen


def assemble_plan(ctx: PlanningContext, result: SearchResult, level: DeploymentLevel, wall_s: float) -> Plan:
    """The Plan of a search result's best evaluation (public so that baselines with their own choice of thresholds
    and deployment produce the same plan.json)."""
    spec = ctx.spec
    best: Evaluation = result.best
    dep: DeployResult = best.deployment
    theta = list(best.thresholds)
    out = ctx.train.evaluate(theta)
    stages: list[StagePlan] = []
    binding = {s["stage"]: s.get("reason", "") for s in dep.binding.get("stages", [])}
    for i, (st, c) in enumerate(zip(ctx.stages, dep.chosen)):
        reach = float(out.reach[i])
        rate = ctx.workload.rate_rps * reach
        lengths = level.lengths(i, reach, out.stage_output_tokens[i])
        est = (local_open_loop(st.model, rate / c.replicas, lengths) if spec.resources.local is not None
               else estimate(st, get_gpu(c.gpu_type), c.tp, c.pp, c.replicas, rate, lengths))
        stages.append(StagePlan(
            name=st.name, model=spec.stages[i].model,  # as the user wrote it: what the engine will load
            served_model_name=st.name, precision=st.precision, max_context=st.max_context,
            gpu_type=c.gpu_type, gpus=c.gpus, tp=c.tp, pp=c.pp, replicas=c.replicas, cloud=c.cloud,
            region=c.region, instance_type=c.instance_type, gpus_per_instance=c.gpus_per_instance,
            instances=c.instances, spot=c.spot, usd_per_hour=c.usd_per_hour,
            threshold=encode_threshold(ctx, i, theta[i]) if i < len(theta) else None,
            share=round(reach, 6), answered_share=round(float(out.answered[i]), 6), rate_rps=round(rate, 6),
            p95_latency_s=c.p95_latency_s,
            e2e_p50_s=est.e2e_p50_s if est else None, ttft_p50_s=est.ttft_p50_s if est else None,
            tpot_s=est.tpot_s if est else None, max_rate_rps_per_replica=est.max_rate_rps if est else None,
            utilization=est.utilization if est else None, binding=binding.get(i, "")))
    holdout_q = (ctx.profile.evaluate(theta, ctx.holdout_idx).quality if ctx.holdout_idx.size else None)
    lower = (ctx.train.quality_lower_bound(theta, spec.quality.confidence, PLANNER_BOOTSTRAP_SAMPLES, PLANNER_SEED)
             if spec.quality.confidence else None)
    predicted = Predicted(quality=out.quality, quality_holdout=holdout_q, quality_lower_bound=lower,
                          quality_target=ctx.q_min, quality_all_last=ctx.z1, quality_all_first=ctx.z2,
                          p95_latency_s=dep.latency_s, usd_per_hour=dep.usd_per_hour, gpus=dep.gpus)
    status = "optimal" if best.quality >= ctx.q_min - 1e-12 else "target_missed"
    solver = SolverInfo(status=status, wall_s=round(wall_s, 4), iterations=result.rounds,
                        deployment_solves=result.deployment_solves, objective_j=best.j, mu_s=result.mu_s,
                        stable_rounds=result.stable_rounds, milp_status=str(dep.status),
                        pool_relaxed=dep.pool_relaxed)
    frontier = []
    for ev in _spread(result.frontier(), best, PLANNER_FRONTIER_POINTS):
        d: DeployResult = ev.deployment
        frontier.append(FrontierPoint(
            thresholds=[encode_threshold(ctx, i, v) for i, v in enumerate(ev.thresholds)] + [None],
            quality=ev.quality, p95_latency_s=d.latency_s, usd_per_hour=d.usd_per_hour,
            last_stage_share=float(ctx.train.evaluate(list(ev.thresholds)).reach[-1]),
            last_stage_gpus=d.chosen[-1].gpus))
    res = spec.resources
    return Plan(name=spec.name, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                scorer=spec.quality.scorer, mode=res.mode,
                objective=spec.objective.latency, goal=spec.objective.goal, slo_p95_s=spec.objective.slo_p95_s,
                budget_usd_per_hour=res.cloud.budget_usd_per_hour if res.cloud is not None else None,
                workload_rate_rps=ctx.workload.rate_rps, stages=stages, predicted=predicted, solver=solver,
                inputs=_inputs(spec), frontier=frontier, launch=launch_settings(spec))
