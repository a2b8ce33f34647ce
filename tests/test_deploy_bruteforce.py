"""The deployment MILP's optimum equals exhaustive enumeration on every instance small enough to enumerate.

Seeded random instances (2-4 stages, 6 candidates each with duplicates, dominated and infinite-latency ones) in pool
and cloud mode, both objectives, both goals, with quotas (caps), budgets, SLOs, shares below the tail fraction or
zero, relaxed pools and infeasible cases. Both answers must pass `verify`, agree on feasibility and on (primary, tie-break) values.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from cascadia_sky.planner.bruteforce import brute_force, random_problem
from cascadia_sky.planner.deploy import Candidate, DeployProblem, DeployResult, DeployStatus, reduce_candidates, solve
from cascadia_sky.planner.pooldp import pool_dp
from cascadia_sky.planner.verify import objective_values, verify

CONFIGS = {
    "pool-e2e": dict(mode="pool"),
    "pool-e2e-slo-quota": dict(mode="pool", slo=True, quotas=True),
    "pool-max-stage": dict(mode="pool", objective="max-stage"),
    "pool-max-stage-slo": dict(mode="pool", objective="max-stage", slo=True),
    "cloud-latency-budget-quota": dict(mode="cloud", budget=True, quotas=True),
    "cloud-latency-max-stage-budget-slo": dict(mode="cloud", objective="max-stage", budget=True, slo=True),
    "cloud-latency-unbounded": dict(mode="cloud", quotas=True),
    "cloud-cost-slo-quota": dict(mode="cloud", goal="min-cost", slo=True, quotas=True),
    "cloud-cost-max-stage-slo-budget": dict(mode="cloud", goal="min-cost", objective="max-stage", slo=True,
                                            budget=True),
    "cloud-latency-caps": dict(mode="cloud", caps=True),
    "cloud-cost-caps-quota-slo": dict(mode="cloud", goal="min-cost", caps=True, quotas=True, slo=True),
    "cloud-latency-round-trips": dict(mode="cloud", places=True, budget=True),
    "cloud-cost-round-trips-slo": dict(mode="cloud", goal="min-cost", places=True, slo=True),
    "cloud-latency-max-stage-round-trips": dict(mode="cloud", objective="max-stage", places=True, quotas=True),
    "cloud-latency-one-region": dict(mode="cloud", same_region=True, places=True, budget=True),
}
SEEDS = range(40)


def instance(config: str, seed: int) -> DeployProblem:
    return random_problem(seed, stages=2 + seed % 3, **CONFIGS[config])


def assert_same_optimum(problem: DeployProblem, got: DeployResult, want: DeployResult) -> None:
    assert (got.status == DeployStatus.INFEASIBLE) == (want.status == DeployStatus.INFEASIBLE), (got, want)
    if want.status == DeployStatus.INFEASIBLE:
        assert got.chosen == () and got.reason
        return
    assert got.status == DeployStatus.OPTIMAL
    assert verify(problem, got) == []
    assert verify(problem, want) == []
    assert got.pool_relaxed == want.pool_relaxed
    for a, b in zip(objective_values(problem, got.chosen), objective_values(problem, want.chosen), strict=True):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (got.chosen, want.chosen)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_milp_equals_brute_force(config: str, seed: int) -> None:
    problem = instance(config, seed)
    assert_same_optimum(problem, solve(problem), brute_force(problem))


def test_random_instances_cover_every_outcome() -> None:
    """The instances above are not all easy: they include infeasible, relaxed-pool, small-share and idle stages."""
    outcomes = set()
    for config in CONFIGS:
        for seed in SEEDS:
            problem = instance(config, seed)
            result = brute_force(problem)
            outcomes.add((problem.mode, result.status, result.pool_relaxed))
            if 0 < min(problem.shares) < problem.tail_fraction and result.chosen:
                outcomes.add("below-tail")
            if min(problem.shares) == 0 and result.chosen:
                outcomes.add("idle-stage")
    assert outcomes >= {("pool", DeployStatus.OPTIMAL, False), ("pool", DeployStatus.OPTIMAL, True),
                        ("pool", DeployStatus.INFEASIBLE, False), ("cloud", DeployStatus.OPTIMAL, False),
                        ("cloud", DeployStatus.INFEASIBLE, False), "below-tail", "idle-stage"}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_reduction_keeps_the_optimum(config: str) -> None:
    """Brute force over the reduced table finds the same optimum as over the full table, and reduction bites."""
    before = after = 0
    for seed in SEEDS:
        problem = instance(config, seed)
        reduced = reduce_candidates(problem)
        before += sum(len(s) for s in problem.candidates)
        after += sum(len(s) for s in reduced)
        assert all(c in full for stage, full in zip(reduced, problem.candidates, strict=True) for c in stage)
        assert_same_optimum(problem, brute_force(dataclasses.replace(problem, candidates=reduced)),
                            brute_force(problem))
    assert after < before


def test_capacity_groups_change_some_optima() -> None:
    """The caps of the caps instances bind: without them some optima differ or infeasible instances become feasible,
    and every capped plan keeps each group's total use within its limit."""
    changed = 0
    for seed in SEEDS:
        problem = instance("cloud-latency-caps", seed)
        capped = solve(problem)
        free = solve(dataclasses.replace(problem, caps={}))
        for key, cap in problem.caps.items():
            assert sum(c.uses.get(key, 0.0) for c in capped.chosen) <= cap
        if capped.status == DeployStatus.INFEASIBLE:
            assert "caps" in capped.binding["relax"] or not free.chosen
        changed += objective_values(problem, capped.chosen) != objective_values(problem, free.chosen) \
            if capped.chosen else bool(free.chosen)
    assert changed >= 3


@pytest.mark.parametrize("config", ["pool-e2e-slo-quota", "cloud-latency-budget-quota", "cloud-cost-slo-quota",
                                    "cloud-latency-caps"])
def test_unreduced_milp_equals_reduced(config: str) -> None:
    for seed in SEEDS[:8]:
        problem = instance(config, seed)
        assert_same_optimum(problem, solve(problem, reduce=False), solve(problem))


def test_dp_agrees_with_brute_force_on_small_pools() -> None:
    for config in ("pool-e2e", "pool-e2e-slo-quota", "pool-max-stage", "pool-max-stage-slo"):
        for seed in SEEDS:
            problem = instance(config, seed)
            want = brute_force(problem)
            got = pool_dp(problem)
            if want.status == DeployStatus.INFEASIBLE:
                assert got is None
            else:
                assert got == pytest.approx((want.latency_s, want.pool_relaxed))


def large_pool(seed: int, objective: str, pool_gpus: int) -> DeployProblem:
    """3 stages, one or two strategies for every GPU count 1..40 (some infinite), shares dropping below the tail."""
    rng = random.Random(seed)
    table = []
    for i in range(3):
        table.append(tuple(
            Candidate(stage=i, gpu_type="H100", tp=1, pp=1, replicas=g, gpus=g, key=f"s{i}_r{g}_{v}", usd_per_hour=0.0,
                      p95_latency_s=math.inf if g < 2 * i or rng.random() < 0.05
                      else round(8 * (i + 1) * 20 / g ** rng.uniform(0.5, 0.9)) / 8)
            for g in range(1, 41) for v in range(2)))
    return DeployProblem(candidates=tuple(table), shares=(1.0, 0.4, rng.choice([0.2, 0.01])), pool_gpus=pool_gpus,
                         pool_gpu_type="H100", objective=objective, slo_p95_s=rng.choice([None, 30.0]))


@pytest.mark.parametrize("objective", ["e2e", "max-stage"])
@pytest.mark.parametrize("seed", range(4))
def test_milp_equals_dp_on_larger_pools(objective: str, seed: int) -> None:
    """Pools of 48-96 GPUs with 80 candidates per stage: far beyond enumeration, exact by DP."""
    problem = large_pool(seed, objective, pool_gpus=48 + 16 * seed)
    result = solve(problem)
    want = pool_dp(problem)
    assert want is not None and result.status == DeployStatus.OPTIMAL and verify(problem, result) == []
    assert (result.latency_s, result.pool_relaxed) == pytest.approx(want)


@pytest.mark.parametrize("config", ["pool-e2e", "pool-e2e-slo-quota", "pool-max-stage", "pool-max-stage-slo"])
def test_dp_plan_attains_the_optimum(config: str) -> None:
    """The pool DP's backtracked plan is feasible and attains the brute-force optimum."""
    from cascadia_sky.planner.pooldp import pool_plan
    from cascadia_sky.planner.verify import violations

    for seed in SEEDS:
        problem = instance(config, seed)
        want = brute_force(problem)
        got = pool_plan(problem)
        if want.status == DeployStatus.INFEASIBLE:
            assert got is None
            continue
        chosen, relaxed = got
        assert relaxed == want.pool_relaxed and not violations(problem, chosen, pool_relaxed=relaxed)
        assert objective_values(problem, chosen)[0] == pytest.approx(want.latency_s)


def test_round_trips_and_one_region_change_some_optima() -> None:
    """The round-trip instances are not trivial: without the table (or the one-region rule) some optima differ."""
    moved = confined = 0
    for seed in SEEDS:
        problem = instance("cloud-latency-round-trips", seed)
        with_rtt, without = solve(problem), solve(dataclasses.replace(problem, rtt_s={}))
        if with_rtt.chosen and without.chosen:
            moved += not math.isclose(with_rtt.latency_s, without.latency_s)
        one = instance("cloud-latency-one-region", seed)
        free = solve(dataclasses.replace(one, same_region=False))
        confined += bool(free.chosen) and len({(c.cloud, c.region) for c in free.chosen if c.replicas}) > 1
    assert moved >= 5 and confined >= 5, (moved, confined)
