"""Routing level, heuristic: the coordinate search over thresholds, for cascades of four or more stages.

Up to three stages the planner uses the exact search of `exact.py` (same J, proven optimal); this search remains
for longer cascades, and its plans say `solver.search = "heuristic"`. It minimises the exact-penalty form of "least
L subject to Q >= q_min" (the paper calls its scalarisation Chebyshev-guided)

    J(theta) = L(theta) + mu * max(0, (q_min - Q(theta)) / (z1 - z2))

where L(theta) is the optimum of the deployment MILP for the per-stage workloads that theta induces, Q(theta) the
mean quality of the answers actually returned, z1 the quality when the last stage answers everything and z2 when the
first stage does. The quality term is normalised by the achievable range so that mu is in seconds: missing the
target by the whole range costs mu seconds.

Procedure (ours; the paper leaves it open):
1. Candidate thresholds per non-final stage are quantiles of that stage's scores on the planning prompts, plus
   +inf ("never accept here") — so every threshold vector is a real split of the profile.
2. Start from theta = (+inf, ..., +inf): everything reaches the last stage, Q = z1 >= q_min, a feasible point.
3. Joint screening (cascades of three or more stages): every vector of a coarse product grid (at most
   `joint_points` vectors) is scored by penalty + lower bound, and the deployment level is solved in that order
   until the bound exceeds the best J (branch and bound). Moving one threshold at a time cannot trade stage 1's
   threshold against stage 2's under a binding quality target; this round can.
4. Coordinate descent: for each non-final stage in turn, try every candidate threshold with the others fixed and
   keep the best J. A deployment solve is skipped when the quality penalty alone already exceeds the best J
   (L >= 0, so J cannot win), or when the penalty plus a cheap lower bound on L does (each stage at its fastest
   candidate, ignoring the GPU pool and budget) — exact pruning, not a heuristic. Deployment results are cached
   per threshold vector.
5. A round is one pass over the stages. After a round, the grid around each incumbent threshold is refined
   (the quantiles between its neighbours are added), so a later round can still improve. The search stops when J
   has not improved by more than a relative `tolerance` for K consecutive rounds, or after `max_rounds`.

mu defaults to 10 x L(all to last stage): any plan that misses the target by a tenth of the quality range costs
as much as serving everything with the largest model, so the search returns target-meeting plans whenever they
exist, yet can still compare two infeasible plans (smaller shortfall wins) when none meets the target.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

Thresholds = tuple[float, ...]


@dataclass(frozen=True)
class Evaluation:
    """One threshold vector, its quality and its deployment outcome."""

    thresholds: Thresholds
    quality: float
    latency_s: float          # L(theta); inf when no deployment exists
    usd_per_hour: float
    j: float
    deployment: Any = None    # the deployment result (opaque here)


@dataclass
class SearchResult:
    best: Evaluation
    evaluations: list[Evaluation] = field(default_factory=list)
    rounds: int = 0
    deployment_solves: int = 0
    pruned: int = 0
    wall_s: float = 0.0
    mu_s: float = 0.0
    stable_rounds: int = 0

    def frontier(self) -> list[Evaluation]:
        """Pareto-optimal evaluations: no other one has both lower latency and higher quality."""
        pts = sorted((e for e in self.evaluations if math.isfinite(e.latency_s)),
                     key=lambda e: (e.latency_s, -e.quality))
        out: list[Evaluation] = []
        best_q = -math.inf
        for e in pts:
            if e.quality > best_q + 1e-12:
                out.append(e)
                best_q = e.quality
        return out


def objective_j(latency_s: float, quality: float, q_min: float, z1: float, z2: float, mu_s: float) -> float:
    """J = L + mu * max(0, (q_min - Q) / (z1 - z2)); the range is floored so a flat profile cannot divide by 0."""
    span = max(z1 - z2, 1e-9)
    return latency_s + mu_s * max(0.0, (q_min - quality) / span)


def threshold_grid(scores: np.ndarray, n: int) -> np.ndarray:
    """Quantiles of one stage's scores (unique, ascending) plus +inf."""
    qs = np.quantile(scores, np.linspace(0.0, 1.0, n))
    return np.unique(np.append(qs, np.inf))


def _refine(grid: np.ndarray, scores: np.ndarray, incumbent: float, extra: int) -> np.ndarray:
    """Add `extra` score quantiles between the incumbent's neighbours in the grid."""
    finite = grid[np.isfinite(grid)]
    if not math.isfinite(incumbent) or finite.size == 0:
        lo, hi = (finite[-1] if finite.size else -np.inf), np.inf
    else:
        i = int(np.searchsorted(finite, incumbent))
        lo = finite[max(i - 1, 0)]
        hi = finite[min(i + 1, finite.size - 1)]
    inside = scores[(scores >= lo) & (scores <= hi)] if math.isfinite(hi) else scores[scores >= lo]
    if inside.size == 0:
        return grid
    new = np.quantile(inside, np.linspace(0.0, 1.0, extra + 2))
    return np.unique(np.concatenate([grid, new]))


def chebyshev_search(
    stage_scores: Sequence[np.ndarray],
    quality_of: Callable[[Thresholds], float],
    deploy: Callable[[Thresholds], tuple[float, float, Any]],
    q_min: float,
    z1: float,
    z2: float,
    *,
    grid_points: int,
    refine_points: int,
    stable_rounds: int,
    max_rounds: int,
    tolerance: float,
    mu_s: float | None = None,
    lower_bound: Callable[[Thresholds], float] | None = None,
    joint_points: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Minimise J over threshold vectors (one per non-final stage). See the module docstring for the procedure.

    `deploy(theta)` returns (L, $/h, opaque result) and is the expensive call; `quality_of(theta)` is cheap.
    `lower_bound(theta)`, if given, is a cheap bound L(theta) >= bound that lets more deployment solves be skipped.
    """
    t0 = time.perf_counter()
    n = len(stage_scores)
    grids = [threshold_grid(s, grid_points) for s in stage_scores]
    cache: dict[Thresholds, tuple[float, float, Any]] = {}
    evaluations: list[Evaluation] = []
    solves = 0
    pruned = 0

    def run_deploy(theta: Thresholds) -> tuple[float, float, Any]:
        nonlocal solves
        if theta not in cache:
            cache[theta] = deploy(theta)
            solves += 1
        return cache[theta]

    start: Thresholds = tuple([math.inf] * n)
    l0, c0, d0 = run_deploy(start)
    if mu_s is None:
        mu_s = 10.0 * l0 if math.isfinite(l0) and l0 > 0 else 1e4
    q0 = quality_of(start)
    best = Evaluation(start, q0, l0, c0, objective_j(l0, q0, q_min, z1, z2, mu_s), d0)
    evaluations.append(best)
    seen: set[Thresholds] = {start}

    def bound_of(theta: Thresholds, q: float) -> float:
        """Penalty, plus the lower bound on L unless the penalty alone already prunes (the bound costs a solve)."""
        penalty = objective_j(0.0, q, q_min, z1, z2, mu_s)
        if penalty >= best.j or lower_bound is None:
            return penalty
        return penalty + lower_bound(theta)

    def evaluate(theta: Thresholds, q: float) -> None:
        """Solve the deployment level for theta, record it, and keep it if J improves."""
        nonlocal best
        lat, cost, dep = run_deploy(theta)
        ev = Evaluation(theta, q, lat, cost, objective_j(lat, q, q_min, z1, z2, mu_s), dep)
        evaluations.append(ev)
        if ev.j < best.j - 1e-12:
            best = ev

    if n >= 2 and joint_points > 0:
        per_dim = max(2, int(round(joint_points ** (1.0 / n))))
        coarse = [threshold_grid(s, per_dim - 1) for s in stage_scores]
        queue: list[tuple[float, Thresholds, float]] = []
        for combo in itertools.product(*coarse):
            theta = tuple(float(v) for v in combo)
            if theta in seen:
                continue
            seen.add(theta)
            q = quality_of(theta)
            bound = bound_of(theta, q)
            if bound >= best.j:
                pruned += 1
                continue
            queue.append((bound, theta, q))
        queue.sort()
        for k, (bound, theta, q) in enumerate(queue):
            if bound >= best.j:
                pruned += len(queue) - k
                break
            evaluate(theta, q)
        if progress:
            progress(f"joint screening: J={best.j:.3f}s L={best.latency_s:.3f}s Q={best.quality:.4f} "
                     f"({solves} deployment solves)")

    stable = 0
    rounds = 0
    while rounds < max_rounds and (n > 0) and stable < stable_rounds:
        rounds += 1
        j_before = best.j
        for i in range(n):
            for v in grids[i]:
                theta = best.thresholds[:i] + (float(v),) + best.thresholds[i + 1:]
                if theta in seen:
                    continue
                seen.add(theta)
                q = quality_of(theta)
                if bound_of(theta, q) >= best.j:
                    pruned += 1
                    continue
                evaluate(theta, q)
        improved = best.j < j_before * (1.0 - tolerance) if math.isfinite(j_before) else math.isfinite(best.j)
        stable = 0 if improved else stable + 1
        if progress:
            progress(f"round {rounds}: J={best.j:.3f}s L={best.latency_s:.3f}s Q={best.quality:.4f} "
                     f"({solves} deployment solves)")
        grids = [_refine(g, s, best.thresholds[i], refine_points) for i, (g, s) in enumerate(zip(grids, stage_scores))]

    if n == 0:
        stable = stable_rounds
    return SearchResult(best=best, evaluations=evaluations, rounds=rounds, deployment_solves=solves, pruned=pruned,
                        wall_s=time.perf_counter() - t0, mu_s=mu_s, stable_rounds=stable)
