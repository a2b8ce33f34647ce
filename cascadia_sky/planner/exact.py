"""Routing level, exact: the threshold vector that minimises J over every distinct threshold on the profile.

    J(theta) = L(r(theta)) + mu * max(0, (q_min - Q(theta)) / (z1 - z2))

is an exact-penalty form of the epsilon-constraint problem "least L subject to Q >= q_min": with mu large
(10 x L of everything-to-the-last-stage), a target-meeting vector wins whenever one exists, and when none does the
smallest shortfall wins. Two facts make it solvable exactly:

1. Only the profile's distinct scores matter: a threshold between two consecutive scores of a stage routes the
   planning prompts exactly like the next score up. So stage i's thresholds are its distinct scores plus +inf
   ("never accept here"); a cascade of S stages has prod_i (m_i + 1) vectors, and for S <= 3 their quality, its
   confidence bound and their reach counts are computed all at once with (2-D) prefix sums.
2. L depends on theta only through the reach vector r (share of requests reaching each stage): the request
   lengths per stage do not depend on theta (see planner.stage_lengths). And L is monotone in r: a stage's
   deployments are fixed (`StageTable`) and only their latencies grow with its rate, its tail weight
   min(1, r / alpha) grows with r, and a higher latency never helps the objective or the SLO.

Pool mode: L is a separable knapsack over GPUs, so it is computed for *every* vector by the pool DP vectorised
over reach levels (exhaustive; no bound needed). Cloud and local mode: best-first branch and bound over the
distinct reach vectors, each evaluated with the deployment MILP; a vector's bound is its penalty plus the larger
of (a) each stage at its fastest (cheapest) individually feasible deployment and (b) the best L of any evaluated
vector with componentwise smaller reach (monotonicity). The search is proven optimal when the least open bound
reaches the best J; on a time limit it stops and reports the gap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from cascadia_sky.quality import QualityProfile

MAX_EXACT_STAGES = 3


@dataclass(frozen=True)
class ThresholdSpace:
    """Every distinct threshold vector of a profile: grids[i] = stage i's distinct scores, then +inf. Arrays have
    the grid shape (m_0 + 1, ..., m_{S-2} + 1); reach_counts[i] = requests reaching stage i (i >= 1)."""

    grids: tuple[np.ndarray, ...]
    reach_counts: tuple[np.ndarray, ...]     # each broadcastable to `shape` (stage 1's varies along axis 0 only)
    quality: np.ndarray
    quality_bound: np.ndarray       # one-sided lower confidence bound (= quality without a confidence)
    n_prompts: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.quality.shape

    def thresholds(self, index: tuple[int, ...]) -> tuple[float, ...]:
        return tuple(float(g[a]) for g, a in zip(self.grids, index, strict=True))

    def count(self, stage: int, index: tuple[int, ...]) -> int:
        """Requests (planning prompts) reaching `stage` >= 1 at this vector."""
        c = self.reach_counts[stage - 1]
        return int(c[tuple(i if d > 1 else 0 for i, d in zip(index, c.shape, strict=True))])

    def reach(self, index: tuple[int, ...]) -> tuple[float, ...]:
        return (1.0, *(self.count(i, index) / self.n_prompts for i in range(1, len(self.grids) + 1)))

    def full_counts(self, stage: int) -> np.ndarray:
        """Reach counts of `stage` >= 1 broadcast to the full grid shape (a read-only view)."""
        return np.broadcast_to(self.reach_counts[stage - 1], self.shape)


def _prefix2(k: np.ndarray, j: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """H[a, b] = sum of values over prompts with k < a and j < b (a 2-D prefix sum)."""
    flat = np.bincount((k + 1) * shape[1] + (j + 1), weights=values, minlength=shape[0] * shape[1])
    return flat.reshape(shape).cumsum(axis=0).cumsum(axis=1)


def threshold_space(profile: QualityProfile, confidence: float | None) -> ThresholdSpace:
    """Quality, its confidence bound and reach counts of every distinct threshold vector (S <= 3 stages).

    The bound is the one-sided normal bound Q - z_c * sd / sqrt(n) over the planning prompts (the per-prompt
    quality of the returned answer; sd with n - 1).
    """
    s_all, q_all = profile.scores, profile.quality
    n, stages = q_all.shape
    if stages > MAX_EXACT_STAGES:
        raise ValueError(f"exact threshold search supports up to {MAX_EXACT_STAGES} stages, got {stages}")
    grids = tuple(np.append(np.unique(s_all[:, i]), np.inf) for i in range(stages - 1))
    q, q2 = q_all, q_all ** 2
    if stages == 1:
        total, total2 = np.asarray(q[:, 0].sum()), np.asarray(q2[:, 0].sum())
        counts: tuple[np.ndarray, ...] = ()
    else:
        k = np.searchsorted(grids[0][:-1], s_all[:, 0])      # prompt escalates past stage 0 iff k < a
        m0 = grids[0].size
        def pre1(v: np.ndarray) -> np.ndarray:
            return np.concatenate([[0.0], np.cumsum(np.bincount(k, weights=v, minlength=m0 - 1))])
        if stages == 2:
            counts = (pre1(np.ones(n)),)
            total = q[:, 0].sum() - pre1(q[:, 0]) + pre1(q[:, 1])
            total2 = q2[:, 0].sum() - pre1(q2[:, 0]) + pre1(q2[:, 1])
        else:
            j = np.searchsorted(grids[1][:-1], s_all[:, 1])
            shape = (m0, grids[1].size)
            c2 = _prefix2(k, j, np.ones(n), shape)
            counts = (c2[:, -1:], c2)
            # prefix sums are linear: one of (q3 - q2) instead of one each
            total = (q[:, 0].sum() - pre1(q[:, 0]) + pre1(q[:, 1]))[:, None] \
                + _prefix2(k, j, q[:, 2] - q[:, 1], shape)
            total2 = None if confidence is None else (q2[:, 0].sum() - pre1(q2[:, 0]) + pre1(q2[:, 1]))[:, None] \
                + _prefix2(k, j, q2[:, 2] - q2[:, 1], shape)
    counts = tuple(np.rint(c).astype(np.int64) for c in counts)
    quality = np.asarray(total, dtype=float) / n
    bound = quality
    if confidence is not None and n > 1:
        var = np.maximum(np.asarray(total2, dtype=float) - n * quality ** 2, 0.0) / (n - 1)
        bound = quality - NormalDist().inv_cdf(confidence) * np.sqrt(var / n)
    return ThresholdSpace(grids=grids, reach_counts=counts, quality=quality, quality_bound=bound, n_prompts=n)


def normal_lower_bound(profile: QualityProfile, thresholds: list[float], confidence: float) -> float:
    """The one-sided normal lower bound of one vector's quality (as `threshold_space` computes it for all)."""
    stage = profile.route(thresholds)
    q = profile.quality[np.arange(stage.size), stage]
    n = q.size
    if n < 2:
        return float(q.mean())
    total, total2 = float(q.sum()), float((q ** 2).sum())
    mean = total / n
    var = max(total2 - n * mean ** 2, 0.0) / (n - 1)
    return mean - NormalDist().inv_cdf(confidence) * math.sqrt(var / n)


def penalty(space: ThresholdSpace, q_min: float, z1: float, z2: float, mu: float) -> np.ndarray:
    """mu * max(0, (q_min - Q_c) / (z1 - z2)) for every vector (Q_c: the confidence bound when one is asked)."""
    span = max(z1 - z2, 1e-9)
    return mu * np.maximum(0.0, (q_min - space.quality_bound) / span)


@dataclass
class ExactResult:
    """The best vector (grid index), its J, and how the optimum was established."""

    index: tuple[int, ...]
    j: float
    primary: float
    method: str                    # "exhaustive" | "branch-and-bound"
    proven: bool
    gap: float                     # best J - least open bound (0 when proven)
    vectors: int                   # distinct threshold vectors in the space
    evaluations: int               # deployment solves (MILP) or vectors priced by the pool DP
    wall_s: float
    all_primary: np.ndarray | None = None     # pool mode: L of every vector (for the frontier)
    evaluated: dict[tuple[int, ...], float] = field(default_factory=dict)


def dominated_in_row(space: ThresholdSpace, pen: np.ndarray) -> np.ndarray:
    """Vectors that another vector with the same first threshold beats for sure: one with a lower second threshold
    (so no more requests reach the last stage) and no higher penalty. With L monotone in the last stage's reach
    they cannot have a lower J. A mask of the grid shape (all False for 2 stages)."""
    if len(space.shape) < 2:
        return np.zeros(space.shape, dtype=bool)
    # a vector sending no request to the last stage frees its GPUs; with sum = N that need not lower L, so such
    # vectors neither dominate nor are dominated
    live = space.full_counts(2) > 0
    p = np.where(live, pen, np.inf)
    prior = np.minimum.accumulate(p, axis=1)
    exclusive = np.concatenate([np.full((p.shape[0], 1), np.inf), prior[:, :-1]], axis=1)
    return live & (p >= exclusive)


def exhaustive(space: ThresholdSpace, primary: np.ndarray, pen: np.ndarray, priced: int) -> ExactResult:
    """argmin of J = primary + penalty over every vector (ties: the lower index). Vectors left unpriced (nan in
    `primary`) must be dominated ones (`dominated_in_row`)."""
    t0 = time.perf_counter()
    j = np.where(np.isnan(primary), np.inf, primary + pen)
    flat = int(np.argmin(np.where(np.isfinite(j), j, np.inf)))
    index = tuple(int(v) for v in np.unravel_index(flat, space.shape)) if space.shape else ()
    return ExactResult(index=index, j=float(j.flat[flat]), primary=float(primary.flat[flat]), method="exhaustive",
                       proven=True, gap=0.0, vectors=int(j.size), evaluations=priced,
                       wall_s=time.perf_counter() - t0, all_primary=primary)


def branch_and_bound(space: ThresholdSpace, pen: np.ndarray, relax: np.ndarray,
                     evaluate: Callable[[tuple[int, ...]], float], time_limit_s: float,
                     start: tuple[int, ...] | None = None) -> ExactResult:
    """Best-first branch and bound over distinct reach vectors (see the module docstring for the bounds).

    `relax[v]` must be a lower bound on primary(v); `evaluate(index)` returns primary (inf when no deployment).
    Vectors with the same reach vector share L, so only the least penalty per reach vector is kept; and under
    monotonicity a vector whose reach and penalty are both no smaller than another's cannot be better.
    """
    t0 = time.perf_counter()
    shape = space.shape
    idx = np.indices(shape).reshape(len(shape), -1).T if shape else np.zeros((1, 0), dtype=np.int64)
    keys = np.stack([space.full_counts(i).reshape(-1) for i in range(1, len(shape) + 1)], axis=1) if shape else \
        np.zeros((idx.shape[0], 0), dtype=np.int64)
    p = pen.reshape(-1)
    r = relax.reshape(-1)
    # least penalty per reach vector (ties: the first index)
    order = np.lexsort((np.arange(p.size), p, *keys.T[::-1])) if keys.shape[1] else np.argsort(p, kind="stable")
    k_sorted = keys[order]
    first = np.ones(order.size, dtype=bool)
    if keys.shape[1]:
        first[1:] = (k_sorted[1:] != k_sorted[:-1]).any(axis=1)
    else:
        first[1:] = False
    keep = order[first]
    # staircase along the last reach coordinate: within equal leading coordinates, keep strictly falling penalty
    if keys.shape[1]:
        kk = keys[keep]
        lead = kk[:, :-1]
        pk = p[keep]
        group_start = np.ones(keep.size, dtype=bool)
        if lead.shape[1]:
            group_start[1:] = (lead[1:] != lead[:-1]).any(axis=1)
        else:
            group_start[1:] = False
        # exclusive running minimum of the penalty within each group, in exact integer arithmetic: penalty ranks
        # shifted down by a whole rank range per group, so an earlier group never lowers a later group's minimum
        ranks = np.unique(pk, return_inverse=True)[1].astype(np.int64).reshape(-1)
        groups = np.cumsum(group_start) - 1
        shifted = ranks - (int(ranks.max(initial=0)) + 1) * groups
        prior = np.concatenate([[np.iinfo(np.int64).max], np.minimum.accumulate(shifted)[:-1]])
        prior[group_start] = np.iinfo(np.int64).max
        sel = shifted < prior
        keep = keep[sel]
    kk = keys[keep]
    pk = p[keep]
    rk = r[keep]
    mono = np.zeros(keep.size)
    open_ = np.ones(keep.size, dtype=bool)
    best_j, best_t, best_primary = math.inf, -1, math.inf
    evaluated: dict[tuple[int, ...], float] = {}

    def run_eval(t: int) -> None:
        nonlocal best_j, best_t, best_primary
        index = tuple(int(v) for v in idx[keep[t]])
        value = evaluate(index)
        evaluated[index] = value
        open_[t] = False
        j = value + pk[t]
        if j < best_j - 1e-12 or (best_t < 0 and math.isfinite(j)):
            best_j, best_t, best_primary = j, t, value
        dominated = (kk >= kk[t]).all(axis=1) if kk.shape[1] else np.ones(keep.size, dtype=bool)
        np.maximum(mono, np.where(dominated, value, 0.0), out=mono)

    if start is not None:
        hit = np.flatnonzero((idx[keep] == np.asarray(start)).all(axis=1)) if idx.shape[1] else np.array([0])
        if hit.size:
            run_eval(int(hit[0]))
    proven, gap = True, 0.0
    while open_.any():
        bound = np.where(open_, pk + np.maximum(rk, mono), np.inf)
        t = int(np.argmin(bound))
        if bound[t] >= best_j - 1e-12 * max(1.0, abs(best_j)) or not math.isfinite(bound[t]):
            break
        if time.perf_counter() - t0 > time_limit_s:
            proven, gap = False, float(best_j - bound[t])
            break
        run_eval(t)
    if best_t < 0:   # nothing feasible anywhere: report the first vector with its infinite J
        best_t = 0
    index = tuple(int(v) for v in idx[keep[best_t]])
    return ExactResult(index=index, j=best_j, primary=best_primary, method="branch-and-bound", proven=proven,
                       gap=gap, vectors=int(p.size), evaluations=len(evaluated),
                       wall_s=time.perf_counter() - t0, evaluated=evaluated)
