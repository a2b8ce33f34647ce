"""Re-planning with the real planner: the observed-workload spec, the judgement against the current plan, the
warm start (rate-only drift reuses the current plan's latency curves), and the observed per-stage reach (the profile
re-weighted so the current thresholds reproduce it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cascadia_sky.constants import RESCHEDULE_REACH_MAX_GROWTH
from cascadia_sky.planner.planner import build_context, make_plan, workload_from_spec
from cascadia_sky.reschedule.observe import (
    LENGTH_QUANTILES,
    Reference,
    empirical,
    spec_reference,
)
from cascadia_sky.reschedule.reach import needs_reweighting, reweight
from cascadia_sky.reschedule.replan import (
    current_objective,
    observed_spec,
    reach_transform,
    replan,
    warm_up,
)
from cascadia_sky.sim.simulate import load_spec_profile
from cascadia_sky.spec import CascadeSpec, load_spec
from tests.launch.helpers import REPO

SPEC = REPO / "examples" / "deepseek.yaml"
Q = (0.1, 0.5, 0.9, 0.95, 0.99)


def test_empirical_lengths_follow_the_quantiles() -> None:
    qs = ((0.1, 100.0), (0.5, 400.0), (0.9, 1500.0), (0.99, 4000.0))
    xs = np.array(empirical(qs, 1000))
    assert abs(np.quantile(xs, 0.5) - 400) < 10 and abs(np.quantile(xs, 0.9) - 1500) < 40 and xs.min() >= 100


def test_lengths_from_the_routers_quantiles_keep_the_traces_mean() -> None:
    """Rebuilt from the levels /stats reports, the Azure conversation trace's lengths keep their mean (what a
    stage's load is made of) within 3 %; from the five levels the router reported before, linear interpolation
    was 20 % off."""
    from router.stats import LENGTH_QUANTILES as ROUTER_LEVELS

    assert ROUTER_LEVELS == LENGTH_QUANTILES
    w = workload_from_spec(load_spec(SPEC))
    for x in (w.input_tokens, w.output_tokens):
        rebuilt = np.array(empirical(tuple((q, float(np.quantile(x, q))) for q in LENGTH_QUANTILES), 1000))
        assert abs(rebuilt.mean() / x.mean() - 1) < 0.03, (rebuilt.mean(), x.mean())


def test_replan_judges_against_the_current_plan_on_the_observed_load() -> None:
    spec = load_spec(SPEC)
    plan = make_plan(spec)
    ref = spec_reference(plan, SPEC)
    w = workload_from_spec(spec)
    iq = tuple((q, float(np.quantile(w.input_tokens, q))) for q in Q)
    oq = tuple((q, float(np.quantile(w.output_tokens, q))) for q in Q)
    obs = observed_spec(spec, Reference(ref.rate_rps * 2.5, ref.reach, input_q=iq, output_q=oq), ref.rate_rps * 2.5)
    assert obs.workload.rate_rps == ref.rate_rps * 2.5 and obs.workload.input_tokens.dist == "empirical"
    assert obs.resolve(obs.quality.profile).is_file()
    j_now, l_now = current_objective(plan, observed_spec(spec, Reference(ref.rate_rps, ref.reach, input_q=iq,
                                                                          output_q=oq), ref.rate_rps))
    assert np.isfinite(j_now) and l_now > 0
    warm_up(spec)
    same = replan(plan, spec, Reference(ref.rate_rps, ref.reach), ref.rate_rps, min_gain=0.1, down_headroom=1.25,
                  same_lengths=True)
    assert not same.worth_it and "deployment that runs" in same.reason
    more = replan(plan, spec, Reference(ref.rate_rps * 2.5, ref.reach), ref.rate_rps * 2.5, min_gain=0.1,
                  down_headroom=1.25, same_lengths=True)
    assert more.worth_it and more.new_objective < 0.9 * more.current_objective   # the margin, on 2.5x the load
    assert sum(s.gpus for s in more.plan.stages) == 32 and more.plan.launch == plan.launch
    assert more.wall_s < same.wall_s * 10


# --- the observed per-stage reach (a score-distribution shift at a flat rate) ---------------------------------

def _min_cost(slo_p95_s: float) -> CascadeSpec:
    """examples/deepseek.yaml on AWS H100s at least cost under a p95 SLO: capacity follows the load per stage."""
    base = load_spec(SPEC)
    data = base.model_dump(mode="json", exclude_none=True)
    data["objective"] = {"latency": "e2e", "goal": "min-cost", "slo_p95_s": slo_p95_s}
    data["resources"] = {"cloud": {"clouds": ["aws"], "gpu_types": ["H100"], "spot": False}}
    spec = CascadeSpec.model_validate(data)
    spec._source = base.source
    return spec


def test_reweighting_reproduces_the_observed_reach_and_keeps_each_class() -> None:
    profile = load_spec_profile(load_spec(SPEC))
    theta = (float(np.quantile(profile.scores[:, 0], 0.5)), float(np.quantile(profile.scores[:, 1], 0.5)))
    before = profile.evaluate(list(theta)).reach
    for reach in ((1.0, 0.7, 0.4), (1.0, 0.3, 0.1), (1.0, float(before[1]), 0.05)):
        out, info = reweight(profile, theta, reach)
        got = out.evaluate(list(theta)).reach
        assert np.allclose(got, reach, atol=1.0 / out.n_prompts) and np.allclose(info.result_reach, got)
        assert info.prompts == out.n_prompts <= RESCHEDULE_REACH_MAX_GROWTH * profile.n_prompts
        # every prompt is one of the profile's, and within a class (answering stage) none is lost unless the
        # class shrank below one copy per prompt
        stage_before, stage_after = profile.route(list(theta)), out.route(list(theta))
        ids = {pid: i for i, pid in enumerate(profile.prompt_ids)}
        kept = {ids[p] for p in out.prompt_ids}
        for c in range(3):
            members = set(np.flatnonzero(stage_before == c))
            assert {ids[p] for p, s in zip(out.prompt_ids, stage_after) if s == c} <= members
            if info.prompts < RESCHEDULE_REACH_MAX_GROWTH * profile.n_prompts:
                assert members <= kept
    # a class the profile does not have at these thresholds cannot be reproduced: said, and spread over the rest
    out, info = reweight(profile, (-np.inf, theta[1]), (1.0, 0.5, 0.2))
    assert "no profile prompt is answered" in info.note and out.evaluate([-np.inf, theta[1]]).reach[1] == 0.0
    assert needs_reweighting((1.0, 0.48, 0.22), (1.0, 0.49, 0.21)) is False
    assert needs_reweighting((1.0, 0.48, 0.22), (1.0, 0.48, 0.30)) is True
    # five points off on 300 requests is noise (3 standard errors: 8.6 points); on 30,000 it is a shift
    assert needs_reweighting((1.0, 0.48, 0.22), (1.0, 0.53, 0.22), 300, 1400) is False
    assert needs_reweighting((1.0, 0.48, 0.22), (1.0, 0.53, 0.22), 30_000, 1400) is True


def test_planning_on_a_reweighted_profile_keeps_train_and_holdout_apart() -> None:
    spec = load_spec(SPEC)
    ctx = build_context(spec, profile_transform=lambda p: reweight(p, (-0.43, -0.37), (1.0, 0.7, 0.4))[0])
    train_ids = set(ctx.train.prompt_ids)
    hold_ids = {ctx.profile.prompt_ids[i] for i in ctx.holdout_idx}
    assert hold_ids and not train_ids & hold_ids
    assert np.allclose(ctx.train.evaluate([-0.43, -0.37]).reach, (1.0, 0.7, 0.4), atol=2e-3)


@pytest.mark.e2e   # 10-16 s (SkyPilot's optimizer in child processes, or a long replay): CI's e2e stage
def test_a_reach_shift_at_a_flat_rate_gives_the_later_stages_more_capacity() -> None:
    spec = _min_cost(30.0)
    plan = make_plan(spec)
    ref = spec_reference(plan, SPEC)
    warm_up(spec)
    # the profile's own reach (what the re-plan assumed before it used the observation): no change worth making
    flat = replan(plan, spec, Reference(ref.rate_rps, ref.reach), ref.rate_rps, min_gain=0.1, down_headroom=1.25,
                  same_lengths=True)
    assert not flat.reach and not flat.worth_it
    # harder prompts: the same requests/s, but 70 % escalate past stage 1 and 40 % reach the last stage
    shifted = Reference(ref.rate_rps, (1.0, 0.7, 0.4))
    assert reach_transform(plan, spec, shifted) is not None
    assert reach_transform(plan, spec, Reference(ref.rate_rps, (1.0, 0.5, 0.24), requests=600)) is None  # noise
    harder = replan(plan, spec, shifted, ref.rate_rps, min_gain=0.1, down_headroom=1.25, same_lengths=True)
    assert harder.reach == (1.0, 0.7, 0.4) and harder.worth_it, harder.reason
    assert "misses the SLO" in harder.reason   # judged on the observed reach, the running plan is too small
    later = [s.gpus for s in harder.plan.stages[1:]]
    assert sum(later) > sum(s.gpus for s in plan.stages[1:]), (later, [s.gpus for s in plan.stages])
    assert harder.plan.stages[-1].gpus > plan.stages[-1].gpus
    assert harder.plan.predicted.p95_latency_s <= 30.0
    # after the change, drift is measured against the reach of the new thresholds, not the old ones' count
    assert harder.reference is not None and harder.reference.rate_rps == ref.rate_rps
    assert harder.reference.reach == tuple(s.share for s in harder.plan.stages) != shifted.reach
    assert flat.reference == Reference(ref.rate_rps, ref.reach)


def test_a_length_distribution_seen_before_reuses_its_curves() -> None:
    """Conversation -> code -> conversation: the third re-plan finds the first one's latency curves (medians within
    half the length band) and gives the plan a cold re-plan gives."""
    from cascadia_sky.workload import load_trace

    spec = load_spec(SPEC)
    plan = make_plan(spec)
    ref = spec_reference(plan, SPEC)

    def observed(trace: str) -> Reference:
        w = load_trace(spec.resolve(trace), rate_scale=4.0)
        iq = tuple((q, float(np.quantile(w.input_tokens, q))) for q in LENGTH_QUANTILES)
        oq = tuple((q, float(np.quantile(w.output_tokens, q))) for q in LENGTH_QUANTILES)
        return Reference(w.rate_rps, ref.reach, dict(iq)[0.5], dict(oq)[0.5], iq, oq)

    conv, code = observed("traces/AzureLLMInferenceTrace_conv.csv"), observed("traces/AzureLLMInferenceTrace_code.csv")
    warm_up(spec)
    kw = {"min_gain": 0.1, "down_headroom": 1.25}
    first = replan(plan, spec, code, code.rate_rps, **kw)
    assert not first.warm                                   # new lengths: cold
    again = replan(plan, spec, code, code.rate_rps, **kw)
    assert again.warm and again.plan.stages == first.plan.stages
    back = replan(plan, spec, conv, conv.rate_rps, **kw)    # the cascade file's own lengths (warm_up's)
    assert back.warm
    far = dataclasses.replace(code, input_p50=code.input_p50 * 2)
    assert not replan(plan, spec, far, far.rate_rps, **kw).warm
