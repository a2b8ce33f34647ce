"""The cascade in the simulator: routing by score, conservation across stages, SLO scale, the shipped examples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cascadia_sky.catalog import get_gpu
from cascadia_sky.errors import SpecError, UserInputError
from cascadia_sky.models import get_model
from cascadia_sky.perf.step import Deployment
from cascadia_sky.planner.plan import read_plan, write_plan
from cascadia_sky.planner.planner import make_plan
from cascadia_sky.sim.simulate import (
    Requests,
    SimStage,
    load_spec_profile,
    make_requests,
    reference_deployment,
    simulate,
    simulate_cascade,
    spec_requests,
    spec_workload,
)
from cascadia_sky.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _stages(thresholds: list[float]) -> list[SimStage]:
    h100 = get_gpu("H100")
    models = ["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B"]
    tps = [1, 4]
    return [SimStage(name=f"s{i}", deployment=Deployment(get_model(m), h100, tp), replicas=2,
                     threshold=thresholds[i] if i < len(thresholds) else None, max_context=8192, column=i)
            for i, (m, tp) in enumerate(zip(models, tps))]


def _requests(n: int = 2000, rate: float = 20.0, seed: int = 0) -> Requests:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    scores = rng.normal(size=(n, 2))
    quality = (scores + rng.normal(size=(n, 2)) > 0).astype(float)
    return Requests(arrival_s=t - t[0], input_tokens=rng.integers(50, 2000, n),
                    output_tokens=rng.integers(1, 400, (n, 2)), scores=scores, quality=quality)


def test_routing_follows_the_scores_and_conserves_requests() -> None:
    reqs = _requests()
    res = simulate_cascade(_stages([0.3]), reqs, _stages([])[-1].deployment)
    expected_first = reqs.scores[:, 0] >= 0.3
    assert np.array_equal(res.final_stage == 0, expected_first)
    assert res.stages[0].reached == reqs.n
    assert res.stages[0].answered + res.stages[1].answered == reqs.n
    assert res.stages[1].reached == reqs.n - res.stages[0].answered
    assert np.isfinite(res.e2e_s).all() and (res.e2e_s > 0).all()
    expected_q = np.where(expected_first, reqs.quality[:, 0], reqs.quality[:, 1])
    assert np.array_equal(res.quality, expected_q)
    # escalated requests paid for both stages: slower than any first-stage answer of similar length
    assert np.median(res.e2e_s[~expected_first]) > np.median(res.e2e_s[expected_first])
    # answers from the last stage stream (TTFT < e2e); accepted early answers are returned whole (TTFT = e2e)
    assert np.allclose(res.ttft_s[expected_first], res.e2e_s[expected_first])
    multi = ~expected_first & (reqs.output_tokens[:, 1] > 1)
    assert (res.ttft_s[multi] < res.e2e_s[multi]).all()


def test_extreme_thresholds() -> None:
    reqs = _requests(500)
    ref = _stages([])[-1].deployment
    everything_first = simulate_cascade(_stages([-math.inf]), reqs, ref)
    assert (everything_first.final_stage == 0).all() and everything_first.stages[1].reached == 0
    everything_last = simulate_cascade(_stages([math.inf]), reqs, ref)
    assert (everything_last.final_stage == 1).all() and everything_last.stages[1].reached == 500


def test_single_model_at_idle_has_slo_scale_one() -> None:
    """Requests far apart on the reference deployment itself take exactly their reference latency."""
    reqs = _requests(50)
    reqs = Requests(np.arange(50) * 1000.0, reqs.input_tokens, reqs.output_tokens, reqs.scores, reqs.quality)
    ref = Deployment(get_model("meta-llama/Llama-3.1-70B"), get_gpu("H100"), 4)
    alone = [SimStage("only", ref, 1, None, 8192, 1)]
    res = simulate_cascade(alone, reqs, ref)
    assert np.allclose(res.slo_ratio, 1.0, rtol=1e-9)
    assert res.slo_scale(0.95) == pytest.approx(1.0)
    assert res.attainment([0.99, 1.0 + 1e-9]).tolist() == [0.0, 1.0]


def test_attainment_and_slo_scale_agree() -> None:
    res = simulate_cascade(_stages([0.0]), _requests(1000, rate=40.0), _stages([])[-1].deployment)
    s95 = res.slo_scale(0.95)
    assert res.attainment([s95])[0] >= 0.95
    assert res.attainment([s95 * (1 - 1e-9)])[0] < 0.95
    curve = res.attainment(np.geomspace(0.1, 1000, 50))
    assert (np.diff(curve) >= 0).all() and curve[-1] == 1.0


@pytest.fixture(scope="module")
def llama() -> tuple:
    spec = load_spec(EXAMPLES / "llama3.yaml")
    return spec, make_plan(spec)


def test_example_plan_replays_the_whole_trace(llama: tuple, tmp_path: Path) -> None:
    spec, plan = llama
    path = write_plan(plan, tmp_path / "plan.json")
    res = simulate(spec, read_plan(path))
    assert res.n == 8819 and np.isfinite(res.e2e_s).all()
    # the simulated shares are the planned ones up to sampling (prompts drawn at random for each request)
    for i, st in enumerate(plan.stages):
        assert res.stages[i].reached / res.n == pytest.approx(st.share, abs=0.03)
    assert res.quality.mean() == pytest.approx(plan.predicted.quality, abs=0.02)
    assert res.truncated == 0
    s = res.summary()
    assert s["e2e_p50_s"] <= s["e2e_p95_s"] <= s["e2e_p99_s"]
    assert sum(s["answered_share"]) == pytest.approx(1.0)
    # a faster replay of the same plan can only queue more
    faster = simulate(spec, plan, rate_multiplier=2.0)
    assert faster.summary()["e2e_p95_s"] > s["e2e_p95_s"]
    assert faster.stages[0].queue_wait_p95_s > res.stages[0].queue_wait_p95_s


def test_output_lengths_from_the_profile(llama: tuple) -> None:
    spec, _ = llama
    profile = load_spec_profile(spec)
    work = spec_workload(spec)
    from_trace = make_requests(work, profile, "auto")
    assert (from_trace.output_tokens[:, 0] == work.output_tokens).all()
    from_profile = make_requests(work, profile, "profile")
    # each request keeps one profile prompt: its lengths, scores and qualities come from the same row
    row = np.flatnonzero((profile.scores == from_profile.scores[0]).all(axis=1))[0]
    assert (from_profile.output_tokens[0] == profile.output_tokens[row]).all()
    assert (from_profile.quality[0] == profile.quality[row]).all()


def test_rate_workload_and_errors(tmp_path: Path) -> None:
    text = (EXAMPLES / "deepseek.yaml").read_text()
    text = text.replace("  trace: traces/AzureLLMInferenceTrace_conv.csv\n  rate_scale: 4.0",
                        "  rate_rps: 2.0\n  input_tokens: {dist: lognormal, mean: 300, sigma: 0.5}")
    spec_file = tmp_path / "reasoning.yaml"
    spec_file.write_text(text.replace("profiles/", str(EXAMPLES / "profiles") + "/"))
    spec = load_spec(spec_file)
    reqs = spec_requests(spec, n_requests=300)
    assert reqs.n == 300
    assert reqs.arrival_s[-1] / 299 == pytest.approx(0.5, rel=0.2)
    assert reqs.output_tokens.mean() > 3000          # reasoning answers from the profile
    with pytest.raises(UserInputError, match="no output lengths"):
        make_requests(spec_workload(spec, n_requests=10), load_spec_profile(spec), "workload")
    with pytest.raises(UserInputError, match="rate-scale"):
        spec_requests(spec, rate_multiplier=0.0)


def test_plan_of_another_spec_is_refused(llama: tuple) -> None:
    _, plan = llama
    other = load_spec(EXAMPLES / "deepseek.yaml")
    renamed = plan.model_copy(update={"stages": [s.model_copy(update={"name": "x", "model": "some/model"})
                                                 for s in plan.stages]})
    with pytest.raises(SpecError, match="not a stage of the spec"):
        simulate(other, renamed)


def test_reference_is_the_fastest_lone_deployment_of_the_last_model() -> None:
    dep = reference_deployment(load_spec(EXAMPLES / "llama3.yaml"))
    assert dep.model.name == "meta-llama/Llama-3.1-405B" and dep.gpu.name == "H100" and dep.tp == 8
