"""Request-level latency of a plan: the p95 over *requests*, a mixture over the stage where each one exits.

A request answered by stage k waits for stages 1..k. Each stage's latency is taken as log-normal with the
performance model's p50 and p95 at its planned rate (comonotone across stages when they serve the same request
lengths, i.e. with a trace; independent otherwise), so a path's latency is a sum of log-normals and the request-level distribution is the mixture of the paths weighted by the answered shares. Both
are sampled (fixed seed, `LATENCY_SAMPLES`): the p95 of that mixture is `request_p95_s`; `path_p95_s[k]` is the
p95 of path k alone.

Bursty traffic (a trace): the rate is not constant. Pointwise-stationary model: the trace is cut into windows of
`BURST_WINDOW_SECONDS`; each window is served as if its own rate held (stage rate = window rate x reach, capped
just below capacity), and the request-level mixture weighs windows by the requests in them. A window above a
stage's capacity leaves a backlog that the next windows inherit (a fluid queue, in time order): a window's requests
wait (B + B') / 2c on top, B and B' the backlog at its start and end, c the capacity. The planner uses the same
model for every candidate (`candidates.Burst`), with the window rates binned for speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cascadia_sky.catalog import get_gpu
from cascadia_sky.constants import (
    BURST_RATE_BINS,
    BURST_SATURATION_FRACTION,
    BURST_WINDOW_SECONDS,
    LATENCY_SAMPLES,
    PLANNER_SEED,
)
from cascadia_sky.perf.local import local_open_loop
from cascadia_sky.planner.candidates import Burst, estimate, estimate_rates
from cascadia_sky.planner.deploy import Candidate

if TYPE_CHECKING:
    from cascadia_sky.planner.level import DeploymentLevel
    from cascadia_sky.planner.planner import PlanningContext

_Z95 = 1.6448536269514722


@dataclass(frozen=True)
class RequestLatency:
    request_p95_s: float                    # Poisson arrivals at the mean rate
    path_p95_s: list[float]                 # per stage k: p95 of a request that exits at k (Poisson)
    request_p95_bursty_s: float | None      # pointwise-stationary over the trace's windows (traces only)
    bursty_stage_p95_s: list[float | None]  # per stage, its own p95 under the windows (traces only)
    burstiness: dict[str, float] | None     # window rates: mean, p95, max, index of dispersion


def window_rates(arrival_s: np.ndarray, window_s: float) -> np.ndarray:
    """Requests per second in consecutive windows of the trace (the last, partial window dropped if short)."""
    t = np.asarray(arrival_s, dtype=float)
    if t.size < 2 or t[-1] <= 0:
        return np.array([t.size / max(window_s, 1e-9)])
    edges = np.arange(0.0, t[-1] + window_s, window_s)
    counts = np.histogram(t, bins=edges)[0].astype(float)
    return counts / window_s


def burstiness(arrival_s: np.ndarray, window_s: float = BURST_WINDOW_SECONDS) -> dict[str, float]:
    """The trace's rate per short window: mean, 95th percentile, max and the index of dispersion of the counts."""
    r = window_rates(arrival_s, window_s)
    counts = r * window_s
    mean = float(counts.mean())
    return {"window_s": window_s, "mean_rps": float(r.mean()), "p95_rps": float(np.quantile(r, 0.95)),
            "max_rps": float(r.max()), "dispersion": float(counts.var() / mean) if mean > 0 else 0.0}


def trace_burst(arrival_s: np.ndarray, mean_rate_rps: float) -> Burst:
    """The planner's pointwise-stationary traffic: window rates as multiples of the trace's mean rate, binned into
    `BURST_RATE_BINS` equal-request bins (each at its request-weighted mean), and in time order."""
    windows = window_rates(arrival_s, BURST_WINDOW_SECONDS)
    mean = float(windows.mean()) if windows.size else 0.0
    if mean <= 0:
        return Burst.steady()
    weights = windows / windows.sum()
    order = np.argsort(windows, kind="stable")
    mid = np.cumsum(weights[order]) - 0.5 * weights[order]
    bins = np.minimum((mid * BURST_RATE_BINS).astype(int), BURST_RATE_BINS - 1)
    factors, shares = [], []
    for b in range(BURST_RATE_BINS):
        sel = bins == b
        if sel.any() and weights[order][sel].sum() > 0:
            factors.append(float(np.average(windows[order][sel], weights=weights[order][sel])) / mean)
            shares.append(float(weights[order][sel].sum()))
    w = np.asarray(shares)
    return Burst(np.asarray(factors), w / w.sum(), windows / mean)


def _lognormal(p50: np.ndarray, p95: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Samples exp(mu + sigma z) with the given medians and p95s (sigma >= 0)."""
    p50 = np.maximum(p50, 1e-9)
    sigma = np.maximum(np.log(np.maximum(p95, p50) / p50), 0.0) / _Z95
    return p50 * np.exp(sigma * z)


def _estimate(ctx: PlanningContext, level: DeploymentLevel, stage: int, c: Candidate, rate: float):
    st = ctx.stages[stage]
    if ctx.spec.resources.local is not None:
        return local_open_loop(st.model, rate, level.lengths(stage))
    return estimate(st, get_gpu(c.gpu_type), c.tp, c.pp, c.replicas, rate, level.lengths(stage))


def _capacity(ctx: PlanningContext, level: DeploymentLevel, stage: int, c: Candidate) -> float:
    """Requests/s the stage's replicas sustain together."""
    probe = _estimate(ctx, level, stage, c, 0.0)
    if probe is None:
        return 0.0
    return probe.max_rate_rps * (c.replicas if ctx.spec.resources.local is None else 1)


def _stage_percentiles(ctx: PlanningContext, level: DeploymentLevel, stage: int, c: Candidate,
                       rates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p50, p95) of a stage's latency at each (sustainable) rate; inf where the model says it cannot keep up."""
    p50, p95 = np.full(rates.size, math.inf), np.full(rates.size, math.inf)
    if ctx.spec.resources.local is not None:
        ests = [_estimate(ctx, level, stage, c, float(rate)) for rate in rates]
    else:
        st = ctx.stages[stage]
        ests = estimate_rates(st, get_gpu(c.gpu_type), c.tp, c.pp, c.replicas, rates, level.lengths(stage)) \
            or [None] * rates.size
    for k, e in enumerate(ests):
        if e is not None and e.stable:
            p50[k], p95[k] = e.e2e_p50_s, e.e2e_p95_s
    return p50, p95


def _mixture_p95(lat: np.ndarray, answered: Sequence[float], rng: np.random.Generator) -> tuple[float, list[float]]:
    """lat: (stages, samples) per-stage latency samples; exit stage drawn by answered share."""
    paths = np.cumsum(lat, axis=0)
    path_p95 = [float(np.quantile(p, 0.95)) if np.isfinite(p).all() else math.inf for p in paths]
    shares = np.asarray(answered, dtype=float)
    shares = shares / shares.sum()
    exit_stage = rng.choice(len(shares), size=lat.shape[1], p=shares)
    req = paths[exit_stage, np.arange(lat.shape[1])]
    return (float(np.quantile(req, 0.95)) if np.isfinite(req).all() else math.inf), path_p95


def request_latency(ctx: PlanningContext, level: DeploymentLevel, chosen: Sequence[Candidate],
                    answered: Sequence[float]) -> RequestLatency:
    """Request-level p95 under Poisson arrivals and, with a trace, under its windows (module docstring)."""
    rng = np.random.default_rng(PLANNER_SEED)
    n_st = len(chosen)
    rate = ctx.workload.rate_rps
    reach = np.cumsum(np.asarray(answered, dtype=float)[::-1])[::-1]
    # a trace gives every stage the same request lengths, and lengths drive most of a stage's latency spread: the
    # stages of one request are then comonotone (one draw for all); profile lengths differ by stage (independent)
    shared = ctx.workload.output_tokens.size > 0
    z = np.repeat(rng.standard_normal((1, LATENCY_SAMPLES)), n_st, axis=0) if shared else \
        rng.standard_normal((n_st, LATENCY_SAMPLES))
    lat = np.zeros((n_st, LATENCY_SAMPLES))
    for i, c in enumerate(chosen):
        if c.replicas == 0 or reach[i] <= 0:
            continue
        p50, p95 = _stage_percentiles(ctx, level, i, c, np.array([rate * reach[i]]))
        lat[i] = _lognormal(p50, p95, z[i])
    poisson, paths = _mixture_p95(lat, answered, rng)
    arrivals = ctx.workload.arrival_s
    if arrivals is None or arrivals.size < 2:
        return RequestLatency(poisson, paths, None, [None] * n_st, None)
    burst = trace_burst(arrivals, rate)
    seq = burst.sequence
    window = rng.choice(seq.size, size=LATENCY_SAMPLES, p=seq / seq.sum())     # each sample's window
    lat_b = np.zeros((n_st, LATENCY_SAMPLES))
    stage_p95: list[float | None] = []
    for i, c in enumerate(chosen):
        if c.replicas == 0 or reach[i] <= 0:
            stage_p95.append(None)
            continue
        stage_rate = rate * reach[i]
        cap = _capacity(ctx, level, i, c)
        # the queue model at the window's own rate (capped just below capacity) ...
        levels = np.unique(np.minimum(seq * stage_rate, BURST_SATURATION_FRACTION * cap))
        p50, p95 = _stage_percentiles(ctx, level, i, c, levels)
        at = np.searchsorted(levels, np.minimum(seq * stage_rate, BURST_SATURATION_FRACTION * cap))
        # ... plus the backlog that overloaded windows leave behind (a fluid queue, in time order)
        backlog, wait = 0.0, np.zeros(seq.size)
        for k, f in enumerate(seq):
            nxt = max(0.0, backlog + (stage_rate * f - cap) * BURST_WINDOW_SECONDS)
            wait[k] = (backlog + nxt) / (2.0 * cap) if cap > 0 else math.inf
            backlog = nxt
        lat_b[i] = _lognormal(p50[at][window], p95[at][window], z[i]) + wait[window]
        stage_p95.append(float(np.quantile(lat_b[i], 0.95)) if np.isfinite(lat_b[i]).all() else math.inf)
    bursty, _ = _mixture_p95(lat_b, answered, rng)
    return RequestLatency(poisson, paths, bursty, stage_p95, burstiness(arrivals))
