"""`verify` re-checks a deployment independently, and it can fail: every deliberately broken result is caught."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cascadia_sky.planner.bruteforce import random_problem
from cascadia_sky.planner.deploy import Candidate, DeployProblem, DeployResult, DeployStatus, solve
from cascadia_sky.planner.verify import verify


def feasible(config: dict, seed: int = 0) -> tuple[DeployProblem, DeployResult]:
    """The first seeded instance of a kind that has a plan, with that plan (solved for real)."""
    for s in range(seed, seed + 50):
        problem = random_problem(s, stages=3, **config)
        result = solve(problem)
        if result.chosen and not result.pool_relaxed:
            assert verify(problem, result) == []
            return problem, result
    raise AssertionError("no feasible instance")


def swap(result: DeployResult, stage: int, candidate: Candidate) -> DeployResult:
    chosen = result.chosen[:stage] + (candidate,) + result.chosen[stage + 1:]
    return dataclasses.replace(result, chosen=chosen)


@pytest.fixture(scope="module")
def pool() -> tuple[DeployProblem, DeployResult]:
    return feasible(dict(mode="pool", slo=True))


@pytest.fixture(scope="module")
def cloud() -> tuple[DeployProblem, DeployResult]:
    return feasible(dict(mode="cloud", budget=True, quotas=True, slo=True))


def test_wrong_totals_are_caught(pool: tuple[DeployProblem, DeployResult]) -> None:
    problem, result = pool
    assert any("latency" in e for e in verify(problem, dataclasses.replace(result, latency_s=result.latency_s * 0.9)))
    assert any("gpus" in e for e in verify(problem, dataclasses.replace(result, gpus=result.gpus + 1)))
    assert any("cost" in e for e in verify(problem, dataclasses.replace(result, usd_per_hour=1.0)))


def test_pool_size_is_checked(pool: tuple[DeployProblem, DeployResult]) -> None:
    problem, result = pool
    other = next(c for c in problem.candidates[0] if c.gpus != result.chosen[0].gpus)
    broken = swap(result, 0, other)
    assert any("!= pool" in e for e in verify(problem, broken))
    bigger = dataclasses.replace(problem, pool_gpus=result.gpus - 1)
    assert any("> pool" in e for e in verify(bigger, dataclasses.replace(result, pool_relaxed=True)))
    assert verify(dataclasses.replace(problem, pool_gpus=result.gpus + 1), dataclasses.replace(
        result, pool_relaxed=True)) == []


def test_candidates_must_come_from_the_stage_table(pool: tuple[DeployProblem, DeployResult]) -> None:
    problem, result = pool
    made_up = dataclasses.replace(result.chosen[1], p95_latency_s=0.001)
    assert any("not in the stage's candidate table" in e for e in verify(problem, swap(result, 1, made_up)))
    assert any("belongs to stage 0" in e for e in verify(problem, swap(result, 1, result.chosen[0])))
    wrong_gpus = dataclasses.replace(result.chosen[0], gpus=result.chosen[0].gpus + 1)
    assert any("tp*pp*replicas" in e for e in verify(problem, swap(result, 0, wrong_gpus)))
    wrong_type = dataclasses.replace(result.chosen[0], gpu_type="A100")
    assert any("the pool is H100" in e for e in verify(problem, swap(result, 0, wrong_type)))


def test_infinite_latency_is_caught(pool: tuple[DeployProblem, DeployResult]) -> None:
    problem, result = pool
    slow = dataclasses.replace(result.chosen[0], p95_latency_s=float("inf"))
    table = (problem.candidates[0] + (slow,),) + problem.candidates[1:]
    assert any("cannot sustain" in e for e in verify(dataclasses.replace(problem, candidates=table),
                                                     swap(result, 0, slow)))


def test_limits_are_checked(cloud: tuple[DeployProblem, DeployResult]) -> None:
    problem, result = cloud
    used = result.chosen[0].gpu_type
    gpus_of_type = sum(c.gpus for c in result.chosen if c.gpu_type == used)
    assert any("budget" in e for e in verify(
        dataclasses.replace(problem, budget_usd_per_hour=result.usd_per_hour - 0.5), result))
    assert any(f"cap gpu:{used}" in e for e in verify(
        dataclasses.replace(problem, caps={f"gpu:{used}": gpus_of_type - 1}), result))
    assert any("SLO" in e for e in verify(dataclasses.replace(problem, slo_p95_s=result.latency_s * 0.99), result))


def test_instance_granularity_is_checked(cloud: tuple[DeployProblem, DeployResult]) -> None:
    problem, result = cloud
    c = result.chosen[0]
    too_wide = dataclasses.replace(c, tp=2 * c.tp, gpus=2 * c.gpus, gpus_per_instance=c.tp, instances=2 * c.gpus)
    too_few = dataclasses.replace(c, gpus_per_instance=c.tp, instances=c.gpus // c.tp - 1)
    for bad, message in ((too_wide, "within a node"), (too_few, "instances hold fewer")):
        table = (problem.candidates[0] + (bad,),) + problem.candidates[1:]
        assert any(message in e for e in verify(dataclasses.replace(problem, candidates=table), swap(result, 0, bad)))
    assert verify(problem, result) == []


def test_status_and_plan_must_agree(cloud: tuple[DeployProblem, DeployResult]) -> None:
    problem, result = cloud
    assert verify(problem, dataclasses.replace(result, status=DeployStatus.INFEASIBLE))
    assert verify(problem, dataclasses.replace(result, chosen=()))
    assert verify(problem, dataclasses.replace(result, chosen=result.chosen[:-1]))
    assert verify(problem, dataclasses.replace(result, status=DeployStatus.INFEASIBLE, chosen=())) == []
    assert any("outside pool mode" in e for e in verify(problem, dataclasses.replace(result, pool_relaxed=True)))


@pytest.mark.parametrize("which", ["pool", "cloud"])
def test_the_solvers_own_objective_is_checked(which: str, pool, cloud) -> None:
    """verify compares the chosen plan with the objective value CBC reported: a wrong one is caught."""
    problem, result = pool if which == "pool" else cloud
    assert math.isfinite(result.objective_value) and verify(problem, result) == []
    for wrong in (result.objective_value * 0.99 - 1e-3, result.objective_value * 1.01 + 1e-3, math.nan):
        errors = verify(problem, dataclasses.replace(result, objective_value=wrong))
        assert any(e.startswith("objective:") for e in errors), errors
