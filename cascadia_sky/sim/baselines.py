"""Planner strategies the Cascadia paper compares with, in one registry; each returns a `Plan` (plan.json shape).

The planner and the simulator share them: `make_baseline(name, spec)` plans, `cascadia simulate --baselines` and
`benchmarks/paper_comparison.py` replay every plan on the same requests. They reuse the planner's pieces (context,
deployment level, candidates from the performance model, MILP, plan assembly) and differ only where the strategy
differs:

- `cascadia`: our planner, end-to-end objective (a request accepted at stage k pays stages 1..k).
- `cascadia-max-stage`: our planner with the paper's objective (the slowest single stage).
- `single`: the last stage's model alone on all GPUs, best parallelism and replica count for the whole workload
  (the paper's stand-alone LLM). If no deployment sustains the rate, the one with the most capacity.
- `cascadeserve`: CascadeServe-like. Thresholds: the cheapest vector that meets the quality target, cost =
  expected compute per request (sum over stages of reach x active parameters), chosen on a grid of score quantiles
  with no regard to latency; GPUs shared among stages in proportion to their compute demand (reach x active
  parameters: no length-awareness), in whole replicas, at least one each; one fixed parallelism per model (the
  smallest TP that fits, PP 1).
- `uniform-gpus` (ablation): our threshold search and parallelism choice, but every stage gets at most an equal
  share of the pool (N / stages, the remainder to the larger models).
- `fixed-parallelism` (ablation): our threshold search and GPU allocation, each model with one fixed parallelism
  (the smallest TP that fits, PP 1); only the replica count is free.

`cascadeserve` and `uniform-gpus` share a fixed pool, so they need `resources.pool`.
"""

from __future__ import annotations

import dataclasses

import difflib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cascadia_sky.catalog import get_gpu
from cascadia_sky.constants import (
    CASCADESERVE_GRID_POINTS,
    CASCADESERVE_MAX_VECTORS,
    PLANNER_BOOTSTRAP_SAMPLES,
    PLANNER_SEED,
)
from cascadia_sky.errors import InfeasibleError, UserInputError
from cascadia_sky.perf import open_loop
from cascadia_sky.perf.step import Deployment
from cascadia_sky.planner.candidates import StageSetup, parallel_shapes
from cascadia_sky.planner.deploy import Candidate, DeployResult, DeployStatus
from cascadia_sky.planner.plan import Plan
from cascadia_sky.planner.planner import (
    DeploymentLevel,
    PlanningContext,
    Progress,
    assemble_plan,
    build_context,
    make_plan,
)
from cascadia_sky.planner.route import (
    Evaluation,
    SearchResult,
    objective_j,
    threshold_grid,
)
from cascadia_sky.planner.verify import evaluate
from cascadia_sky.spec import CascadeSpec

Strategy = Callable[[CascadeSpec, "Progress | None"], Plan]


@dataclass(frozen=True)
class Baseline:
    """A named planner strategy."""

    name: str
    description: str
    build: Strategy
    needs_pool: bool = False


BASELINES: dict[str, Baseline] = {}


def _register(name: str, description: str, needs_pool: bool = False) -> Callable[[Strategy], Strategy]:
    def wrap(fn: Strategy) -> Strategy:
        BASELINES[name] = Baseline(name, description, fn, needs_pool)
        return fn
    return wrap


def baseline_names() -> list[str]:
    """Registered strategies, in the order the comparison reports them."""
    return list(BASELINES)


def make_baseline(name: str, spec: CascadeSpec, progress: Progress | None = None) -> Plan:
    """Plan `spec` with the strategy `name`."""
    if name not in BASELINES:
        close = difflib.get_close_matches(name, list(BASELINES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserInputError(f"unknown baseline '{name}'{hint}; choose one of {', '.join(BASELINES)}")
    base = BASELINES[name]
    if base.needs_pool and spec.resources.pool is None:
        raise UserInputError(f"baseline '{name}' shares a fixed pool of GPUs; it needs resources.pool in the spec")
    return base.build(spec, progress)


# --- helpers -------------------------------------------------------------------------------------

class RestrictedLevel(DeploymentLevel):
    """The planner's deployment level with only the candidates a strategy allows."""

    def __init__(self, ctx: PlanningContext, keep: Callable[[Candidate], bool]) -> None:
        super().__init__(ctx)
        self._keep = keep

    def keep(self, c: Candidate) -> bool:
        return self._keep(c)


def fixed_shape(stage: StageSetup, gpu_type: str, max_gpus: int,
                servable: set[tuple[int, int]] | None = None) -> tuple[int, int]:
    """The smallest TP (PP 1 when possible) with which the stage's model fits one full context, among the shapes
    that can serve the stage's request lengths at all (`servable`: whose KV cache holds a mean request; long
    reasoning answers rule out the smallest shapes of a 70B model) when given."""
    shapes = parallel_shapes(stage, get_gpu(gpu_type), max_gpus)
    if servable is not None:
        shapes = [s for s in shapes if s in servable] or shapes
    if not shapes:
        raise InfeasibleError(f"{stage.model.name} fits no TP x PP on {gpu_type} within {max_gpus} GPUs")
    return min(shapes, key=lambda s: (s[1] > 1, s[0] * s[1], s[1]))


def servable_shapes(level: DeploymentLevel, stage: int, gpu_type: str) -> set[tuple[int, int]] | None:
    """(TP, PP) of the stage's deployments on `gpu_type` that sustain some rate (None in local mode)."""
    table = level.table(stage)
    if table is None:
        return None
    return {(s.template.tp, s.template.pp) for s in table.structures
            if s.template.gpu_type == gpu_type and s.curve.max_rate_rps > 0}


def _pool(ctx: PlanningContext) -> tuple[str, int]:
    pool = ctx.spec.resources.pool
    assert pool is not None
    return get_gpu(pool.gpu).name, pool.count


def _fixed_plan(ctx: PlanningContext, level: DeploymentLevel, thresholds: tuple[float, ...],
                chosen: tuple[Candidate, ...], method: str, t0: float) -> Plan:
    """A plan.json for thresholds and candidates that a strategy chose itself (no search, no MILP)."""
    problem = level.problem(thresholds)
    metrics = evaluate(problem, chosen)
    dep = DeployResult(status=DeployStatus.FEASIBLE, chosen=chosen, latency_s=metrics.latency_s,
                       usd_per_hour=metrics.usd_per_hour, gpus=metrics.gpus, wall_s=0.0,
                       binding={"method": method})
    quality = ctx.train.evaluate(list(thresholds)).quality
    j = objective_j(metrics.latency_s, quality, ctx.q_min, ctx.z1, ctx.z2, 0.0)
    best = Evaluation(thresholds, quality, metrics.latency_s, metrics.usd_per_hour, j, dep)
    return assemble_plan(ctx, SearchResult(best=best, evaluations=[best]), level, time.perf_counter() - t0)


def _capacity_rps(ctx: PlanningContext, level: DeploymentLevel, stage: int, reach: float, outputs: np.ndarray,
                  c: Candidate) -> float:
    """Highest sustainable rate of a candidate (replicas x one replica's capacity)."""
    st = ctx.stages[stage]
    dep = Deployment(model=st.model, gpu=get_gpu(c.gpu_type), tp=c.tp, pp=c.pp, precision=st.precision)
    return c.replicas * open_loop(dep, 0.0, level.lengths(stage, reach, outputs)).max_rate_rps


# --- strategies ----------------------------------------------------------------------------------

@_register("cascadia", "our planner, end-to-end objective (the slowest path a real share of requests takes)")
def _cascadia(spec: CascadeSpec, progress: Progress | None = None) -> Plan:
    objective = spec.objective.model_copy(update={"latency": "e2e"})
    return make_plan(spec.model_copy(update={"objective": objective}), progress)


@_register("cascadia-max-stage", "our planner with the paper's objective (the slowest single stage)")
def _cascadia_max_stage(spec: CascadeSpec, progress: Progress | None = None) -> Plan:
    objective = spec.objective.model_copy(update={"latency": "max-stage"})
    return make_plan(spec.model_copy(update={"objective": objective}), progress)


@_register("single", "the last stage's model alone on all GPUs, best parallelism (the paper's stand-alone LLM)")
def _single(spec: CascadeSpec, progress: Progress | None = None) -> Plan:
    alone = spec.model_copy(update={"stages": spec.stages[-1:]})
    try:
        return make_plan(alone, progress)
    except InfeasibleError:
        pass
    # no deployment sustains the rate: the one with the most capacity (the simulator shows the queue it builds)
    t0 = time.perf_counter()
    ctx = build_context(alone)
    level = DeploymentLevel(ctx)
    outputs = ctx.train.output_tokens[:, 0]
    cands = level.candidates(0, 1.0, outputs)
    limit = _pool(ctx)[1] if spec.resources.pool is not None else math.inf
    fits = [c for c in cands if c.gpus <= limit]
    if not fits:
        raise InfeasibleError(f"{ctx.stages[0].model.name} fits no deployment in the pool; add GPUs")
    best = max(fits, key=lambda c: (_capacity_rps(ctx, level, 0, 1.0, outputs, c), -c.usd_per_hour))
    return _fixed_plan(ctx, level, (), (best,), "max-capacity (no deployment sustains the rate)", t0)


@_register("cascadeserve", "cheapest thresholds meeting the target; GPUs in proportion to compute demand; "
                           "smallest TP that fits", needs_pool=True)
def _cascadeserve(spec: CascadeSpec, progress: Progress | None = None) -> Plan:
    t0 = time.perf_counter()
    ctx = build_context(spec)
    level = DeploymentLevel(ctx)
    thresholds = cheapest_thresholds(ctx)
    out = ctx.train.evaluate(list(thresholds))
    if progress:
        progress(f"cascadeserve: thresholds {thresholds}, reach {np.round(out.reach, 3).tolist()}")
    gpu_type, pool = _pool(ctx)
    shapes = [fixed_shape(st, gpu_type, pool, servable_shapes(level, st.index, gpu_type)) for st in ctx.stages]
    demand = [float(out.reach[i]) * st.model.params_active() for i, st in enumerate(ctx.stages)]
    replicas = proportional_replicas(demand, [tp * pp for tp, pp in shapes], pool)
    chosen = []
    for i, ((tp, pp), dp) in enumerate(zip(shapes, replicas)):
        cands = level.candidates(i, float(out.reach[i]), out.stage_output_tokens[i])
        if out.reach[i] == 0:   # nothing reaches the stage: it gets no replicas
            chosen.append(cands[0])
            continue
        pick = next((c for c in cands if (c.tp, c.pp, c.replicas) == (tp, pp, dp)), None)
        if pick is None:   # the rule's deployment cannot carry the stage's rate: keep it (unbounded p95); the
            table = level.table(i)   # simulator shows the queue it builds
            assert table is not None
            pick = next(dataclasses.replace(s.template, p95_latency_s=math.inf) for s in table.structures
                        if (s.template.tp, s.template.pp, s.template.replicas) == (tp, pp, dp))
        chosen.append(pick)
    return _fixed_plan(ctx, level, thresholds, tuple(chosen), "cascadeserve (proportional to compute)", t0)


def cheapest_thresholds(ctx: PlanningContext) -> tuple[float, ...]:
    """Least expected compute per request (sum of reach x active parameters) among the threshold vectors on a grid
    of score quantiles whose quality meets the target; everything to the last stage when none does."""
    n = len(ctx.stages) - 1
    if n == 0:
        return ()
    points = min(CASCADESERVE_GRID_POINTS, max(2, int(CASCADESERVE_MAX_VECTORS ** (1.0 / n)) - 1))
    grids = [threshold_grid(ctx.train.scores[:, i], points) for i in range(n)]
    vectors = np.array(list(itertools.product(*grids)), dtype=float)
    batch = ctx.train.evaluate_many(vectors)
    params = np.array([st.model.params_active() for st in ctx.stages])
    cost = batch.reach @ params
    conf = ctx.spec.quality.confidence
    for k in np.argsort(cost, kind="stable"):
        theta = tuple(float(v) for v in vectors[k])
        if batch.quality[k] < ctx.q_min - 1e-12:
            continue
        if conf is not None and ctx.train.quality_lower_bound(list(theta), conf, PLANNER_BOOTSTRAP_SAMPLES,
                                                              PLANNER_SEED) < ctx.q_min - 1e-12:
            continue
        return theta
    return tuple([math.inf] * n)


def proportional_replicas(demand: list[float], gpus_per_replica: list[int], pool: int) -> list[int]:
    """Whole replicas per stage, at least one each, GPUs in proportion to demand: each further replica goes to the
    stage whose demand per GPU (counting the replica) is highest, while it fits in the pool (D'Hondt)."""
    replicas = [1] * len(demand)
    used = sum(gpus_per_replica)
    if used > pool:
        raise InfeasibleError(f"one replica per stage needs {used} GPUs, the pool has {pool}; add GPUs")
    while True:
        room = [i for i, g in enumerate(gpus_per_replica) if used + g <= pool]
        if not room:
            return replicas
        i = max(room, key=lambda k: (demand[k] / ((replicas[k] + 1) * gpus_per_replica[k]), k))
        replicas[i] += 1
        used += gpus_per_replica[i]


@_register("uniform-gpus", "ablation: our search, but an equal share of the pool per stage", needs_pool=True)
def _uniform(spec: CascadeSpec, progress: Progress | None = None) -> Plan:
    ctx0 = build_context(spec)
    pool = _pool(ctx0)[1]
    caps = equal_shares(pool, len(spec.stages))
    return make_plan(spec, progress, level_factory=lambda ctx: RestrictedLevel(ctx, lambda c: c.gpus <= caps[c.stage]))


def equal_shares(pool: int, stages: int) -> list[int]:
    """pool // stages GPUs per stage, one more for the last (largest) stages while the remainder lasts."""
    base, extra = divmod(pool, stages)
    return [base + (1 if i >= stages - extra else 0) for i in range(stages)]


@_register("fixed-parallelism", "ablation: our search and allocation, one fixed TP (smallest that fits) per model")
def _fixed_parallelism(spec: CascadeSpec, progress: Progress | None = None) -> Plan:
    ctx0 = build_context(spec)
    level0 = DeploymentLevel(ctx0)
    if spec.resources.pool is not None:
        gpu_type, pool = _pool(ctx0)
        shapes = {(st.index, gpu_type, *fixed_shape(st, gpu_type, pool, servable_shapes(level0, st.index, gpu_type)))
                  for st in ctx0.stages}
    else:   # per allowed GPU type, its own smallest shape
        shapes = {(st.index, get_gpu(g).name,
                   *fixed_shape(st, g, 1 << 20, servable_shapes(level0, st.index, get_gpu(g).name)))
                  for st in ctx0.stages for g in st.gpu_types}
    return make_plan(spec, progress, level_factory=lambda ctx: RestrictedLevel(
        ctx, lambda c: (c.stage, c.gpu_type, c.tp, c.pp) in shapes))
