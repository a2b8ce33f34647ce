"""Re-plan: the same cascade, quality profile and resources, for the workload that is actually arriving.

The spec is copied with its workload replaced by the observed one (rate, and empirical length distributions from
the router's quantiles; output lengths stay the profile's when the spec left them to it) and planned again with
the real planner. Burstiness: /stats windows show a minute's mean rate, not the 10-second bursts the planner sizes
for, so the observed workload is taken to be as bursty, relative to its mean, as the cascade file's trace (what the
first plan assumed: re-planning an unchanged workload gives the same plan); a rate workload is Poisson, as before.
When the observed per-stage reach differs from the one the profile gives at the current
thresholds (a shift of the score distribution), the profile is re-weighted to reproduce it first (`reach.py`), so
each stage is sized for the load that reaches it; the current plan is judged on the same re-weighted profile. The new plan is worth applying only when its objective beats the *current* plan re-evaluated on
the same observed workload (same thresholds and deployment, latency from the performance model) by `min_gain`:
otherwise noise alone would relaunch stages. A plan sized for less load is made for the window's peak rate times
`down_headroom`, so the replicas it keeps carry the load of those it removes (Dynamo #9294's N/(N-1) check).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cascadia_sky.planner.plan import Plan
from cascadia_sky.quality import QualityProfile
from cascadia_sky.reschedule.observe import Reference, empirical
from cascadia_sky.reschedule.reach import needs_reweighting, reweight
from cascadia_sky.spec import CascadeSpec

ProfileTransform = Callable[[QualityProfile], QualityProfile]


_MIN_RATE_RPS = 1e-3   # a spec's rate must be positive; an idle window plans for one request in ~17 minutes


@dataclass(frozen=True)
class Replan:
    """A candidate plan and why it is (or is not) worth applying."""

    plan: Plan                    # the new plan (launch section copied from the current plan)
    planned_rate_rps: float       # the rate it was made for (peak x headroom when shrinking)
    current_objective: float      # the current plan on the observed workload (inf: it cannot carry it)
    new_objective: float
    worth_it: bool
    reason: str
    wall_s: float
    reach: tuple[float, ...] = ()   # the per-stage reach planned for (observed), empty when the profile's own
    reference: Reference | None = None   # what drift is measured against once this plan serves (see replan())
    warm: bool = False                   # latency curves reused (same lengths, or an earlier length distribution)


def reach_transform(current: Plan, spec: CascadeSpec, target: Reference) -> ProfileTransform | None:
    """The profile re-weighting that makes the current thresholds give the observed reach; None when the observed
    reach is what the profile itself gives at those thresholds (within RESCHEDULE_REACH_TOLERANCE_POINTS and the
    sampling noise of both counts, `needs_reweighting`). Compared with the profile, not with the plan's shares: a
    plan made on a re-weighted profile predicts the shifted reach, and the shift must stay in later re-plans."""
    if len(target.reach) != len(current.stages):
        return None
    thresholds = tuple(float(s.threshold) for s in current.stages[:-1] if s.threshold is not None)
    from cascadia_sky.planner.planner import spec_profile

    profile = spec_profile(spec)
    if len(thresholds) != profile.n_stages - 1:
        return None
    own = profile.evaluate(list(thresholds)).reach
    if not needs_reweighting(own, target.reach, target.requests, profile.n_prompts):
        return None
    reach = tuple(target.reach)

    def transform(part: QualityProfile) -> QualityProfile:
        return reweight(part, thresholds, reach)[0]

    transform.profile_reach = tuple(float(x) for x in own)   # type: ignore[attr-defined]  (for the reason)
    return transform


def observed_spec(spec: CascadeSpec, target: Reference, rate_rps: float) -> CascadeSpec:
    """A copy of the spec whose workload is the observed one."""
    w = spec.workload
    ins = ({"dist": "empirical", "values": empirical(target.input_q)} if target.input_q else None)
    outs = ({"dist": "empirical", "values": empirical(target.output_q)}
            if target.output_q and (w.output_tokens is not None or w.trace is not None) else None)
    if ins is None:  # no lengths observed: keep the spec's (a trace's lengths as an empirical distribution)
        if w.trace is not None:
            from cascadia_sky.planner.planner import workload_from_spec

            wl = workload_from_spec(spec)
            ins = {"dist": "empirical", "values": [int(x) for x in wl.input_tokens]}
            outs = outs or {"dist": "empirical", "values": [int(x) for x in wl.output_tokens]}
        else:
            ins = w.input_tokens.model_dump() if w.input_tokens is not None else None
            outs = outs or (w.output_tokens.model_dump() if w.output_tokens is not None else None)
    workload = {"rate_rps": rate_rps, "input_tokens": ins}
    if outs is not None:
        workload["output_tokens"] = outs
    data = spec.model_dump(mode="json", exclude_none=True)
    data["workload"] = workload
    new = CascadeSpec.model_validate(data)
    new._source = spec.source  # relative paths (the profile) resolve as in the original
    return new


_BURSTS: dict[str, Any] = {}   # trace path -> the planner's burst shape of that trace (rate-independent)


def spec_burst(spec: CascadeSpec) -> Any:
    """The burst shape of the spec's trace (window rates relative to the mean), None for a rate workload."""
    if spec.workload.trace is None:
        return None
    key = str(spec.resolve(spec.workload.trace))
    if key not in _BURSTS:
        from cascadia_sky.planner.latency import trace_burst
        from cascadia_sky.planner.planner import workload_from_spec

        w = workload_from_spec(spec)
        _BURSTS[key] = (trace_burst(w.arrival_s, w.rate_rps) if w.arrival_s is not None and w.arrival_s.size > 1
                        else None)
    return _BURSTS[key]


def current_objective(plan: Plan, spec: CascadeSpec, profile_transform: ProfileTransform | None = None,
                      burst: Any = None, warm_key: str | None = None) -> tuple[float, float]:
    """(J, L) of the current plan's thresholds and deployment on `spec`'s workload (the observed one), on the
    profile as `profile_transform` re-weights it (the observed reach). `warm_key`: the warm cache holds the latency
    curves of this workload's lengths (the re-plan just made them), so they are not computed again."""
    import numpy as np

    from cascadia_sky.catalog import get_gpu
    from cascadia_sky.perf.local import local_open_loop
    from cascadia_sky.planner.candidates import estimate
    from cascadia_sky.planner.deploy import Candidate, DeployProblem
    from cascadia_sky.planner.planner import DeploymentLevel, build_context
    from cascadia_sky.planner.route import objective_j
    from cascadia_sky.planner.verify import evaluate

    ctx = build_context(spec, profile_transform=profile_transform)
    level = DeploymentLevel(ctx)
    if burst is not None:
        level.burst = burst
    if warm_key is not None:
        _seed(level, warm_key)
    theta = tuple(float(s.threshold) for s in plan.stages[:-1] if s.threshold is not None)
    out = ctx.train.evaluate(list(theta))
    chosen = []
    for i, (st, sp) in enumerate(zip(ctx.stages, plan.stages)):
        reach = float(out.reach[i])
        rate = ctx.workload.rate_rps * reach
        # The planner's own figure for this deployment at this rate (its latency model, bursts included), so the
        # current plan and a re-plan are judged alike; a shape the planner no longer lists is estimated directly.
        same = [c.p95_latency_s for c in level.candidates(i, reach)
                if (c.gpu_type, c.tp, c.pp, c.replicas) == (sp.gpu_type, sp.tp, sp.pp, sp.replicas)]
        if sp.replicas == 0:
            p95 = 0.0
        elif same:
            p95 = min(same)
        else:
            lengths = level.lengths(i)
            est = (local_open_loop(st.model, rate / sp.replicas, lengths) if spec.resources.local is not None
                   else estimate(st, get_gpu(sp.gpu_type), sp.tp, sp.pp, sp.replicas, rate, lengths))
            p95 = est.e2e_p95_s if est is not None and est.stable else math.inf
        chosen.append(Candidate(stage=i, gpu_type=sp.gpu_type, tp=sp.tp, pp=sp.pp, replicas=sp.replicas,
                                gpus=sp.gpus, p95_latency_s=p95, usd_per_hour=sp.usd_per_hour, key=f"current{i}"))
    obj = spec.objective
    problem = DeployProblem(candidates=tuple((c,) for c in chosen), shares=tuple(float(r) for r in out.reach),
                            mode="cloud", objective=obj.latency, goal=obj.goal, slo_p95_s=obj.slo_p95_s)
    latency = evaluate(problem, chosen).latency_s   # only the current deployment is estimated, no candidates
    quality = float(np.asarray(out.quality))
    return objective_j(latency, quality, ctx.q_min, ctx.z1, ctx.z2, plan.solver.mu_s), latency


# --- warm start ---------------------------------------------------------------------------------------------
# Most of a plan's time goes into the performance model's latency curves (per stage and replica shape, for the
# stage's request lengths): the deployment level's per-stage tables, which do not depend on the rate. When only the
# rate (or the reach) drifted, the lengths are those the current plan was made for, so the tables of that plan are
# reused: the re-plan is the threshold search and the MILPs alone. The cache lives in the process (the watcher):
# `warm_up` fills it once at start, each re-plan refreshes it.
# A workload often comes back (day and night, one client's traffic and another's): the curves of the last
# WARM_LENGTH_SETS length distributions are kept, each under the median input and output lengths it was made for,
# and a re-plan whose observed medians are within half the length band of one of them reuses its curves (the
# same approximation as a rate-only re-plan, which keeps curves for medians within the whole band).

_WARM: dict[str, tuple[dict, dict]] = {}   # spec identity -> (lengths per stage, deployment tables per stage)
WARM_LENGTH_SETS = 8
_SETS: dict[str, list[tuple[float | None, float | None, tuple[dict, dict]]]] = {}   # identity -> (in, out, entry)


def _remember(key: str, input_p50: float | None, output_p50: float | None) -> None:
    """File the warm entry just made under the medians of the workload it was made for."""
    if input_p50 is None or key not in _WARM:
        return
    sets = [e for e in _SETS.get(key, []) if (e[0], e[1]) != (input_p50, output_p50)]
    _SETS[key] = [*sets, (input_p50, output_p50, _WARM[key])][-WARM_LENGTH_SETS:]


def _recall(key: str, input_p50: float | None, output_p50: float | None, band: float) -> bool:
    """Make the kept curves of the nearest earlier length distribution (medians within `band`) the warm entry."""
    if input_p50 is None:
        return False
    tol = math.log1p(band)

    def off(a: float | None, b: float | None) -> float:
        if a is None or b is None:
            return 0.0 if a is None and b is None else math.inf
        return abs(math.log(max(a, 1.0) / max(b, 1.0)))

    near = [(max(off(i, input_p50), off(o, output_p50)), e) for i, o, e in _SETS.get(key, [])]
    near = [(d, e) for d, e in near if d <= tol]
    if not near:
        return False
    _WARM[key] = min(near, key=lambda x: x[0])[1]
    return True


def _identity(spec: CascadeSpec) -> str:
    import json

    data = spec.model_dump(mode="json", exclude={"workload", "reschedule"})
    return json.dumps([data, str(spec.source)], sort_keys=True)


def _seed(level: Any, key: str) -> None:
    """The warm cache's lengths and latency curves into a deployment level (its own burst shape kept)."""
    if key not in _WARM:
        return
    from cascadia_sky.planner.candidates import StageTable

    lengths, tables = _WARM[key]
    level._lengths.update(lengths)
    level._tables.update({k: StageTable(t.stage, t.structures, t.off.gpu_type, level.burst)
                          for k, t in tables.items()})


def _plan(spec: CascadeSpec, key: str, reuse: bool, transform: ProfileTransform | None = None,
          burst: Any = None) -> Plan:
    """make_plan, with the deployment level's lengths and curves taken from (and given back to) the warm cache,
    and the deployment level's burst shape `burst` when given."""
    from cascadia_sky.planner.planner import DeploymentLevel, make_plan

    made: list[DeploymentLevel] = []

    def factory(ctx):  # type: ignore[no-untyped-def]
        level = DeploymentLevel(ctx)
        if burst is not None:
            level.burst = burst
        if reuse:
            _seed(level, key)
        made.append(level)
        return level

    plan = make_plan(spec, level_factory=factory, profile_transform=transform)
    _WARM[key] = (dict(made[0]._lengths), dict(made[0]._tables))
    return plan


def forget() -> None:
    """Drop every kept latency curve (a fresh watcher's state; benchmarks measure cold re-plans with it)."""
    _WARM.clear()
    _SETS.clear()


def warm_up(spec: CascadeSpec) -> float:
    """Plan the spec once to fill the warm cache (what `watch` does at start); returns the seconds it took."""
    import numpy as np

    from cascadia_sky.planner.planner import workload_from_spec

    t0 = time.perf_counter()
    key = _identity(spec)
    _plan(spec, key, reuse=False)
    w = workload_from_spec(spec)
    _remember(key, float(np.median(w.input_tokens)) if w.input_tokens.size else None,
              float(np.median(w.output_tokens)) if w.output_tokens.size else None)
    return time.perf_counter() - t0


def _shrinks(current: Plan, new: Plan) -> bool:
    return any(n.replicas < c.replicas or n.gpus < c.gpus for c, n in zip(current.stages, new.stages))


def replan(current: Plan, spec: CascadeSpec, target: Reference, peak_rate_rps: float | None, *,
           min_gain: float, down_headroom: float, less_load: bool = False, same_lengths: bool = False) -> Replan:
    """Plan for the observed workload and judge the result against the current plan on that workload.

    `less_load` (the detector saw the load fall): plan for peak x down_headroom at once; otherwise plan for the
    peak, and again for peak x down_headroom only when that plan would still remove replicas. `same_lengths` (no
    length drift): reuse the warm cache's lengths and latency curves (see above)."""
    from cascadia_sky.planner.route import objective_j

    t0 = time.perf_counter()
    key = _identity(spec)
    peak = max(peak_rate_rps or target.rate_rps, target.rate_rps, _MIN_RATE_RPS)
    rate = peak * down_headroom if less_load else peak
    transform = reach_transform(current, spec, target)
    # without output lengths in the workload a stage's lengths come from the profile, which the re-weighting changes
    lengths_fixed = transform is None or spec.workload.output_tokens is not None or spec.workload.trace is not None
    recalled = (not same_lengths and lengths_fixed
                and _recall(key, target.input_p50, target.output_p50, spec.reschedule.length_band / 2))
    reuse = (same_lengths or recalled) and lengths_fixed
    burst = spec_burst(spec)
    new = _plan(observed_spec(spec, target, rate), key, reuse, transform, burst)
    if not reuse:
        _remember(key, target.input_p50, target.output_p50)
    if not less_load and _shrinks(current, new) and down_headroom > 1:
        rate = peak * down_headroom   # the smaller deployment must carry the removed replicas' load, with margin
        # same lengths as the plan just made (only the rate differs): its curves, now in the warm cache
        new = _plan(observed_spec(spec, target, rate), key, True, transform, burst)
    new = new.model_copy(update={"launch": current.launch})
    cur_j, cur_l = current_objective(current, observed_spec(spec, target, rate), transform, burst, key)
    p = new.predicted
    new_j = objective_j(p.p95_latency_s, p.quality, p.quality_target, p.quality_all_last, p.quality_all_first,
                        current.solver.mu_s)
    same = _deployment_key(new) == _deployment_key(current)
    if same:
        worth, why = False, "the re-plan gives the deployment that runs"
    elif spec.objective.goal == "min-cost":
        if current.slo_p95_s is not None and cur_l > current.slo_p95_s and rate > peak:
            # judged at peak x headroom (the sizing rate of a smaller plan); the current plan only has to carry
            # the load observed
            cur_l = current_objective(current, observed_spec(spec, target, peak), transform, burst, key)[1]
        feasible = current.slo_p95_s is None or cur_l <= current.slo_p95_s
        worth = (not feasible) or new.predicted.usd_per_hour < current.predicted.usd_per_hour * (1 - min_gain)
        why = (f"current plan misses the SLO on the observed load (p95 {cur_l:.3g} s)" if not feasible else
               f"$/h {current.predicted.usd_per_hour:.4g} -> {new.predicted.usd_per_hour:.4g}")
    elif _shrinks(current, new) and not _grows(current, new):
        # less hardware: worth it when the smaller deployment is not worse than the current one by more than
        # min_gain on the (headroom) load it was sized for
        worth = math.isfinite(new_j) and new_j <= cur_j * (1 + min_gain)
        why = f"fewer replicas; J {cur_j:.4g} -> {new_j:.4g} at {rate:.3g} req/s (peak x {down_headroom:g})"
    else:
        worth = not math.isfinite(cur_j) or new_j < cur_j * (1 - min_gain)
        why = f"J {cur_j:.4g} -> {new_j:.4g} on the observed {target.rate_rps:.3g} req/s"
    if not worth and not same:
        why += f" (gain below {min_gain:.0%}: not applied)" if "fewer" not in why else " (not applied)"
    if transform is not None:
        why += ("; planned for the observed reach " + "/".join(f"{r:.2f}" for r in target.reach)
                + " (the profile gives " + "/".join(f"{r:.2f}" for r in transform.profile_reach)  # type: ignore
                + f" at these thresholds; {target.requests} requests)")
    # Once the new plan serves, drift is measured against the observed rate and lengths, and against the reach the
    # new thresholds give on that workload (the new plan's shares, on the re-weighted profile when there is one):
    # the observed reach was counted with the old thresholds and would read as a reach drift right away.
    reference = dataclasses.replace(target, reach=tuple(float(st.share) for st in new.stages)) if worth else target
    return Replan(new, rate, cur_j, new_j, worth, why, time.perf_counter() - t0,
                  tuple(target.reach) if transform is not None else (), reference, reuse)


def _grows(current: Plan, new: Plan) -> bool:
    return any(n.replicas > c.replicas or n.gpus > c.gpus for c, n in zip(current.stages, new.stages))


def _deployment_key(plan: Plan) -> tuple:
    return tuple((s.name, s.gpu_type, s.tp, s.pp, s.replicas, s.instance_type, s.threshold) for s in plan.stages)


__all__ = ["Replan", "current_objective", "forget", "observed_spec", "reach_transform", "replan", "warm_up"]
