"""Re-planning with the real planner: the observed-workload spec, the judgement against the current plan, and the
warm start (rate-only drift reuses the current plan's latency curves)."""

from __future__ import annotations

import numpy as np

from cascadia_sky.planner.planner import make_plan, workload_from_spec
from cascadia_sky.reschedule.observe import Reference, empirical, spec_reference
from cascadia_sky.reschedule.replan import current_objective, observed_spec, replan, warm_up
from cascadia_sky.spec import load_spec
from tests.launch.helpers import REPO

SPEC = REPO / "examples" / "deepseek.yaml"
Q = (0.1, 0.5, 0.9, 0.95, 0.99)


def test_empirical_lengths_follow_the_quantiles() -> None:
    qs = ((0.1, 100.0), (0.5, 400.0), (0.9, 1500.0), (0.99, 4000.0))
    xs = np.array(empirical(qs, 1000))
    assert abs(np.quantile(xs, 0.5) - 400) < 10 and abs(np.quantile(xs, 0.9) - 1500) < 40 and xs.min() >= 100


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
