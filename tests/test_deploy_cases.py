"""Hand-made deployment cases with known answers: the paper's pool MILP, tail weights, caps, fallbacks, reasons,
tie-breaks."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cascadia_sky.errors import PlanError
from cascadia_sky.planner import deploy
from cascadia_sky.planner.bruteforce import brute_force
from cascadia_sky.planner.deploy import Candidate, DeployProblem, DeployStatus, solve
from cascadia_sky.planner.verify import verify


def pool_cand(stage: int, gpus: int, latency: float, tag: str = "") -> Candidate:
    return Candidate(stage=stage, gpu_type="H100", tp=1, pp=1, replicas=gpus, gpus=gpus, p95_latency_s=latency,
                     usd_per_hour=0.0, key=f"s{stage}_H100_r{gpus}{tag}")


def cloud_cand(stage: int, gpu_type: str, gpus: int, latency: float, usd: float) -> Candidate:
    return Candidate(stage=stage, gpu_type=gpu_type, tp=1, pp=1, replicas=gpus, gpus=gpus, p95_latency_s=latency,
                     usd_per_hour=usd, key=f"s{stage}_{gpu_type}_r{gpus}_{usd:g}", cloud="aws",
                     gpus_per_instance=1, instances=gpus)


def pool_problem(latencies: list[list[float]], n: int, shares: tuple[float, ...], **kw) -> DeployProblem:
    """latencies[i][f-1] = l_i(f), the paper's best strategy per GPU count."""
    table = tuple(tuple(pool_cand(i, f + 1, lat) for f, lat in enumerate(row)) for i, row in enumerate(latencies))
    return DeployProblem(candidates=table, shares=shares, pool_gpus=n, pool_gpu_type="H100", **kw)


def cloud_problem(table: list[list[Candidate]], shares: tuple[float, ...], **kw) -> DeployProblem:
    return DeployProblem(candidates=tuple(tuple(s) for s in table), shares=shares, mode="cloud", **kw)


def solved(problem: DeployProblem) -> deploy.DeployResult:
    result = solve(problem)
    assert verify(problem, result) == []
    return result


PAPER = [[4, 2, 1.5, 1.2], [8, 4, 3, 2.5]]


def test_pool_e2e_sums_the_path() -> None:
    result = solved(pool_problem(PAPER, 4, (1.0, 0.5)))
    assert [c.gpus for c in result.chosen] == [2, 2] and result.latency_s == 6
    assert result.status == DeployStatus.OPTIMAL and result.gpus == 4 and not result.pool_relaxed
    assert result.binding["critical"] == {"objective": "e2e", "stages": [0, 1], "latency_s": 6}


def test_pool_max_stage_is_the_paper_objective_with_a_tie_break() -> None:
    """(1,3) and (2,2) both give L = 4; the tie-break (share-weighted latency) prefers (2,2): 2 + 0.5*4 < 4 + 0.5*3."""
    result = solved(pool_problem(PAPER, 4, (1.0, 0.5), objective="max-stage"))
    assert [c.gpus for c in result.chosen] == [2, 2] and result.latency_s == 4
    assert result.binding["critical"] == {"objective": "max-stage", "stages": [1], "latency_s": 4}


def test_tail_weights_make_a_small_stage_count_smoothly() -> None:
    """Stage 2 (0.5 % of requests, tail fraction 5 %) counts with weight 0.1: L = l0 + l1 + 0.1 l2, best (2, 2, 2)
    with 2 + 4 + 5 = 11. Counted fully (tail fraction 0.5 %): (1, 1, 4) with 4 + 8 + 30. Reached by no request,
    it gets no GPUs: (3, 3, 0) and (2, 4, 0) both give 4.5, the share-weighted tie-break picks (3, 3, 0)."""
    rows = [[4, 2, 1.5, 1.2, 1.0], [8, 4, 3, 2.5, 2.2], [100, 50, 40, 30, 25]]
    tiny = pool_problem(rows, 6, (1.0, 0.5, 0.005), tail_fraction=0.05)
    result = solved(tiny)
    assert result.latency_s == pytest.approx(11) and [c.gpus for c in result.chosen] == [2, 2, 2]
    assert result.binding["stages"][2]["binds_latency"] is True
    counted = solved(dataclasses.replace(tiny, tail_fraction=0.005))
    assert counted.latency_s == 42 and [c.gpus for c in counted.chosen] == [1, 1, 4]
    off = Candidate(stage=2, gpu_type="H100", tp=1, pp=1, replicas=0, gpus=0, p95_latency_s=0.0, usd_per_hour=0.0,
                    key="s2_off")
    idle = solved(dataclasses.replace(tiny, shares=(1.0, 0.5, 0.0), candidates=tiny.candidates[:2] + ((off,),)))
    assert idle.latency_s == 4.5 and [c.gpus for c in idle.chosen] == [3, 3, 0] and not idle.pool_relaxed


def test_caps_cover_any_resource_a_candidate_uses() -> None:
    """A cap on a resource beyond GPUs (e.g. an account's vCPU quota per instance family) binds like a GPU quota."""
    def cand(stage: int, gpus: int, latency: float, vcpus: float) -> Candidate:
        return dataclasses.replace(cloud_cand(stage, "A", gpus, latency, float(gpus)), uses={"vcpu:aws:p": vcpus})
    table = [[cand(0, 1, 2.0, 8), cand(0, 2, 1.0, 48)], [cand(1, 1, 4.0, 8), cand(1, 2, 2.0, 48)]]
    free = solved(cloud_problem(table, (1.0, 0.5)))
    assert [c.gpus for c in free.chosen] == [2, 2]
    capped = cloud_problem(table, (1.0, 0.5), caps={"vcpu:aws:p": 60, "gpu:A": 4})
    result = solved(capped)
    assert [c.gpus for c in result.chosen] == [1, 2] and result.latency_s == 4.0
    assert result.binding["constraints"]["cap:vcpu:aws:p"]["used"] == 56
    assert brute_force(capped).latency_s == result.latency_s
    assert any("cap vcpu:aws:p" in e for e in verify(dataclasses.replace(capped, caps={"vcpu:aws:p": 50}), result))


def test_pool_falls_back_to_fewer_gpus_and_says_so() -> None:
    table = tuple(tuple(pool_cand(i, g, 10 / g) for g in (2, 4)) for i in range(2))
    problem = DeployProblem(candidates=table, shares=(1.0, 1.0), pool_gpus=7, pool_gpu_type="H100")
    result = solved(problem)
    assert result.pool_relaxed and result.gpus == 6 and "sum = N" in result.reason
    assert brute_force(problem).pool_relaxed


@pytest.mark.parametrize("case", ["pool", "candidates", "budget", "quota", "slo"])
def test_infeasible_says_what_to_relax(case: str) -> None:
    if case == "pool":
        problem = pool_problem([[math.inf, math.inf, 1.0], [math.inf, math.inf, 2.0]], 4, (1.0, 1.0))
        relax, words = ["pool_gpus"], "needs 6 GPUs, the pool has 4"
    elif case == "candidates":
        problem = pool_problem([[1.0, 0.5], [math.inf, math.inf]], 4, (1.0, 1.0))
        relax, words = ["candidates"], "stage 1: no candidate sustains its workload"
    else:
        table = [[cloud_cand(0, "A", 4, 1.0, 2.0), cloud_cand(0, "A", 8, 0.5, 4.0)],
                 [cloud_cand(1, "A", 4, 2.0, 1.0), cloud_cand(1, "A", 8, 1.0, 2.0)]]
        knobs = {"budget": dict(budget_usd_per_hour=2.5), "quota": dict(caps={"gpu:A": 6}),
                 "slo": dict(goal="min-cost", slo_p95_s=1.0)}[case]
        problem = cloud_problem(table, (1.0, 0.5), **knobs)
        relax, words = {"budget": (["budget_usd_per_hour"], "the cheapest plan meeting the other constraints costs $3"),
                        "quota": (["caps"], "gpu:A: 16 (limit 6)"),
                        "slo": (["slo_p95_s"], "lowest p95 within the other constraints is 1.5 s")}[case]
    result = solve(problem)
    assert result.status == DeployStatus.INFEASIBLE and result.chosen == () and math.isinf(result.latency_s)
    assert result.binding["relax"] == relax and words in result.reason, result.reason
    assert brute_force(problem).status == DeployStatus.INFEASIBLE


def test_min_latency_breaks_ties_by_cost_and_explains_it() -> None:
    table = [[cloud_cand(0, "A", 2, 1.0, 10.0), cloud_cand(0, "B", 1, 2.0, 1.0)], [cloud_cand(1, "A", 2, 3.0, 1.0)]]
    result = solved(cloud_problem(table, (1.0, 0.5), objective="max-stage"))
    assert result.chosen[0].usd_per_hour == 1.0 and result.latency_s == 3.0 and result.usd_per_hour == 2.0
    assert "would not lower L" in result.binding["stages"][0]["reason"]


def test_min_cost_breaks_ties_by_latency() -> None:
    table = [[cloud_cand(0, "A", 2, 1.0, 2.0), cloud_cand(0, "A", 1, 2.0, 1.0)],
             [cloud_cand(1, "A", 2, 1.0, 1.0), cloud_cand(1, "B", 1, 3.0, 1.0)]]
    problem = cloud_problem(table, (1.0, 0.5), goal="min-cost", caps={"gpu:A": 10, "gpu:B": 10})
    for result in (solved(problem), solve(problem, reduce=False)):
        assert result.usd_per_hour == 2.0 and result.latency_s == 3.0 and result.chosen[1].gpu_type == "A"


def test_binding_names_the_constraint_that_holds_a_stage_back() -> None:
    table = [[cloud_cand(0, "A", 2, 1.0, 10.0), cloud_cand(0, "B", 1, 2.0, 1.0)], [cloud_cand(1, "A", 2, 1.0, 1.0)]]
    result = solved(cloud_problem(table, (1.0, 0.5), budget_usd_per_hour=5.0))
    assert result.binding["stages"][0]["blocked_by"] == ["budget_usd_per_hour"]
    assert result.binding["constraints"]["budget_usd_per_hour"] == {"used": 2.0, "limit": 5.0, "blocks_stages": [0]}
    cheap = solved(cloud_problem(table, (1.0, 0.5), goal="min-cost", slo_p95_s=2.5))
    assert cheap.chosen[0].usd_per_hour == 10.0 and cheap.binding["stages"][0]["blocked_by"] == ["slo_p95_s"]
    pool = solved(pool_problem(PAPER, 4, (1.0, 0.5)))
    assert pool.binding["stages"][0]["blocked_by"] == ["pool_gpus"]
    assert "all 4 pool GPUs are assigned" in pool.binding["stages"][0]["reason"]


@pytest.mark.parametrize("change, words", [
    (dict(shares=(1.0, 0.7)), "give one share per stage"),
    (dict(shares=(1.0, 0.2, 0.5)), "must start at 1 and not increase"),
    (dict(goal="min-cost"), "min-cost needs cloud mode"),
    (dict(pool_gpus=None), "pool mode needs pool_gpus"),
    (dict(pool_gpu_type="A100"), "in a pool of A100"),
    (dict(slo_p95_s=0.0), "slo_p95_s must be > 0"),
])
def test_bad_problem_data_raises_one_clear_error(change: dict, words: str) -> None:
    problem = pool_problem([[1.0], [2.0], [3.0]], 3, (1.0, 0.5, 0.2))
    with pytest.raises(PlanError, match=words):
        solve(dataclasses.replace(problem, **change))


@pytest.mark.parametrize("bad, words", [
    (dict(gpus=3), "gpus must equal tp\\*pp\\*replicas"),
    (dict(stage=1), "listed under stage 0"),
    (dict(p95_latency_s=float("nan")), "p95_latency_s must be"),
    (dict(key="s0_H100_r2"), "not unique"),
])
def test_bad_candidates_raise(bad: dict, words: str) -> None:
    problem = pool_problem(PAPER, 4, (1.0, 0.5))
    first = dataclasses.replace(problem.candidates[0][0], **bad)
    with pytest.raises(PlanError, match=words):
        solve(dataclasses.replace(problem, candidates=((first,) + problem.candidates[0][1:],) + problem.candidates[1:]))


def test_model_names_are_deterministic(tmp_path: Path) -> None:
    problem = pool_problem(PAPER, 4, (1.0, 0.5), slo_p95_s=9.0)
    texts = []
    for n in range(2):
        model = deploy._build(problem, deploy.reduce_candidates(problem), pool_le=False)
        model.prob.setObjective(deploy._objectives(model)[0])
        model.prob.writeLP(str(tmp_path / f"m{n}.lp"))
        texts.append((tmp_path / f"m{n}.lp").read_text())
    assert texts[0] == texts[1]
    assert "x_s1_H100_r3" in texts[0] and "latency_tail:" in texts[0] and "pool:" in texts[0] and "slo:" in texts[0]


def test_solver_status_mapping() -> None:
    import pulp
    assert deploy._status_of(pulp.LpStatusOptimal, pulp.LpSolutionOptimal) == DeployStatus.OPTIMAL
    assert deploy._status_of(pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible) == DeployStatus.FEASIBLE
    assert deploy._status_of(pulp.LpStatusInfeasible, pulp.LpSolutionInfeasible) == DeployStatus.INFEASIBLE
    assert deploy._status_of(pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound) == DeployStatus.TIME_LIMIT
    assert deploy._status_of(pulp.LpStatusUndefined, pulp.LpSolutionNoSolutionFound) == DeployStatus.ERROR


def test_importing_the_planner_does_not_import_pulp() -> None:
    code = ("import sys, cascadia_sky.planner, cascadia_sky.planner.deploy, cascadia_sky.planner.verify, "
            "cascadia_sky.planner.bruteforce; assert 'pulp' not in sys.modules, 'pulp imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
