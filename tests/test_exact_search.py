"""The threshold search is exact: on small instances it equals an exhaustive reference.

The reference enumerates every distinct threshold vector of the profile (each stage's distinct scores, plus +inf),
routes the prompts with `QualityProfile.evaluate` (not the search's prefix sums), solves the deployment MILP for
every distinct reach vector and takes the least J = L + mu * shortfall. The planner must reach the same J and say
it proved it. Pool and cloud mode, 2 and 3 stages, with and without a quality confidence.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from cascadia_sky.planner.exact import normal_lower_bound, threshold_space
from cascadia_sky.planner.level import DeploymentLevel
from cascadia_sky.planner.planner import build_context, make_plan
from cascadia_sky.planner.route import objective_j
from cascadia_sky.quality import QualityProfile
from cascadia_sky.spec import load_spec

MODELS = ["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-405B"]
PRECISION = ["bf16", "bf16", "fp8"]


def write_instance(tmp: Path, seed: int, stages: int, mode: str, prompts: int = 12) -> Path:
    """A small cascade: a seeded profile (ties in the scores on purpose), a rate workload, a pool or cloud."""
    rng = np.random.default_rng(seed)
    models = MODELS[-stages:] if stages == 2 and seed % 2 else MODELS[:stages]
    prec = PRECISION[-stages:] if stages == 2 and seed % 2 else PRECISION[:stages]
    rows = ["prompt_id,model,score,quality,input_tokens,output_tokens"]
    for p in range(prompts):
        hard = rng.random()
        for i, m in enumerate(models):
            score = round(float(-hard + rng.normal(0, 0.3)), 1)
            good = int(rng.random() < 0.35 + 0.25 * i + 0.3 * (1 - hard))
            rows.append(f"p{p},{m},{score},{good},{int(rng.integers(50, 400))},{int(rng.integers(50, 600))}")
    (tmp / "profile.csv").write_text("\n".join(rows) + "\n")
    spec = {
        "name": f"exact-{mode}-{stages}-{seed}",
        "stages": [{"name": f"s{i}", "model": m, "precision": pr, "max_context": 8192}
                   for i, (m, pr) in enumerate(zip(models, prec))],
        "quality": {"profile": "profile.csv", "relative_target": [0.9, 0.97][seed % 2], "holdout_fraction": 0.0},
        "workload": {"rate_rps": [6.0, 14.0][seed % 2] if mode == "pool" else [2.0, 4.0][seed % 2],
                     "input_tokens": {"dist": "lognormal", "mean": 400,
                                                                          "sigma": 0.6}},
        "objective": {"latency": ["e2e", "max-stage"][seed % 2 if mode == "pool" else 0]},
    }
    if seed % 2:
        spec["quality"]["confidence"] = 0.8
    if mode == "pool":
        spec["resources"] = {"pool": {"gpu": "H100", "count": [16, 24][seed % 2]}}
    else:
        spec["resources"] = {"cloud": {"clouds": ["aws", "gcp"], "gpu_types": ["L40S", "H100"], "spot": bool(seed % 2),
                                       "budget_usd_per_hour": [45, 60][seed % 2], "quotas": {"H100": 16}}}
    path = tmp / "cascade.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def reference_j(spec_path: Path) -> tuple[float, tuple[float, ...]]:
    """Least J over every distinct threshold vector, by enumeration with the MILP (no search code involved)."""
    spec = load_spec(spec_path)
    ctx = build_context(spec)
    level = DeploymentLevel(ctx)
    prof: QualityProfile = ctx.train
    grids = [list(np.unique(prof.scores[:, i])) + [math.inf] for i in range(prof.n_stages - 1)]
    conf = spec.quality.confidence

    def primary(theta: tuple[float, ...]) -> float:
        reach = tuple(float(r) for r in prof.evaluate(list(theta)).reach)
        return level.primary_of(level.solve_at(reach))

    mu = 10.0 * primary(tuple(math.inf for _ in grids))
    mu = mu if math.isfinite(mu) and mu > 0 else 1e4
    best = (math.inf, ())
    for theta in itertools.product(*grids):
        q = normal_lower_bound(prof, list(theta), conf) if conf else prof.evaluate(list(theta)).quality
        j = objective_j(primary(theta), q, ctx.q_min, ctx.z1, ctx.z2, mu)
        if j < best[0] - 1e-12:
            best = (j, theta)
    return best


@pytest.mark.parametrize("mode, stages, seed", [
    ("pool", 2, 0), ("pool", 2, 1), ("pool", 3, 0), ("pool", 3, 1),
    ("cloud", 2, 0), ("cloud", 2, 1), ("cloud", 3, 0), ("cloud", 3, 1),
])
def test_planner_equals_the_exhaustive_reference(tmp_path: Path, mode: str, stages: int, seed: int) -> None:
    path = write_instance(tmp_path, seed, stages, mode)
    want_j, want_theta = reference_j(path)
    plan = make_plan(load_spec(path))
    assert plan.solver.proven_optimal and plan.solver.search == ("exhaustive" if mode == "pool" else
                                                                 "branch-and-bound")
    assert plan.solver.objective_j == pytest.approx(want_j, rel=1e-6), (want_theta, plan.stages)
    assert plan.solver.status in ("optimal", "target_missed")


def test_prefix_sums_match_routing_vector_by_vector(tmp_path: Path) -> None:
    """Quality, its confidence bound and reach of every vector equal `QualityProfile.evaluate` on it."""
    path = write_instance(tmp_path, 3, 3, "pool", prompts=15)
    ctx = build_context(load_spec(path))
    space = threshold_space(ctx.train, 0.8)
    for index in itertools.product(*(range(g.size) for g in space.grids)):
        theta = list(space.thresholds(index))
        out = ctx.train.evaluate(theta)
        assert space.quality[index] == pytest.approx(out.quality, abs=1e-12)
        assert space.quality_bound[index] == pytest.approx(normal_lower_bound(ctx.train, theta, 0.8), abs=1e-12)
        assert space.reach(index) == pytest.approx(tuple(out.reach), abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_branch_and_bound_equals_enumeration_for_any_monotone_level(seed: int) -> None:
    """Branch and bound over a real threshold space with a random L that is monotone in the reach counts (the
    only property the search assumes): same least J as pricing every vector, with fewer evaluations."""
    from cascadia_sky.planner.exact import branch_and_bound, penalty

    rng = np.random.default_rng(seed)
    n, stages = 60, 2 + seed % 2
    scores = np.round(rng.normal(size=(n, stages)), 1)
    quality = (rng.random((n, stages)) < np.linspace(0.4, 0.9, stages)).astype(float)
    prof = QualityProfile(scores, quality, np.full((n, stages), 100), np.full((n, stages), 100))
    space = threshold_space(prof, 0.8 if seed % 3 == 0 else None)
    steps = [np.cumsum(rng.exponential(1.0, n + 1) ** 3) * rng.uniform(0.02, 1.0) for _ in range(stages - 1)]

    def level(index: tuple[int, ...]) -> float:
        value = 1.0 + sum(steps[i - 1][space.count(i, index)] for i in range(1, stages))
        return math.inf if value > 60 and seed % 4 == 1 else value      # monotone infeasibility, sometimes

    z1, z2 = float(quality[:, -1].mean()), float(quality[:, 0].mean())
    pen = penalty(space, 0.95 * z1, z1, z2, rng.uniform(1.0, 40.0))
    want = min(level(i) + pen[i] for i in itertools.product(*(range(g.size) for g in space.grids)))
    got = branch_and_bound(space, pen, np.zeros(space.shape), level, time_limit_s=60.0)
    assert got.proven and got.j == pytest.approx(want, rel=1e-12)
    assert got.evaluations < pen.size


def test_four_stages_fall_back_to_the_heuristic_search_and_say_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    models = ["meta-llama/Llama-3.2-1B", *MODELS]
    rows = ["prompt_id,model,score,quality,input_tokens,output_tokens"]
    for p in range(30):
        for i, m in enumerate(models):
            rows.append(f"p{p},{m},{round(float(rng.normal()), 2)},{int(rng.random() < 0.4 + 0.15 * i)},200,200")
    (tmp_path / "profile.csv").write_text("\n".join(rows) + "\n")
    spec = {"name": "four", "stages": [{"name": f"s{i}", "model": m, "precision": "fp8" if "405B" in m else "bf16",
                                        "max_context": 8192} for i, m in enumerate(models)],
            "quality": {"profile": "profile.csv", "relative_target": 0.9, "holdout_fraction": 0.0},
            "workload": {"rate_rps": 2.0, "input_tokens": {"dist": "lognormal", "mean": 300, "sigma": 0.5}},
            "resources": {"pool": {"gpu": "H100", "count": 24}}}
    (tmp_path / "cascade.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = make_plan(load_spec(tmp_path / "cascade.yaml"))
    assert plan.solver.search == "heuristic" and not plan.solver.proven_optimal
    assert plan.solver.status in ("feasible", "target_missed") and len(plan.stages) == 4
