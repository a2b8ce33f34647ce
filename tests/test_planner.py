"""The whole planner on the shipped examples: real profiles, real traces, the performance model, the MILP."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cascadia_sky.errors import SpecError
from cascadia_sky.planner.deploy import solve
from cascadia_sky.planner.plan import read_plan, write_plan
from cascadia_sky.planner.planner import DeploymentLevel, build_context, make_plan
from cascadia_sky.planner.route import chebyshev_search, objective_j
from cascadia_sky.planner.verify import verify
from cascadia_sky.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def deepseek_plan():
    return make_plan(load_spec(EXAMPLES / "deepseek.yaml"))


def test_deepseek_plan_is_consistent(deepseek_plan) -> None:
    plan = deepseek_plan
    assert [s.name for s in plan.stages] == ["small", "medium", "large"]
    assert sum(s.gpus for s in plan.stages) == 32 == plan.predicted.gpus
    for s in plan.stages:
        assert s.gpus == s.tp * s.pp * s.replicas
        assert s.gpu_type == "H100"
        assert math.isfinite(s.p95_latency_s)
    assert plan.stages[-1].threshold is None
    assert all(s.threshold is not None for s in plan.stages[:-1])
    shares = [s.share for s in plan.stages]
    assert shares[0] == 1.0 and shares == sorted(shares, reverse=True)
    assert sum(s.answered_share for s in plan.stages) == pytest.approx(1.0, abs=1e-5)  # each rounded to 1e-6
    assert plan.solver.status == "optimal" and plan.solver.proven_optimal and plan.solver.search == "exhaustive"
    assert plan.predicted.quality >= plan.predicted.quality_target
    assert plan.predicted.quality_holdout is not None
    # e2e objective: each stage's p95 weighted by its part in the slowest-routed 5 % of requests
    assert plan.predicted.p95_latency_s == pytest.approx(sum(min(1.0, s.share / 0.05) * s.p95_latency_s
                                                             for s in plan.stages))
    # the request-level p95 is a mixture over exit stages: between the fastest and the slowest path's p95
    paths = [s.path_p95_latency_s for s in plan.stages if s.answered_share > 0]
    assert min(paths) <= plan.predicted.request_p95_latency_s <= max(paths) + 1e-9
    assert plan.predicted.request_p95_latency_bursty_s is not None and plan.predicted.trace_burstiness is not None


def test_plan_json_round_trip_and_stable_keys(deepseek_plan, tmp_path: Path) -> None:
    path = write_plan(deepseek_plan, tmp_path / "plan.json")
    data = json.loads(path.read_text())
    for key in ("model", "gpu_type", "gpus", "tp", "pp", "replicas", "threshold", "share", "name",
                "served_model_name"):
        assert all(key in s for s in data["stages"]), key
    for key in ("quality", "p95_latency_s", "usd_per_hour"):
        assert key in data["predicted"]
    assert {"status", "wall_s"} <= set(data["solver"])
    assert data["schema_version"] == 2 and data["scorer"] == "mean_logprob"
    assert data["launch"].pop("reschedule")["enabled"] is False          # docs/reschedule.md
    assert data["launch"].pop("quality_watch")["enabled"] is False       # docs/quality-watch.md
    assert data["launch"] == {"backend": "skyserve", "targets": None, "autoscale": False, "vllm_version": "0.33.0",
                              "engine_threads": 1, "router_host": "0.0.0.0", "router_port": 8800,
                              "ready_timeout_s": 600.0}
    assert read_plan(path) == deepseek_plan


def test_read_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="plan file not found"):
        read_plan(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(SpecError, match="not valid JSON"):
        read_plan(bad)
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(SpecError, match="schema_version"):
        read_plan(bad)
    bad.write_text(json.dumps({"schema_version": 1, "name": "x", "stages": []}))   # a plan without `launch`
    with pytest.raises(SpecError, match=r"schema_version: is 1 .*`cascadia plan cascade.yaml -o plan.json`"):
        read_plan(bad)


def test_chosen_deployment_passes_independent_verify() -> None:
    ctx = build_context(load_spec(EXAMPLES / "llama3.yaml"))
    level = DeploymentLevel(ctx)
    solved = 0
    for theta in [(math.inf, math.inf), (-0.5, -0.48), (-0.6, -0.5), (-10.0, math.inf)]:
        problem = level.problem(theta)
        result = solve(problem)
        if result.chosen:
            solved += 1
            assert verify(problem, result) == []
        else:
            assert "raise" in result.reason or "relax" in result.reason, result.reason
    assert solved >= 2


def _loaded_copy(tmp_path: Path, name: str, scale: float) -> Path:
    shutil.copytree(EXAMPLES / "profiles", tmp_path / "profiles")
    shutil.copytree(EXAMPLES / "traces", tmp_path / "traces")
    data = yaml.safe_load((EXAMPLES / name).read_text())
    data["workload"]["rate_scale"] = scale
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_lower_quality_target_moves_gpus_off_the_last_stage(tmp_path: Path) -> None:
    """The paper's finding: a lower target sends fewer requests and fewer GPUs to the largest model."""
    spec = load_spec(_loaded_copy(tmp_path, "deepseek.yaml", 4.0))
    z1 = build_context(spec).z1
    high = make_plan(spec, target_override=1.0 * z1)
    low = make_plan(spec, target_override=0.88 * z1)
    assert low.stages[-1].share < high.stages[-1].share
    assert low.stages[-1].gpus < high.stages[-1].gpus
    assert low.predicted.p95_latency_s < high.predicted.p95_latency_s
    assert low.predicted.quality >= 0.88 * z1


def test_cloud_plan_respects_budget_quota_and_uses_spot() -> None:
    plan = make_plan(load_spec(EXAMPLES / "multicloud.yaml"))
    assert plan.mode == "cloud"
    assert plan.predicted.usd_per_hour <= 120 + 1e-9
    assert plan.predicted.usd_per_hour == pytest.approx(sum(s.usd_per_hour for s in plan.stages))
    by_type: dict[str, int] = {}
    for s in plan.stages:
        by_type[s.gpu_type] = by_type.get(s.gpu_type, 0) + s.gpus
        assert s.spot and s.cloud in {"aws", "gcp", "azure", "lambda"} and s.instance_type
        assert s.instances is not None and s.gpus_per_instance is not None
        assert s.instances * s.gpus_per_instance == s.gpus
    assert by_type.get("H100", 0) <= 16 and by_type.get("H200", 0) <= 8
    assert plan.predicted.quality_lower_bound is not None
    assert plan.predicted.quality_lower_bound >= plan.predicted.quality_target - 1e-12


def test_min_cost_meets_the_slo(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "profiles", tmp_path / "profiles")
    shutil.copytree(EXAMPLES / "traces", tmp_path / "traces")
    data = yaml.safe_load((EXAMPLES / "multicloud.yaml").read_text())
    data["objective"] = {"latency": "e2e", "goal": "min-cost", "slo_p95_s": 30.0}
    data["resources"]["cloud"].pop("budget_usd_per_hour")
    data["quality"].pop("confidence")
    path = tmp_path / "cost.yaml"
    path.write_text(yaml.safe_dump(data))
    plan = make_plan(load_spec(path))
    assert plan.goal == "min-cost"
    assert plan.predicted.p95_latency_s <= 30.0
    fast = make_plan(load_spec(EXAMPLES / "multicloud.yaml"))
    assert plan.predicted.usd_per_hour <= fast.predicted.usd_per_hour


def test_search_one_threshold_equals_exhaustive_grid() -> None:
    """With one threshold the coordinate search visits every grid point, so it must find the grid optimum."""
    rng = np.random.default_rng(1)
    scores = rng.normal(size=500)

    def quality(theta: tuple[float, ...]) -> float:
        return float(np.mean(scores < theta[0]))  # more escalation -> better

    def deploy(theta: tuple[float, ...]) -> tuple[float, float, None]:
        share = float(np.mean(scores < theta[0]))
        return 1.0 + 4.0 * share**2, 0.0, None

    res = chebyshev_search([scores], quality, deploy, q_min=0.6, z1=1.0, z2=0.0, grid_points=20, refine_points=0,
                           stable_rounds=1, max_rounds=1, tolerance=1e-9, mu_s=50.0)
    grid = [e.thresholds for e in res.evaluations]
    brute = min(objective_j(deploy(t)[0], quality(t), 0.6, 1.0, 0.0, 50.0) for t in grid)
    assert res.best.j == pytest.approx(brute)
    assert res.best.quality >= 0.6
    assert res.pruned + len(res.evaluations) >= 20


def test_search_prefers_smaller_shortfall_when_target_unreachable() -> None:
    scores = np.linspace(-1, 0, 100)
    res = chebyshev_search([scores], lambda t: 0.5 if math.isinf(t[0]) else 0.4,
                           lambda t: (1.0, 0.0, None), q_min=0.9, z1=0.5, z2=0.4, grid_points=5,
                           refine_points=2, stable_rounds=2, max_rounds=5, tolerance=1e-6, mu_s=10.0)
    assert math.isinf(res.best.thresholds[0])


def test_cli_plan_explain_writes_plan_and_png(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cascadia_sky.cli", "plan", str(EXAMPLES / "llama3.yaml"), "-o",
                          str(tmp_path / "p.json"), "--explain"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "frontier" in out.stdout and "why each stage" in out.stdout
    assert read_plan(tmp_path / "p.json").name == "llama3"
    png = tmp_path / "p.frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_curve_matches_the_performance_model() -> None:
    from cascadia_sky.catalog import get_gpu
    from cascadia_sky.models import get_model
    from cascadia_sky.perf import LengthDist
    from cascadia_sky.planner.candidates import LatencyCurve, StageSetup, estimate
    from cascadia_sky.workload import load_trace

    w = load_trace(EXAMPLES / "traces" / "AzureLLMInferenceTrace_conv.csv")
    lengths = LengthDist(w.input_tokens[:2000], w.output_tokens[:2000])
    stage = StageSetup(0, "s", get_model("meta-llama/Llama-3.1-70B"), "bf16", 16384, ("H100",))
    gpu = get_gpu("H100")
    curve = LatencyCurve(stage, gpu, 4, 1, lengths)
    errors = []
    for u in np.linspace(0.02, 0.97, 25):
        rate = float(u) * curve.max_rate_rps
        direct = estimate(stage, gpu, 4, 1, 1, rate, lengths)
        assert direct is not None and direct.stable
        errors.append(abs(curve.p95(rate) / direct.e2e_p95_s - 1.0))
    assert float(np.median(errors)) < 0.01 and max(errors) < 0.08
    assert math.isinf(curve.p95(curve.max_rate_rps * 1.01))


def test_local_example_plans_one_cpu_engine_per_stage() -> None:
    plan = make_plan(load_spec(EXAMPLES / "local.yaml"))
    assert plan.mode == "local"
    assert [s.gpu_type for s in plan.stages] == ["cpu", "cpu"]
    assert all(s.replicas == 1 and s.tp == 1 and s.pp == 1 for s in plan.stages)
    assert plan.stages[0].threshold is not None and plan.stages[1].threshold is None
    assert plan.predicted.quality >= plan.predicted.quality_target
    assert math.isfinite(plan.predicted.p95_latency_s)


def test_plan_with_infinite_latency_round_trips(deepseek_plan, tmp_path: Path) -> None:
    stages = [deepseek_plan.stages[0].model_copy(update={"p95_latency_s": math.inf}), *deepseek_plan.stages[1:]]
    predicted = deepseek_plan.predicted.model_copy(update={"p95_latency_s": math.inf})
    plan = deepseek_plan.model_copy(update={"stages": stages, "predicted": predicted})
    path = write_plan(plan, tmp_path / "inf.json")
    assert json.loads(path.read_text())["predicted"]["p95_latency_s"] == "Infinity"
    back = read_plan(path)
    assert math.isinf(back.predicted.p95_latency_s) and math.isinf(back.stages[0].p95_latency_s)


def test_a_stage_no_request_reaches_gets_no_gpus(tmp_path: Path) -> None:
    """At a low target the best plan may send nothing to the last stage: it then holds no GPUs (the pool goes to
    the others) and the threshold before it accepts everything (-inf, written as "-Infinity")."""
    spec = load_spec(_loaded_copy(tmp_path, "deepseek.yaml", 4.0))
    plan = make_plan(spec, target_override=0.5 * build_context(spec).z1)
    idle = [s for s in plan.stages if s.share == 0.0]
    assert idle, [s.share for s in plan.stages]
    for s in idle:
        assert s.gpus == 0 and s.replicas == 0 and s.usd_per_hour == 0.0
    before = plan.stages[plan.stages.index(idle[0]) - 1]
    assert before.threshold == -math.inf
    assert sum(s.gpus for s in plan.stages) == 32
    path = write_plan(plan, tmp_path / "idle.json")
    assert '"-Infinity"' in path.read_text() and read_plan(path) == plan


def test_a_target_out_of_reach_at_the_confidence_is_said_plainly(tmp_path: Path) -> None:
    """At 100 % of the largest model's quality and 99 % confidence no thresholds qualify (the bound of even
    everything-to-the-last-stage is below its mean): the plan says so and what to change, and reports the
    held-out quality with its interval."""
    path = _loaded_copy(tmp_path, "deepseek.yaml", 4.0)
    data = yaml.safe_load(path.read_text())
    data["quality"].update({"relative_target": 1.0, "confidence": 0.99})
    path.write_text(yaml.safe_dump(data))
    plan = make_plan(load_spec(path))
    p = plan.predicted
    assert plan.solver.status == "target_missed" and plan.solver.proven_optimal
    assert p.quality_lower_bound < p.quality_target
    assert "cannot be met at confidence 0.99" in p.quality_note and "planning prompts" in p.quality_note
    lo, hi = p.quality_holdout_interval
    assert lo <= p.quality_holdout <= hi
