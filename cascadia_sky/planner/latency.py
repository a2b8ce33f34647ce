"""Request-level latency of a plan: the p95 over *requests*, a mixture over the stage where each one exits.

A request answered by stage k waits for stages 1..k. Its latency at a GPU stage is the performance model's, per
request (`perf.serving.RequestSampler`): the deterministic part for the request's own lengths at the stage's
planned rate (first token, prefill chunks beside the running batch, decode steps) plus independent draws of the
model's random waits (prefill queue, admission to a KV slot). With a trace every stage of a request sees the same
lengths (one draw of the request); with profile output lengths each stage draws its own. No distribution shape is
assumed: a conversation trace's mix of short and long answers makes path latencies bimodal, which a log-normal fit
of p50 and p95 misses by 20-30 % at the request level. (Local CPU engines keep a log-normal fit of their M/G/1
model's p50 and p95.) Exit stages are drawn by the answered shares, all sampled with a fixed seed
(`LATENCY_SAMPLES`): the p95 of that mixture is `request_p95_s`; `path_p95_s[k]` is the p95 of path k alone.

Bursty traffic (a trace): the rate is not constant. Pointwise-stationary model: the trace is cut into windows of
`BURST_WINDOW_SECONDS`; the random waits of a request (prefill queue, KV admission) are those of its window's own
rate (stage rate = window rate x reach, capped just below capacity), and the request-level mixture weighs windows by
the requests in them. A burst above a stage's capacity leaves a backlog that the next windows inherit (a fluid queue,
in time order, over the shorter windows of `BURST_FLUID_WINDOW_SECONDS`: the code trace's bursts last seconds): a
short window's requests wait (B + B') / 2c on top, B and B' the backlog at its start and end, c the capacity.
Service under bursts is transient, not stationary: a burst fills the running batch within a second, so a request's
first token is priced at its short window's rate, while its decode steps take the mean step time over the short
windows its decode spans (a long answer outlives a burst; pricing all of it at the burst's rate overshot the
simulator's request p95 by 46-191 % on the code trace, pricing it at the 10-s rate undershot the first stage's p95
by 46 %). A later stage does not see the trace's bursts but the earlier stage's departures: per short window what
that stage served (its capacity clips a burst), spread by its service times; each sampled request enters the next
stage in the short window where its stay ended. The planner's objective uses the binned stationary part and the
fluid wait for every candidate (`candidates.Burst`); the transient refinement prices the chosen plan's request-level
p95.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cascadia_sky.catalog import get_gpu
from cascadia_sky.constants import (
    BURST_FLUID_WINDOW_SECONDS,
    BURST_RATE_BINS,
    BURST_SATURATION_FRACTION,
    BURST_WINDOW_SECONDS,
    LATENCY_SAMPLES,
    PLANNER_SEED,
)
from cascadia_sky.perf.local import local_open_loop
from cascadia_sky.planner.candidates import Burst, estimate
from cascadia_sky.errors import PerfError
from cascadia_sky.perf.serving import RequestSampler, request_sampler
from cascadia_sky.perf.step import Deployment
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
    fine = window_rates(arrival_s, BURST_FLUID_WINDOW_SECONDS)
    return Burst(np.asarray(factors), w / w.sum(), windows / mean, fine / max(float(fine.mean()), 1e-12))


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
    """(p50, p95) of a local engine's latency at each (sustainable) rate; inf where it cannot keep up."""
    p50, p95 = np.full(rates.size, math.inf), np.full(rates.size, math.inf)
    for k, rate in enumerate(rates):
        e = _estimate(ctx, level, stage, c, float(rate))
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


def _sampler(ctx: PlanningContext, level: DeploymentLevel, stage: int, c: Candidate,
             rates: np.ndarray) -> RequestSampler | None:
    """The performance model's per-request latency of a GPU stage at each total stage rate (None: it cannot serve)."""
    st = ctx.stages[stage]
    dep = Deployment(model=st.model, gpu=get_gpu(c.gpu_type), tp=c.tp, pp=c.pp, precision=st.precision)
    try:
        return request_sampler(dep, [float(r) / c.replicas for r in rates], level.lengths(stage))
    except PerfError:
        return None


def _request_lengths(ctx: PlanningContext, level: DeploymentLevel, stage: int, shared: np.ndarray | None,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) tokens of each latency sample at a stage: the trace's requests (one draw for every stage of
    a request), else draws from the stage's own lengths (output lengths from the profile, per stage)."""
    w = ctx.workload
    if shared is not None:
        return w.input_tokens[shared].astype(float), w.output_tokens[shared].astype(float)
    lengths = level.lengths(stage)
    k = rng.choice(lengths.input_tokens.size, size=LATENCY_SAMPLES, p=lengths.weights)
    return lengths.input_tokens[k], lengths.output_tokens[k]


def _stage_samples(ctx: PlanningContext, level: DeploymentLevel, stage: int, c: Candidate, rates: np.ndarray,
                   at: np.ndarray, shared: np.ndarray | None, rng: np.random.Generator,
                   z: np.ndarray) -> np.ndarray:
    """One latency sample per request: at rate level `at[n]` (an index into `rates`), for its lengths. GPU stages
    use the performance model per request; local engines their log-normal fit (p50 and p95 of the M/G/1 model)."""
    if ctx.spec.resources.local is not None:
        p50, p95 = _stage_percentiles(ctx, level, stage, c, rates)
        return _lognormal(p50[at], p95[at], z)
    sampler = _sampler(ctx, level, stage, c, rates)
    if sampler is None:
        return np.full(at.size, math.inf)
    isl, osl = _request_lengths(ctx, level, stage, shared, rng)
    lat = sampler.deterministic(at, isl, osl) + sampler.waits(at, rng)
    return np.where(sampler.stable(at), lat, math.inf)


def _transient_samples(ctx: PlanningContext, level: DeploymentLevel, stage: int, c: Candidate, stage_rate: float,
                       cap: float, levels: np.ndarray, at_long: np.ndarray, fine: np.ndarray, short: np.ndarray,
                       shared: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A GPU stage's latency per sampled request under a trace: the random waits at its long window's rate; its
    first token at its short window's rate (a burst fills the batch within a second); its decode steps at the mean
    step time over the short windows its decode spans (a long answer outlives a burst)."""
    sat = BURST_SATURATION_FRACTION * cap
    short_rate = np.minimum(fine * stage_rate, sat)
    grid = np.unique(np.concatenate([levels, short_rate]))
    sampler = _sampler(ctx, level, stage, c, grid)
    if sampler is None:
        return np.full(short.size, math.inf)
    long_at = np.searchsorted(grid, levels)[at_long]
    fine_at = np.searchsorted(grid, short_rate)
    isl, osl = _request_lengths(ctx, level, stage, shared, rng)
    first = sampler.first_token(fine_at[short], isl)
    step = sampler.tpot(fine_at)
    cum = np.concatenate([[0.0], np.cumsum(step)])
    steps = np.maximum(osl, 1.0) - 1
    decode = steps * step[short]
    for _ in range(3):     # the windows the decode spans, and the mean step time over them (a fixed point)
        end = np.minimum(short + np.maximum(np.ceil(decode / BURST_FLUID_WINDOW_SECONDS), 1).astype(np.intp),
                         step.size)
        decode = steps * (cum[end] - cum[short]) / (end - short)
    lat = first + decode + sampler.waits(long_at, rng)
    return np.where(sampler.stable(long_at), lat, math.inf)


def _departures(served: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """Rate factors per short window of a stage's departures: the requests it took into service per short window
    (the fluid queue's output) convolved with the distribution of its service times (binned by short window),
    scaled to mean 1."""
    lat = service_s[np.isfinite(service_s)]
    if lat.size == 0 or served.size == 0:
        return served / max(float(served.mean()), 1e-12)
    bins = np.minimum((lat // BURST_FLUID_WINDOW_SECONDS).astype(np.intp), served.size - 1)
    kernel = np.bincount(bins, minlength=int(bins.max()) + 1) / lat.size
    out = np.convolve(served, kernel)[:served.size]
    mean = float(out.mean())
    return out / mean if mean > 0 else served


def _shift(window: np.ndarray, stage_lat: np.ndarray, size: int) -> np.ndarray:
    """Each sample's short window at the next stage: where its stay at this stage ended."""
    delay = np.where(np.isfinite(stage_lat), stage_lat, 0.0) // BURST_FLUID_WINDOW_SECONDS
    return np.minimum(window + delay.astype(np.intp), size - 1)


def request_latency(ctx: PlanningContext, level: DeploymentLevel, chosen: Sequence[Candidate],
                    answered: Sequence[float]) -> RequestLatency:
    """Request-level p95 under Poisson arrivals and, with a trace, under its windows (module docstring)."""
    rng = np.random.default_rng(PLANNER_SEED)
    n_st = len(chosen)
    rate = ctx.workload.rate_rps
    reach = np.cumsum(np.asarray(answered, dtype=float)[::-1])[::-1]
    # a trace gives every stage of a request the same lengths (one draw of the request for all stages); profile
    # lengths differ by stage (independent draws)
    shared = rng.integers(ctx.workload.n, size=LATENCY_SAMPLES) if ctx.workload.output_tokens.size > 0 else None
    z = np.repeat(rng.standard_normal((1, LATENCY_SAMPLES)), n_st, axis=0) if shared is not None else \
        rng.standard_normal((n_st, LATENCY_SAMPLES))
    lat = np.zeros((n_st, LATENCY_SAMPLES))
    zero = np.zeros(LATENCY_SAMPLES, dtype=np.intp)
    for i, c in enumerate(chosen):
        if c.replicas == 0 or reach[i] <= 0:
            continue
        lat[i] = _stage_samples(ctx, level, i, c, np.array([rate * reach[i]]), zero, shared, rng, z[i])
    poisson, paths = _mixture_p95(lat, answered, rng)
    arrivals = ctx.workload.arrival_s
    if arrivals is None or arrivals.size < 2:
        return RequestLatency(poisson, paths, None, [None] * n_st, None)
    burst = trace_burst(arrivals, rate)
    seq, fine = burst.sequence, burst.fine
    # each sample is a request of the trace: its short window (weighted by the requests in it) and the long window
    # that contains it
    short = rng.choice(fine.size, size=LATENCY_SAMPLES, p=fine / fine.sum())
    lat_b = np.zeros((n_st, LATENCY_SAMPLES))
    stage_p95: list[float | None] = []
    entry = short
    prev: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for i, c in enumerate(chosen):
        if c.replicas == 0 or reach[i] <= 0:
            stage_p95.append(None)
            continue
        if i and prev is not None:
            # a later stage sees the earlier stage's departures: what it served per short window (its capacity clips
            # a burst), spread by its service times
            served, service, stay = prev
            fine, entry = _departures(served, service), _shift(entry, stay, fine.size)
        short_i = entry
        window = np.minimum((short_i * BURST_FLUID_WINDOW_SECONDS // BURST_WINDOW_SECONDS).astype(np.intp),
                            seq.size - 1)
        stage_rate = rate * reach[i]
        cap = _capacity(ctx, level, i, c)
        # the queue model at the long window's own rate (capped just below capacity) ...
        levels = np.unique(np.minimum(seq * stage_rate, BURST_SATURATION_FRACTION * cap))
        at = np.searchsorted(levels, np.minimum(seq * stage_rate, BURST_SATURATION_FRACTION * cap))
        # ... plus the backlog that bursts above capacity leave behind (a fluid queue over short windows, in order)
        backlog, wait, served = 0.0, np.zeros(fine.size), np.zeros(fine.size)
        for k, f in enumerate(fine):
            come = stage_rate * f * BURST_FLUID_WINDOW_SECONDS
            nxt = max(0.0, backlog + come - cap * BURST_FLUID_WINDOW_SECONDS)
            wait[k] = (backlog + nxt) / (2.0 * cap) if cap > 0 else math.inf
            served[k] = backlog + come - nxt
            backlog = nxt
        if ctx.spec.resources.local is not None:
            service = _stage_samples(ctx, level, i, c, levels, at[window], shared, rng, z[i])
        else:
            service = _transient_samples(ctx, level, i, c, stage_rate, cap, levels, at[window], fine, short_i,
                                         shared, rng)
        lat_b[i] = service + wait[short_i]
        prev = (served, service, lat_b[i])
        stage_p95.append(float(np.quantile(lat_b[i], 0.95)) if np.isfinite(lat_b[i]).all() else math.inf)
    bursty, _ = _mixture_p95(lat_b, answered, rng)
    return RequestLatency(poisson, paths, bursty, stage_p95, burstiness(arrivals))
