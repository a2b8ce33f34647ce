"""Pool mode solved exactly by dynamic programming over (stage, GPUs used): the one pool DP of the project.

In pool mode the deployment objective is separable: L = sum_i w_i l_i (e2e) or max_i w_i l_i (max-stage), and the
only coupling is the GPU count (sum = N, or <= N when = N is infeasible; a GPU quota on the pool's type lowers
the cap). So best_i[g] = the least objective of stages 0..i on exactly g GPUs, combined stage by stage
(`combine`). The MILP (`deploy.solve`) is checked against it in the tests; the exact threshold search
(`planner/exact.py`) uses the same tables, vectorised over every reach level at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cascadia_sky.errors import PlanError
from cascadia_sky.planner.deploy import Candidate, DeployProblem, validate_problem
from cascadia_sky.planner.verify import gpu_key, stage_weights, within


def pool_cap(problem: DeployProblem) -> int:
    """Most GPUs a plan may use: the pool, or the pool type's quota when lower."""
    if any(k != gpu_key(problem.pool_gpu_type or "") for k in problem.caps):
        raise PlanError("pool DP: only a cap on the pool's own GPU type is supported; use deploy.solve")
    cap = problem.caps.get(gpu_key(problem.pool_gpu_type or ""))
    n = int(problem.pool_gpus or 0)
    return n if cap is None else min(n, int(math.floor(cap + 1e-9)))


def count_table(cands: Sequence[Candidate], cap: int) -> np.ndarray:
    """(cap + 1,) the lowest p95 per GPU count among a stage's candidates (inf where none)."""
    out = np.full(cap + 1, math.inf)
    for c in cands:
        if c.gpus <= cap and c.p95_latency_s < out[c.gpus]:
            out[c.gpus] = c.p95_latency_s
    return out


def combine(prev: np.ndarray, stage: np.ndarray, objective: str) -> np.ndarray:
    """best[..., g] = min over f of prev[..., g - f] (+ or max) stage[..., f]: one more stage on exactly g GPUs.

    `stage` holds weighted latencies w_i l_i per GPU count; leading axes broadcast (many reach levels at once).
    """
    cap = prev.shape[-1] - 1
    shape = np.broadcast_shapes(prev.shape[:-1], stage.shape[:-1]) + (cap + 1,)
    out = np.full(shape, math.inf)
    for f in np.flatnonzero(np.isfinite(stage.reshape(-1, cap + 1)).any(axis=0)):
        lat = stage[..., f:f + 1]
        shifted = prev[..., : cap + 1 - f]
        value = np.maximum(shifted, lat) if objective == "max-stage" else shifted + lat
        np.minimum(out[..., f:], value, out=out[..., f:])
    return out


def pick(best: np.ndarray, n: int, slo: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(L, relaxed) from the last stage's table: sum = N when it has a plan meeting the SLO, else sum <= N.

    Works on (..., cap + 1) arrays; L is inf where no plan exists.
    """
    cap = best.shape[-1] - 1
    ok = np.isfinite(best) if slo is None else best <= slo + 1e-9 * max(1.0, slo)
    exact = np.where(ok[..., n], best[..., n], math.inf) if n <= cap else np.full(best.shape[:-1], math.inf)
    relaxed_value = np.where(ok, best, math.inf).min(axis=-1)
    use_exact = np.isfinite(exact)
    return np.where(use_exact, exact, relaxed_value), ~use_exact & np.isfinite(relaxed_value)


def pool_dp(problem: DeployProblem) -> tuple[float, bool] | None:
    """(optimal L, pool_relaxed) of a pool-mode problem without a budget; None when infeasible."""
    validate_problem(problem)
    if problem.mode != "pool" or problem.budget_usd_per_hour is not None:
        raise PlanError("pool DP: only for pool-mode problems without a budget; use deploy.solve")
    cap = pool_cap(problem)
    best = np.full(cap + 1, math.inf)
    best[0] = 0.0
    for w, cands in zip(stage_weights(problem), problem.candidates, strict=True):
        table = count_table(cands, cap)
        best = combine(best, np.where(np.isfinite(table), table * w if w > 0 else 0.0, math.inf), problem.objective)
    value, relaxed = pick(best, int(problem.pool_gpus or 0), problem.slo_p95_s)
    if not math.isfinite(float(value)):
        return None
    assert problem.slo_p95_s is None or within(float(value), problem.slo_p95_s)
    return float(value), bool(relaxed)


def pool_plan(problem: DeployProblem) -> tuple[tuple[Candidate, ...], bool] | None:
    """The DP's own optimal plan (one candidate per stage, by backtracking) and whether the pool was relaxed; None
    when infeasible. Same optimum as `pool_dp`; ties may pick another plan than the MILP's tie-break."""
    found = pool_dp(problem)
    if found is None:
        return None
    value, relaxed = found
    cap, n = pool_cap(problem), int(problem.pool_gpus or 0)
    weights = stage_weights(problem)
    tables: list[list[Candidate | None]] = []
    bests = [np.where(np.arange(cap + 1) == 0, 0.0, math.inf)]
    for w, cands in zip(weights, problem.candidates, strict=True):
        pick_c: list[Candidate | None] = [None] * (cap + 1)
        lat = np.full(cap + 1, math.inf)
        for c in cands:
            if c.gpus <= cap and c.p95_latency_s < lat[c.gpus]:
                lat[c.gpus], pick_c[c.gpus] = c.p95_latency_s, c
        tables.append(pick_c)
        weighted = np.where(np.isfinite(lat), lat * w if w > 0 else 0.0, math.inf)
        bests.append(combine(bests[-1], weighted, problem.objective))
    op = max if problem.objective == "max-stage" else (lambda a, b: a + b)
    # the GPU total the optimum uses: N, or under relaxation the smallest g reaching the value
    g = n if not relaxed else int(np.flatnonzero(np.isclose(bests[-1], value, rtol=1e-12, atol=1e-12))[0])
    target = value
    chosen: list[Candidate] = []
    for i in range(len(problem.candidates) - 1, -1, -1):
        w = weights[i]
        prev = bests[i]
        for f in range(g + 1):
            c = tables[i][f]
            if c is None or not math.isfinite(prev[g - f]):
                continue
            v = op(prev[g - f], c.p95_latency_s * w if w > 0 else 0.0)
            if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-12):
                chosen.append(c)
                g, target = g - f, prev[g - f]
                break
        else:
            raise PlanError("pool DP: backtracking found no stage choice; please report this")
    return tuple(reversed(chosen)), relaxed
