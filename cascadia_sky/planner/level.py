"""The deployment level as a function of the reach vector: candidates, the MILP, and L for many vectors at once.

`DeploymentLevel` prices one reach vector (share of requests reaching each stage) with the deployment MILP
(cached per reach vector). For the exact threshold search it also prices every vector of a `ThresholdSpace`:
in pool mode exactly, with the pool DP vectorised over each stage's reach levels (`pool_primary`); in cloud mode
as a lower bound, each stage at its best individually feasible deployment (`relaxed_bound`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cascadia_sky.catalog import get_gpu, offers
from cascadia_sky.constants import DEPLOY_TAIL_FRACTION, PLANNER_LENGTH_SAMPLES, PLANNER_SEED
from cascadia_sky.perf import LengthDist
from cascadia_sky.rtt import rtt_table
from cascadia_sky.planner.candidates import Burst, StageTable, cloud_table, local_candidates, pool_table
from cascadia_sky.planner.deploy import Candidate, DeployProblem, DeployResult, DeployStatus, solve
from cascadia_sky.planner.exact import ThresholdSpace
from cascadia_sky.planner.latency import trace_burst
from cascadia_sky.planner.pooldp import combine, pool_cap, pool_plan
from cascadia_sky.planner.verify import evaluate, gpu_key, within

if TYPE_CHECKING:
    from cascadia_sky.planner.planner import PlanningContext

_CHUNK_CELLS = 4_000_000     # (vectors x GPU counts) per vectorised block of the 3-stage pool DP


def tail_weight(reach: np.ndarray, alpha: float) -> np.ndarray:
    """min(1, reach / alpha), as `verify.stage_weights` (1 for any reach > 0 when alpha is 0)."""
    reach = np.asarray(reach, dtype=float)
    if alpha <= 0:
        return (reach > 0).astype(float)
    return np.minimum(1.0, reach / alpha)


def _subsample(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return a if a.size <= n else rng.choice(a, size=n, replace=False)


def stage_lengths(ctx: PlanningContext, stage: int) -> LengthDist:
    """Request lengths at one stage (see the module docstring): independent of the thresholds."""
    rng = np.random.default_rng(PLANNER_SEED + stage)
    w = ctx.workload
    if w.output_tokens.size:
        idx = _subsample(np.arange(w.n), PLANNER_LENGTH_SAMPLES, rng)
        return LengthDist(w.input_tokens[idx], w.output_tokens[idx])
    outs = ctx.train.output_tokens[:, stage]
    n = min(PLANNER_LENGTH_SAMPLES, max(outs.size, 1) * 4)
    return LengthDist(rng.choice(w.input_tokens, size=n), rng.choice(outs, size=n))


class DeploymentLevel:
    """L(reach): per-stage candidates from fixed deployment tables and the MILP."""

    def __init__(self, ctx: PlanningContext) -> None:
        self.ctx = ctx
        self.res = ctx.spec.resources
        self._tables: dict[int, StageTable] = {}
        self._lengths: dict[int, LengthDist] = {}
        self._cands: dict[tuple[int, float], tuple[Candidate, ...]] = {}
        self._solved: dict[tuple[float, ...], DeployResult] = {}
        self._offers = []
        if self.res.cloud is not None:
            excluded = set(self.res.cloud.exclude_offers)   # offers SkyPilot found no capacity for (`up` re-plans)
            self._offers = [o for o in offers(clouds=[c.lower() for c in self.res.cloud.clouds], spot=self.res.cloud.spot)
                            if f"{o.cloud}/{o.region}/{o.instance_type}" not in excluded]
        self.quotas = ({get_gpu(g).name: q for g, q in self.res.cloud.quotas.items()}
                       if self.res.cloud is not None else {})
        self.caps: dict[str, float] = {}       # quota: auto: EC2 vCPU caps per region, family and purchase option
        self.quota_report: Any = None
        if self.res.cloud is not None and self.res.cloud.quota == "auto":
            self._read_aws_quotas()
        arrivals = ctx.workload.arrival_s
        self.burst = (trace_burst(arrivals, ctx.workload.rate_rps) if arrivals is not None and arrivals.size > 1
                      else Burst.steady())

    def _read_aws_quotas(self) -> None:
        """quota: auto: EC2 vCPU caps of the regions the AWS offers are in (read once per planning run)."""
        from cascadia_sky.cloud.aws_quota import read_caps

        regions = sorted({o.region for o in self._offers if o.cloud == "aws"})
        self.quota_report = read_caps(regions)
        self.caps = dict(self.quota_report.caps)

    def _offer_uses(self, offer: Any, instances: int) -> dict[str, float]:
        """What renting `instances` of an offer uses of the capped quotas (explicit GPU quotas win: none)."""
        from cascadia_sky.cloud.aws_quota import offer_uses

        uses = offer_uses(offer, instances, self.res.cloud.spot, self.quotas)
        return {k: v for k, v in uses.items() if k in self.caps}

    # --- per stage ---------------------------------------------------------------------------
    def keep(self, c: Candidate) -> bool:
        """Which deployments a strategy allows (all here; baselines restrict them)."""
        return True

    def lengths(self, stage: int, reach: float | None = None, outputs: np.ndarray | None = None) -> LengthDist:
        """Request lengths at a stage; they do not depend on the thresholds (see `stage_lengths`)."""
        if stage not in self._lengths:
            self._lengths[stage] = stage_lengths(self.ctx, stage)
        return self._lengths[stage]

    def table(self, stage: int) -> StageTable | None:
        """The stage's fixed deployments (None in local mode: one CPU engine)."""
        if self.res.local is not None:
            return None
        if stage not in self._tables:
            st = self.ctx.stages[stage]
            if self.res.pool is not None:
                t = pool_table(st, get_gpu(self.res.pool.gpu).name, self.res.pool.count, self.lengths(stage))
            else:
                t = cloud_table(st, self._offers, self.res.cloud.spot, self.lengths(stage), self.quotas,
                                offer_uses=self._offer_uses if self.caps else None, caps=self.caps)
            self._tables[stage] = StageTable(t.stage, [s for s in t.structures if self.keep(s.template)],
                                             t.off.gpu_type, self.burst)
        return self._tables[stage]

    def candidates(self, stage: int, reach: float, outputs: np.ndarray | None = None) -> tuple[Candidate, ...]:
        key = (stage, reach)
        if key not in self._cands:
            rate = self.ctx.workload.rate_rps * reach
            table = self.table(stage)
            if table is None:
                self._cands[key] = local_candidates(self.ctx.stages[stage], rate, self.lengths(stage),
                                                    self.res.local.max_replicas)
            else:
                self._cands[key] = tuple(c for c in table.candidates(rate) if math.isfinite(c.p95_latency_s))
        return self._cands[key]

    # --- one reach vector --------------------------------------------------------------------
    def problem_at(self, reach: tuple[float, ...]) -> DeployProblem:
        cands = tuple(self.candidates(i, reach[i]) for i in range(len(reach)))
        obj = self.ctx.spec.objective
        common: dict[str, Any] = dict(candidates=cands, shares=reach, objective=obj.latency, goal=obj.goal,
                                      slo_p95_s=obj.slo_p95_s)
        if self.res.pool is not None:
            return DeployProblem(mode="pool", pool_gpus=self.res.pool.count,
                                 pool_gpu_type=get_gpu(self.res.pool.gpu).name, **common)
        if self.res.local is not None:  # one candidate per stage; nothing shared, nothing priced
            return DeployProblem(mode="cloud", **common)
        return DeployProblem(mode="cloud", budget_usd_per_hour=self.res.cloud.budget_usd_per_hour,
                             caps={**{gpu_key(t): float(q) for t, q in self.quotas.items()}, **self.caps},
                             rtt_s=rtt_table(), same_region=self.res.cloud.single_region, **common)

    def reach_of(self, thresholds: tuple[float, ...]) -> tuple[float, ...]:
        out = self.ctx.train.evaluate(list(thresholds))
        return tuple(float(r) for r in out.reach)

    def problem(self, thresholds: tuple[float, ...]) -> DeployProblem:
        return self.problem_at(self.reach_of(thresholds))

    def solve_at(self, reach: tuple[float, ...]) -> DeployResult:
        if reach not in self._solved:
            self._solved[reach] = solve(self.problem_at(reach))
        return self._solved[reach]

    def dp_at(self, reach: tuple[float, ...]) -> DeployResult:
        """Pool mode: the pool DP's optimal deployment (no CBC run); for frontier points, not the chosen plan."""
        problem = self.problem_at(reach)
        found = pool_plan(problem)
        if found is None:
            return DeployResult(status=DeployStatus.INFEASIBLE, chosen=(), latency_s=math.inf, usd_per_hour=0.0,
                                gpus=0, wall_s=0.0, binding={"method": "pool-dp"})
        chosen, relaxed = found
        m = evaluate(problem, chosen)
        return DeployResult(status=DeployStatus.OPTIMAL, chosen=chosen, latency_s=m.latency_s,
                            usd_per_hour=m.usd_per_hour, gpus=m.gpus, wall_s=0.0, binding={"method": "pool-dp"},
                            pool_relaxed=relaxed, objective_value=m.latency_s)

    def primary_of(self, result: DeployResult) -> float:
        if not result.chosen:
            return math.inf
        return result.usd_per_hour if self.ctx.spec.objective.goal == "min-cost" else result.latency_s

    def __call__(self, thresholds: tuple[float, ...]) -> tuple[float, float, DeployResult]:
        result = self.solve_at(self.reach_of(thresholds))
        return self.primary_of(result), result.usd_per_hour, result

    # --- every vector of a threshold space -----------------------------------------------------
    def _levels(self, space: ThresholdSpace, stage: int) -> tuple[np.ndarray, np.ndarray]:
        """(distinct reach counts at a stage, index of each vector's count among them, grid-broadcast)."""
        if stage == 0:
            return np.array([space.n_prompts]), np.zeros(space.shape, dtype=np.int64)
        c = space.reach_counts[stage - 1]
        present = np.zeros(space.n_prompts + 1, dtype=bool)
        present[c.reshape(-1)] = True
        lookup = np.cumsum(present) - 1
        return np.flatnonzero(present), np.broadcast_to(lookup[c], space.shape)

    def _weighted_tables(self, space: ThresholdSpace, stage: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """(levels, cap + 1) tail-weighted lowest p95 per GPU count at each reach level; and the level index."""
        counts, inverse = self._levels(space, stage)
        table = self.table(stage)
        assert table is not None
        reach = counts / space.n_prompts
        lat = table.latency_matrix(self.ctx.workload.rate_rps * np.maximum(reach, 1e-300))
        out = np.full((counts.size, cap + 1), math.inf)
        for j, s in enumerate(table.structures):
            g = s.template.gpus
            if g <= cap:
                np.minimum(out[:, g], lat[:, j], out=out[:, g])
        w = tail_weight(reach, DEPLOY_TAIL_FRACTION)[:, None]
        out = np.where(np.isfinite(out), out * np.where(w > 0, w, 1.0), math.inf)
        zero = counts == 0
        out[zero] = math.inf
        out[zero, 0] = 0.0
        return out, inverse

    def pool_primary(self, space: ThresholdSpace, skip: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """(L of every vector, vectors priced), exactly as the pool MILP finds it (sum = N, else <= N; the SLO).

        `skip` marks vectors that need no price (dominated ones, `exact.dominated_in_row`); they get nan. They are
        skipped only when the last stage's table is monotone in its reach (checked here), the premise of
        dominance; otherwise every vector is priced.
        """
        probe = self.problem_at(space.reach(tuple(g.size - 1 for g in space.grids)))
        cap, n = pool_cap(probe), int(self.res.pool.count)
        objective, slo = probe.objective, probe.slo_p95_s
        op = np.maximum if objective == "max-stage" else np.add
        stages = len(self.ctx.stages)
        tables = [self._weighted_tables(space, i, cap) for i in range(stages)]
        start = np.full(cap + 1, math.inf)
        start[0] = 0.0
        prefix = combine(start, tables[0][0][0], objective)          # stage 0: one level (reach 1)
        if stages >= 2:
            prefix = combine(prefix, tables[1][0], objective)       # (levels of stage 1, cap + 1)
        if stages <= 2:
            best = prefix if stages == 2 else prefix[None, :]
            exact = best[:, n] if n <= cap else np.full(best.shape[0], math.inf)
            value = _choose(exact, best.min(axis=1), slo)
            out = value[tables[1][1]] if stages == 2 else value.reshape(())
            return out, int(np.size(out))
        e2, lev2 = tables[2]
        lev1 = np.broadcast_to(tables[1][1], space.shape)
        if skip is not None and not _monotone_levels(self._levels(space, 2)[0], e2):
            skip = None
        todo = np.flatnonzero(~skip.reshape(-1)) if skip is not None else np.arange(int(np.prod(space.shape)))
        out = np.full(int(np.prod(space.shape)), np.nan)
        nf = min(n, cap)
        prefix_le = np.minimum.accumulate(prefix, axis=1)
        f_all = np.arange(cap + 1)
        # L depends on a vector only through its (stage-1 level, stage-2 level) pair: price each pair once
        pairs, back = np.unique(lev1.reshape(-1)[todo] * (int(e2.shape[0]) + 1) + lev2.reshape(-1)[todo],
                                return_inverse=True)
        flat1, flat2 = pairs // (int(e2.shape[0]) + 1), pairs % (int(e2.shape[0]) + 1)
        value = np.empty(pairs.size)
        step = max(1, _CHUNK_CELLS // (cap + 1))
        for a0 in range(0, pairs.size, step):
            t = slice(a0, a0 + step)
            e = e2[flat2[t]]                                             # (k, cap + 1)
            if n <= cap:
                exact = op(prefix[flat1[t]][:, n - f_all[: nf + 1]], e[:, : nf + 1]).min(axis=1)
            else:
                exact = np.full(e.shape[0], math.inf)
            le = op(prefix_le[flat1[t]][:, cap - f_all], e).min(axis=1)  # min_{g <= cap - f} A[g], then + E[f]
            value[t] = _choose(exact, le, slo)
        out[todo] = value[back.reshape(-1)]
        return out.reshape(space.shape), int(todo.size)

    def relaxed_bound(self, space: ThresholdSpace) -> np.ndarray:
        """A lower bound on the primary objective of every vector: each stage alone at its best individually
        feasible deployment (ignoring what the stages share: budget, caps, pool)."""
        if self.table(0) is None:
            return np.zeros(space.shape)
        probe = self.problem_at(space.reach(tuple(g.size - 1 for g in space.grids)))
        alpha = probe.tail_fraction
        total = np.zeros(space.shape)
        for i in range(len(self.ctx.stages)):
            counts, inverse = self._levels(space, i)
            table = self.table(i)
            reach = counts / space.n_prompts
            lat = table.latency_matrix(self.ctx.workload.rate_rps * np.maximum(reach, 1e-300))
            fits = np.array([_fits_alone(probe, s.template) for s in table.structures], dtype=bool)
            w = tail_weight(reach, alpha)[:, None]
            weighted = np.where(np.isfinite(lat) & fits[None, :], lat * np.where(w > 0, w, 1.0), math.inf)
            if probe.goal == "min-cost":
                ok = np.isfinite(weighted)
                if probe.slo_p95_s is not None:
                    ok &= weighted <= probe.slo_p95_s * (1 + 1e-9)
                usd = np.array([s.template.usd_per_hour for s in table.structures])
                per_level = np.where(ok, usd[None, :], math.inf).min(axis=1, initial=math.inf)
            else:
                per_level = weighted.min(axis=1, initial=math.inf)
            per_level = np.where(counts == 0, 0.0, per_level)
            values = per_level[inverse]
            total = np.maximum(total, values) if (probe.objective == "max-stage" and probe.goal != "min-cost") \
                else total + values
        if probe.goal != "min-cost" and probe.slo_p95_s is not None:
            total = np.where(total <= probe.slo_p95_s * (1 + 1e-9), total, math.inf)
        return total


def _fits_alone(problem: DeployProblem, c: Candidate) -> bool:
    if problem.budget_usd_per_hour is not None and not within(c.usd_per_hour, problem.budget_usd_per_hour):
        return False
    cap = problem.caps.get(gpu_key(c.gpu_type))
    return cap is None or within(float(c.gpus), cap)


def _monotone_levels(counts: np.ndarray, table: np.ndarray) -> bool:
    """Whether a (levels, GPU counts) table never falls as a non-zero reach level rises (inf counts as the top)."""
    t = table[counts > 0]
    lo, hi = t[:-1], t[1:]
    with np.errstate(invalid="ignore"):
        ok = np.isinf(hi) | (hi >= lo) | (np.isfinite(lo) & (hi >= lo - 1e-12 * np.abs(lo)))
    return bool(ok.all())


def _choose(exact: np.ndarray, le: np.ndarray, slo: float | None) -> np.ndarray:
    """sum = N when it has a plan meeting the SLO, else the best plan on <= N GPUs (as `pooldp.pick`)."""
    def ok(v: np.ndarray) -> np.ndarray:
        return np.isfinite(v) if slo is None else v <= slo + 1e-9 * max(1.0, slo)
    return np.where(ok(exact), exact, np.where(ok(le), le, math.inf))
