"""Serving a workload on a vLLM replica: continuous batching with chunked prefill, closed and open loop.

Notation: `T(b, p)` is the step time of `step.py` for b decode and p prefill tokens; q = budget - b the prefill
room of a step (vLLM schedules running decodes first); pp the pipeline depth (pp microbatches of b = B/pp requests
are in flight, each stage doing 1/pp of the work, so prefill work is shared by pp stages).

Every request pays a fixed host cost before its first token (HTTP, tokenisation, engine IPC, streaming:
VLLM_REQUEST_OVERHEAD_MS). Prefill is chunked: `ttft_pf(isl) = sum_j T(b, chunk_j)` (chunks of q tokens), and
the extra time it adds to the engine is `dT(isl) = sum_j [T(b, chunk_j) - T(b, 0)]`.

Decode: B requests decoding, arrivals lambda per second. Prefill takes a share rho = lambda * E[dT] / pp of the
engine's time, so one decode step lasts on average

    s = T(B/pp, 0) / (1 - rho)          (= TPOT; the prefills of others stall my decode steps)

and Little's law closes the loop: lambda * E[osl] = B / s. B is capped by the KV cache (requests hold on average
isl + osl/2 tokens) and by vLLM's max_num_seqs; the rate at the cap is the replica's highest sustainable rate.

Closed loop (a benchmark with C clients): B = min(C, cap) run; in one cycle D = TTFT + (osl - 1) s of a client the
other B - 1 prefill once, so rho = (B - 1) dT / (pp D), solved with s and TTFT by bisection. The C - B requests
over the cap wait W = (C - B)/B * (ttft + (osl - 1) s); vLLM pays the prompt's share f = isl / (isl + osl/2) of
it before the first token (no blocks for the prompt) and the rest as preemption stalls while decoding. TTFT adds
the residual of the running step (s/2) and an M/D/1 wait for the prefill server (rho * dT / (2 (1 - rho))).
A benchmark starts all C clients at once; with N prompts per client, 1/N of the requests see that cold start
(all C prompts queued, chunks of `budget` tokens served in order).

Open loop (Poisson arrivals, lengths drawn from a distribution, DP replicas sharing the rate evenly): B solves
Little's law on a grid; TTFT_i = s/2 + ttft_pf(isl_i) + waits, e2e_i = TTFT_i + (osl_i - 1) s. Two random waits
are added: the prefill queue (M/G/1: P(wait) = rho, mean lambda E[S^2] / (2 (1 - rho)) with S = dT/pp) and, near
the cap, admission to one of c = cap slots (M/M/c, Sakasegawa: P(wait) = u^sqrt(2(c+1)), conditional mean
D / (c (1 - u)), u = lambda / lambda_max, D the mean time in service). Percentiles of e2e are those of the mixture
of the per-request deterministic part and these exponential waits.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascadia_sky.constants import VLLM_REQUEST_OVERHEAD_MS
from cascadia_sky.errors import PerfError
from cascadia_sky.perf.step import Deployment, StepModel, max_running, step_model

_GRID = 48                # B grid points for the open-loop fixed point
_REQUEST_S = VLLM_REQUEST_OVERHEAD_MS * 1e-3
_QUANTILE_POINTS = 64     # equal-weight points standing for the e2e distribution in percentile maths
_QUANTILE_BISECTIONS = 12 # a percentile is found to 1/4096 of its bracket (d's quantile .. d's max + wait tail)
_CELLS = 16               # quantile bins per length axis when compressing a length distribution


@dataclass(frozen=True)
class ClosedLoopEstimate:
    """A closed-loop benchmark's mean figures (C clients, fixed lengths), as vLLM's benchmark reports them."""

    ttft_s: float
    tpot_s: float
    e2e_s: float
    running: float                 # requests decoding at once (capped by KV cache and max_num_seqs)
    throughput_rps: float
    output_tokens_per_s: float
    kv_limited: bool               # some clients wait for KV-cache room


@dataclass(frozen=True)
class LengthDist:
    """Input and output token lengths of requests: samples, optionally weighted."""

    input_tokens: np.ndarray
    output_tokens: np.ndarray
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        i = np.asarray(self.input_tokens, dtype=float).ravel()
        o = np.asarray(self.output_tokens, dtype=float).ravel()
        if i.size == 0 or i.shape != o.shape:
            raise PerfError("LengthDist: input_tokens and output_tokens must be non-empty and of equal length")
        w = np.ones_like(i) if self.weights is None else np.asarray(self.weights, dtype=float).ravel()
        if w.shape != i.shape or np.any(w < 0) or w.sum() <= 0:
            raise PerfError("LengthDist: weights must be non-negative, one per sample, not all zero")
        object.__setattr__(self, "input_tokens", np.maximum(i, 1.0))
        object.__setattr__(self, "output_tokens", np.maximum(o, 1.0))
        object.__setattr__(self, "weights", w / w.sum())

    @classmethod
    def fixed(cls, isl: int, osl: int) -> LengthDist:
        """Every request has the same lengths."""
        return cls(np.array([float(isl)]), np.array([float(osl)]))

    @functools.cached_property
    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """At most _CELLS^2 weighted (isl, osl) points: equal-count bins per axis, each at its weighted mean."""
        i, o, w = self.input_tokens, self.output_tokens, self.weights
        assert w is not None
        n = i.size
        if n <= _CELLS * _CELLS:
            return i, o, w
        cell = _rank_bins(i) * _CELLS + _rank_bins(o)
        size = _CELLS * _CELLS
        cw = np.bincount(cell, w, size)
        keep = cw > 0
        return (np.bincount(cell, w * i, size)[keep] / cw[keep], np.bincount(cell, w * o, size)[keep] / cw[keep],
                cw[keep])


def _rank_bins(x: np.ndarray) -> np.ndarray:
    """Bin index 0.._CELLS-1 by rank (equal-count bins; ties may straddle a boundary)."""
    rank = np.empty(x.size, dtype=np.int64)
    rank[np.argsort(x, kind="stable")] = np.arange(x.size)
    return rank * _CELLS // x.size


@dataclass(frozen=True)
class OpenLoopEstimate:
    """Latency of Poisson traffic on one replica (figures in seconds; percentiles over requests)."""

    ttft_p50_s: float
    ttft_mean_s: float
    tpot_s: float
    e2e_p50_s: float
    e2e_p95_s: float
    max_rate_rps: float            # highest sustainable rate per replica
    utilization: float             # rate per replica / max_rate_rps
    stable: bool
    running: float                 # mean requests decoding at once


def _checked(dep: Deployment) -> StepModel:
    sm = step_model(dep)
    if sm.invalid:
        raise PerfError(sm.invalid)
    if sm.kv_avail_bytes <= 0:
        raise PerfError(f"{dep.model.name} ({dep.precision}) leaves no KV-cache memory on {dep.tp * dep.pp} x "
                        f"{dep.gpu.name}; use more GPUs or a lower precision")
    return sm


def _prefill(sm: StepModel, b: float | np.ndarray, isl: np.ndarray, c_dec: float) -> tuple[np.ndarray, np.ndarray]:
    """(time to the first token, extra engine time) of prefilling prompts of `isl` tokens beside b decodes."""
    q = np.maximum(sm.budget_tokens - b, 1.0)
    full = np.floor(isl / q)
    rest = isl - full * q
    span = isl / 2.0
    base = sm.step_time(b, 0.0, c_dec, 0.0)
    t_full = sm.step_time(b, q, c_dec, span, b + 0.0)
    t_rest = np.where(rest > 0, sm.step_time(b, rest, c_dec, span, b + 1.0), 0.0)
    ttft = full * t_full + t_rest
    extra = full * (t_full - base) + np.where(rest > 0, t_rest - base, 0.0)
    return ttft, np.maximum(extra, 0.0)


def closed_loop(dep: Deployment, concurrency: int, isl: int, osl: int,
                prompts_per_client: float | None = None) -> ClosedLoopEstimate:
    """Mean TTFT and TPOT of C clients each sending one request after another (fixed isl/osl).

    `prompts_per_client` (the benchmark's prompts / concurrency) adds the cold start of a benchmark where all
    clients start together; None gives the steady state.
    """
    if concurrency < 1 or isl < 1 or osl < 1:
        raise PerfError(f"concurrency, isl and osl must be >= 1 (got {concurrency}, {isl}, {osl})")
    sm = _checked(dep)
    footprint = isl + osl / 2.0
    cap_kv = max_running(sm, footprint)
    if cap_kv < 1.0 and sm.request_kv_bytes(isl + osl) > sm.kv_avail_bytes:
        raise PerfError(f"one {isl}+{osl}-token request does not fit the KV cache of {dep.model.name} on "
                        f"{dep.gpus} x {dep.gpu.name}; use more GPUs or a lower precision")
    cap = max(1.0, cap_kv)
    running = min(float(concurrency), cap)
    c_dec = footprint
    ttft, s = _steady(sm, running, isl, osl, c_dec)
    e2e_run = ttft + (osl - 1) * s
    ttft_out, tpot_out = ttft, s
    kv_limited = concurrency > cap + 1e-9
    if kv_limited:
        wait = (concurrency - cap) / cap * e2e_run
        share = 1.0 if cap >= sm.max_seqs else isl / footprint
        ttft_out += share * wait
        if osl > 1:
            tpot_out += (1 - share) * wait / (osl - 1)
    if prompts_per_client:
        ttft_out = ttft_out * (1 - 1 / prompts_per_client) + _cold_start(sm, concurrency, isl, osl, cap) \
            / prompts_per_client
    e2e = ttft_out + (osl - 1) * tpot_out
    return ClosedLoopEstimate(ttft_s=ttft_out, tpot_s=tpot_out, e2e_s=e2e, running=running,
                              throughput_rps=concurrency / e2e, output_tokens_per_s=concurrency * osl / e2e,
                              kv_limited=kv_limited)


def _steady(sm: StepModel, running: float, isl: int, osl: int, c_dec: float) -> tuple[float, float]:
    """(TTFT, TPOT) of `running` clients in steady state: solve for the prefill share rho by bisection.

    rho -> s = T0/(1 - rho), TTFT = s/2 + pf + rho a/(2(1 - rho)), D = TTFT + (osl-1) s, and the others'
    prefills imply rho' = (running - 1) a / D, decreasing in rho; the fixed point rho' = rho is unique.
    """
    pp = sm.dep.pp
    b = running / pp
    t0 = float(sm.step_time(b, 0.0, c_dec, 0.0))
    pf_a, extra_a = _prefill(sm, b, np.array([float(isl)]), c_dec)
    pf, a = float(pf_a[0]), float(extra_a[0]) / pp

    def times(rho: float) -> tuple[float, float]:
        s = t0 / (1.0 - rho)
        return _REQUEST_S + s / 2 + pf + rho * a / (2 * (1.0 - rho)), s

    lo, hi = 0.0, 0.999
    for _ in range(50):
        mid = (lo + hi) / 2
        ttft, s = times(mid)
        implied = (running - 1) * a / (ttft + (osl - 1) * s)
        lo, hi = (mid, hi) if implied > mid else (lo, mid)
    return times(lo)


def _cold_start(sm: StepModel, concurrency: int, isl: int, osl: int, cap: float) -> float:
    """Mean TTFT of the first round: all prompts queued at once, served in budget-sized chunks in order.

    Step k prefills the next `budget` queued tokens beside the requests already decoding; request j has its
    first token when the step holding its last prompt token ends. Prompts beyond the KV cache wait for a
    request of the first round to finish.
    """
    pp, budget = sm.dep.pp, float(sm.budget_tokens)
    admitted = int(min(concurrency, max(1.0, sm.kv_avail_bytes / float(sm.request_kv_bytes(isl + 1)))))
    total = admitted * float(isl)
    k = np.arange(math.ceil(total / budget), dtype=float)
    tokens = np.minimum(budget, total - k * budget)
    decoding = np.minimum(np.floor(k * budget / isl), cap) / pp
    done = np.cumsum(sm.step_time(decoding, tokens, isl + 1.0, isl / 2.0, decoding + 1.0))
    last_step = np.ceil(np.arange(1, admitted + 1) * isl / budget).astype(int) - 1
    first = float(done[last_step].mean())
    if concurrency > admitted:
        later = float(done[-1]) + (osl - 1) * float(sm.step_time(cap / pp, 0.0, isl + osl / 2.0, 0.0))
        first = (admitted * first + (concurrency - admitted) * later) / concurrency
    return first


@dataclass(frozen=True)
class _Prepared:
    """The rate-independent part of `open_loop` for one replica shape and length distribution."""

    sm: StepModel
    pp: int
    isl: np.ndarray
    osl: np.ndarray
    w: np.ndarray
    osl_m: float
    c_dec: float
    cap: float
    e0: float
    e1: float
    grid: np.ndarray
    t0: np.ndarray
    ex: np.ndarray
    max_rate: float


def _prepare(dep: Deployment, lengths: LengthDist) -> _Prepared:
    sm = _checked(dep)
    pp = dep.pp
    isl, osl, w = lengths.cells
    osl_m = float(w @ osl)
    c_dec = float(w @ (osl * (isl + osl / 2))) / osl_m
    cap = max_running(sm, c_dec)
    if cap < 1.0:
        raise PerfError(f"the KV cache of {dep.model.name} on {dep.gpus} x {dep.gpu.name} holds less than one "
                        f"mean request ({c_dec:.0f} tokens); use more GPUs or a lower precision")
    # E[dT](B) is nearly linear in B: evaluate at both ends of the grid
    _, ex0 = _prefill(sm, 0.0, isl, c_dec)
    _, ex1 = _prefill(sm, cap / pp, isl, c_dec)
    e0, e1 = float(w @ ex0), float(w @ ex1)
    grid = cap * np.geomspace(1e-3, 1.0, _GRID)
    t0 = sm.step_time(grid / pp, 0.0, c_dec, 0.0)
    ex = e0 + (e1 - e0) * grid / cap
    # tokens/s at batch B and rate lam: B (1 - lam E[dT]/pp) / T0(B) must reach lam * osl_m
    max_rate = float(cap / (osl_m * t0[-1] + cap * ex[-1] / pp))
    return _Prepared(sm, pp, isl, osl, w, osl_m, c_dec, cap, e0, e1, grid, t0, ex, max_rate)


def open_loop(dep: Deployment, rate_rps: float, lengths: LengthDist, replicas: int = 1, *,
              p95_only: bool = False) -> OpenLoopEstimate:
    """Latency percentiles and capacity of `replicas` identical replicas sharing Poisson traffic of `rate_rps`.

    `p95_only` skips the medians (left nan): the planner's latency curves need only the p95.
    """
    if replicas < 1 or rate_rps < 0 or not math.isfinite(rate_rps):
        raise PerfError(f"replicas must be >= 1 and rate_rps finite and >= 0 (got {replicas}, {rate_rps})")
    return _open_loop_at(_prepare(dep, lengths), rate_rps / replicas, p95_only)


def open_loop_rates(dep: Deployment, rates_rps: Sequence[float], lengths: LengthDist, *,
                    p95_only: bool = False) -> list[OpenLoopEstimate]:
    """`open_loop` of one replica at many rates, sharing the rate-independent work and vectorised over the rates."""
    if any(r < 0 or not math.isfinite(r) for r in rates_rps):
        raise PerfError(f"rates must be finite and >= 0, got {list(rates_rps)}")
    return _open_loop_many(_prepare(dep, lengths), np.asarray(rates_rps, dtype=float), p95_only)


def _open_loop_at(prep: _Prepared, lam: float, p95_only: bool) -> OpenLoopEstimate:
    """The rate-dependent part of `open_loop` at per-replica rate `lam`."""
    return _open_loop_many(prep, np.array([lam], dtype=float), p95_only)[0]


def _running(prep: _Prepared, lams: np.ndarray) -> np.ndarray:
    """The running batch B* solving Little's law at each per-replica rate (interpolated on the B grid)."""
    grid, cap, pp, osl_m = prep.grid, prep.cap, prep.pp, prep.osl_m
    supply = grid[None, :] * (1.0 - lams[:, None] * prep.ex[None, :] / pp) / prep.t0[None, :]
    out = np.empty(lams.size)
    for r, lam in enumerate(lams):
        stable = prep.max_rate > 0 and lam < prep.max_rate
        k = int(np.searchsorted(supply[r], lam * osl_m)) if stable else _GRID - 1
        if k <= 0:
            out[r] = grid[0]
        elif k >= _GRID:
            out[r] = cap
        else:                  # interpolate the running batch between the grid points around the demand
            lo, hi = supply[r, k - 1], supply[r, k]
            frac = float((lam * osl_m - lo) / (hi - lo)) if hi > lo else 1.0
            out[r] = grid[k - 1] + frac * (grid[k] - grid[k - 1])
    return out


@dataclass(frozen=True)
class _Core:
    """The open-loop fixed point at each per-replica rate (rows) and the per-cell latencies (columns)."""

    util: np.ndarray
    stable: np.ndarray
    bstar: np.ndarray
    tpot: np.ndarray
    ttft_det: np.ndarray           # (rates, cells) first token without the random waits
    d: np.ndarray                  # (rates, cells) end to end without the random waits
    p1: np.ndarray                 # prefill queue: P(wait), conditional mean
    m1: np.ndarray
    p2: np.ndarray                 # admission to a KV slot near the cap
    m2: np.ndarray


def _core(prep: _Prepared, lams: np.ndarray) -> _Core:
    sm, pp, isl, osl, w = prep.sm, prep.pp, prep.isl, prep.osl, prep.w
    c_dec, cap, e0, e1, max_rate = prep.c_dec, prep.cap, prep.e0, prep.e1, prep.max_rate
    util = lams / max_rate if max_rate > 0 else np.full(lams.size, math.inf)
    stable = util < 1.0
    bstar = _running(prep, lams)
    rho = np.minimum(lams, max_rate) * (e0 + (e1 - e0) * bstar / cap) / pp
    tpot = np.asarray(sm.step_time(bstar / pp, 0.0, c_dec, 0.0), dtype=float) / (1.0 - rho)
    pf, exb = _prefill(sm, (bstar / pp)[:, None], isl[None, :], c_dec)
    serv = exb / pp
    ttft_det = _REQUEST_S + tpot[:, None] / 2 + pf
    d = ttft_det + (osl[None, :] - 1) * tpot[:, None]
    # random waits: prefill queue (p1, m1) and admission to a slot (p2, m2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p1 = np.where(stable, rho, 0.0)
        m1 = np.where(p1 > 1e-9, lams * ((serv**2) @ w) / (2 * (1 - rho)) / np.where(p1 > 1e-9, p1, 1.0), 0.0)
        service = d @ w
        p2 = np.where(stable & (util > 0), np.power(np.where(stable, util, 0.0), math.sqrt(2 * (cap + 1))), 0.0)
        m2 = np.where(p2 > 1e-12, service / (cap * (1 - np.where(stable, util, 0.0))), 0.0)
    return _Core(util, stable, bstar, tpot, ttft_det, d, p1, m1, p2, m2)


def _open_loop_many(prep: _Prepared, lams: np.ndarray, p95_only: bool) -> list[OpenLoopEstimate]:
    """`_open_loop_at` for every per-replica rate in `lams` at once (rows = rates, columns = length cells)."""
    w, cap, max_rate = prep.w, prep.cap, prep.max_rate
    c = _core(prep, lams)
    mean_wait = c.p1 * c.m1 + c.p2 * c.m2
    ok = np.flatnonzero(c.stable)
    e2e_p95 = np.full(lams.size, math.inf)
    ttft_p50 = np.full(lams.size, math.nan)
    e2e_p50 = np.full(lams.size, math.nan)
    if ok.size:
        sub = (c.p1[ok], c.m1[ok], c.p2[ok], c.m2[ok])
        e2e_p95[ok] = _mixture_quantiles(c.d[ok], w, 0.95, *sub)
        if not p95_only:
            ttft_p50[ok] = _mixture_quantiles(c.ttft_det[ok], w, 0.5, *sub)
            e2e_p50[ok] = _mixture_quantiles(c.d[ok], w, 0.5, *sub)
    out = []
    for r in range(lams.size):
        if not c.stable[r]:
            inf = math.inf
            out.append(OpenLoopEstimate(inf, inf, float(c.tpot[r]), inf, inf, max_rate, float(c.util[r]), False,
                                        cap))
            continue
        out.append(OpenLoopEstimate(ttft_p50_s=float(ttft_p50[r]), ttft_mean_s=float(c.ttft_det[r] @ w + mean_wait[r]),
                                    tpot_s=float(c.tpot[r]), e2e_p50_s=float(e2e_p50[r]), e2e_p95_s=float(e2e_p95[r]),
                                    max_rate_rps=max_rate, utilization=float(c.util[r]), stable=True,
                                    running=float(c.bstar[r])))
    return out


@dataclass(frozen=True)
class RequestSampler:
    """Latency of individual requests on one replica at several per-replica rates ("levels"): the deterministic
    part for the request's own lengths (first token, prefill chunks beside the running batch, decode steps) plus
    independent draws of the two random waits. Sums of these along a request's path give request-level
    percentiles without assuming a distribution shape."""

    sm: StepModel
    pp: int
    c_dec: float
    max_rate_rps: float
    core: _Core

    def deterministic(self, level: np.ndarray, isl: np.ndarray, osl: np.ndarray) -> np.ndarray:
        return self.first_token(level, isl) + (np.maximum(osl, 1.0) - 1) * self.core.tpot[level]

    def first_token(self, level: np.ndarray, isl: np.ndarray) -> np.ndarray:
        """The deterministic time to the first token (host cost, the running step's residual, prefill chunks)."""
        c = self.core
        b = c.bstar[level] / self.pp
        pf, _ = _prefill(self.sm, b, np.maximum(np.asarray(isl, dtype=float), 1.0), self.c_dec)
        return _REQUEST_S + c.tpot[level] / 2 + pf

    def tpot(self, level: np.ndarray) -> np.ndarray:
        """Time per output token at each level."""
        return self.core.tpot[level]

    def waits(self, level: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c, n = self.core, np.size(level)
        x = np.where(rng.random(n) < c.p1[level], rng.exponential(1.0, n) * c.m1[level], 0.0)
        y = np.where(rng.random(n) < c.p2[level], rng.exponential(1.0, n) * c.m2[level], 0.0)
        return x + y

    def stable(self, level: np.ndarray) -> np.ndarray:
        return self.core.stable[level]


def request_sampler(dep: Deployment, rates_rps: Sequence[float], lengths: LengthDist) -> RequestSampler:
    """The `RequestSampler` of one replica at each per-replica rate (Poisson arrivals)."""
    if any(r < 0 or not math.isfinite(r) for r in rates_rps):
        raise PerfError(f"rates must be finite and >= 0, got {list(rates_rps)}")
    prep = _prepare(dep, lengths)
    return RequestSampler(prep.sm, prep.pp, prep.c_dec, prep.max_rate, _core(prep, np.asarray(rates_rps, float)))


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][min(int(np.searchsorted(cw, q * cw[-1])), x.size - 1)])


def _wait_cdf(t: np.ndarray, p1: np.ndarray, m1: np.ndarray, p2: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """P(W <= t) for W = X + Y, X = Exp(m1) w.p. p1 else 0, Y = Exp(m2) w.p. p2 else 0 (t >= 0); the parameters
    broadcast against t (one set per row)."""
    return _WaitCdf(p1, m1, p2, m2)(t)


class _WaitCdf:
    """`_wait_cdf` with its parameters folded into 1 - (a1 + g1 t) e^(-t/m1) - (a2 + g2 t) e^(-t/m2): X + Y is a
    hypo-exponential when m1 != m2 (g = 0), an Erlang-2 when they coincide (g = p1 p2 / m on the larger mean's
    term); a zero mean makes its exponential vanish. The percentile search evaluates it a dozen times per row."""

    def __init__(self, p1: np.ndarray, m1: np.ndarray, p2: np.ndarray, m2: np.ndarray) -> None:
        p1, m1, p2, m2 = (np.asarray(x, dtype=float) for x in (p1, m1, p2, m2))
        pos1, pos2 = m1 > 0, m2 > 0
        distinct = pos1 & pos2 & (np.abs(m1 - m2) > 1e-12 * np.maximum(m1, m2))
        both = p1 * p2
        gap = np.where(distinct, m1 - m2, 1.0)
        a1 = p1 * (1 - p2) + np.where(distinct, both * m1 / gap, 0.0)
        a2 = (1 - p1) * p2 - np.where(distinct, both * m2 / gap, 0.0)
        m = np.maximum(m1, m2)
        first = ~distinct & (m > 0) & (m1 >= m2)      # the Erlang term rides on e^(-t/m1) ...
        second = ~distinct & (m > 0) & (m1 < m2)      # ... or on e^(-t/m2)
        a1, a2 = a1 + np.where(first, both, 0.0), a2 + np.where(second, both, 0.0)
        inv_m = 1.0 / np.where(m > 0, m, 1.0)
        self.g1, self.g2 = np.where(first, both * inv_m, 0.0), np.where(second, both * inv_m, 0.0)
        self.a1, self.a2 = np.where(pos1, a1, 0.0), np.where(pos2, a2, 0.0)
        self.g1, self.g2 = np.where(pos1, self.g1, 0.0), np.where(pos2, self.g2, 0.0)
        self.i1, self.i2 = 1.0 / np.where(pos1, m1, 1.0), 1.0 / np.where(pos2, m2, 1.0)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        tt = np.maximum(t, 0.0)
        cdf = 1.0 - (self.a1 + self.g1 * tt) * np.exp(-tt * self.i1) - (self.a2 + self.g2 * tt) * np.exp(-tt * self.i2)
        return np.where(t >= 0, cdf, 0.0)


def _mixture_quantile(d: np.ndarray, w: np.ndarray, q: float, p1: float, m1: float, p2: float, m2: float) -> float:
    """The q-quantile of d_i + W over requests i (weights w), W the random wait of `_wait_cdf`."""
    return float(_mixture_quantiles(np.asarray(d, dtype=float)[None, :], w, q, np.array([p1]), np.array([m1]),
                                    np.array([p2]), np.array([m2]))[0])


def _mixture_quantiles(d: np.ndarray, w: np.ndarray, q: float, p1: np.ndarray, m1: np.ndarray, p2: np.ndarray,
                       m2: np.ndarray) -> np.ndarray:
    """`_mixture_quantile` per row of d (rows, cells), each row with its own wait parameters (same weights w)."""
    rows, cells = d.shape
    order = np.argsort(d, axis=1)
    ds = np.take_along_axis(d, order, axis=1)
    cum = np.cumsum(w[order], axis=1)
    idx = np.minimum((cum < q * cum[:, -1:]).sum(axis=1), cells - 1)       # searchsorted, row by row
    lo = ds[np.arange(rows), idx]
    out = lo.copy()
    todo = np.flatnonzero(~(p1 * m1 + p2 * m2 <= 1e-9 * np.maximum(lo, 1e-9)))
    if todo.size == 0:
        return out
    ds, cum = ds[todo], cum[todo]
    if cells > _QUANTILE_POINTS:   # the same distribution as _QUANTILE_POINTS equal-weight points
        target = (np.arange(_QUANTILE_POINTS) + 0.5) / _QUANTILE_POINTS * cum[:, -1:]
        j = np.clip((cum[:, :, None] <= target[:, None, :]).sum(axis=1) - 1, 0, cells - 2)
        c0, c1 = np.take_along_axis(cum, j, axis=1), np.take_along_axis(cum, j + 1, axis=1)
        v0, v1 = np.take_along_axis(ds, j, axis=1), np.take_along_axis(ds, j + 1, axis=1)
        frac = np.clip((target - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0)
        ds = v0 + frac * (v1 - v0)
        wt = np.full((todo.size, _QUANTILE_POINTS), 1.0 / _QUANTILE_POINTS)
    else:
        wt = np.broadcast_to(w, (todo.size, cells))
    wait = _WaitCdf(*(x[todo][:, None] for x in (p1, m1, p2, m2)))

    def cdf(x: np.ndarray) -> np.ndarray:     # P(d + W <= x) per row
        return (wait(x[:, None] - ds) * wt).sum(axis=1)

    lo_t = lo[todo]
    hi_t = ds.max(axis=1) + (m1[todo] + m2[todo]) * (math.log(1.0 / (1.0 - q)) + 2.0) + 1e-9
    # bisection on the monotone CDF, every row at once: F(lo) >= q gives lo, F(hi) < q gives hi (neither happens
    # for a proper bracket), else the upper end of a bracket 2^-_QUANTILE_BISECTIONS of the start
    at_lo, short = cdf(lo_t) >= q, cdf(hi_t) < q
    a, b = lo_t.copy(), hi_t.copy()
    for _ in range(_QUANTILE_BISECTIONS):
        mid = 0.5 * (a + b)
        below = cdf(mid) < q
        a, b = np.where(below, mid, a), np.where(below, b, mid)
    res = np.where(at_lo, lo_t, np.where(short, hi_t, b))
    out[todo] = res
    return out
