"""Live workload statistics (GET /stats) over sliding windows, and the Prometheus metrics (GET /metrics).

/stats is what re-scheduling and `cascadia status` read. For each window (seconds, from the config) it reports, over
the requests that finished inside the window: arrival rate (requests/s), input and output token lengths (mean and
quantiles), the share of requests answered per stage, and per stage the number of requests that reached it, the share
it escalated, its score distribution and its latency quantiles.

Why aggregates and not an event log: /stats runs on the event loop, and walking every event (500k at the old cap)
stalled every other request, /health included, for seconds. Now each window is a ring of `STATS_BUCKETS_PER_WINDOW`
time buckets, each holding counters and mergeable histograms, plus their running sum; `record` costs O(1) and
/stats reads one sum per window (O(occupied histogram cells), bounded whatever the traffic). The price, stated:
- a window of w seconds covers the last w seconds to within one bucket (w / STATS_BUCKETS_PER_WINDOW);
- quantiles come from fixed log-spaced buckets (`LogHistogram`), so each is within `STATS_QUANTILE_REL_ERROR` of
  a value that linear interpolation between order statistics (numpy's default) would give; count and mean are exact.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.serving import Trace

STATS_BUCKETS_PER_WINDOW = 60        # time buckets per window: /stats merges at most this many per window
STATS_QUANTILE_REL_ERROR = 0.01      # relative error of a reported quantile (log-bucket width)
_GAMMA = (1 + STATS_QUANTILE_REL_ERROR) / (1 - STATS_QUANTILE_REL_ERROR)
_INV_LOG_GAMMA = 1.0 / math.log(_GAMMA)
_TINY = 1e-9                         # |x| below this counts as 0 (scores and seconds never need more)
_QUANTILES = (0.1, 0.5, 0.9, 0.95, 0.99)
# token lengths: more levels, so that a re-plan rebuilds the length distribution from them (a right-skewed
# distribution interpolated over p10/p50/p90 alone overstates its mean by ~20 %); cascadia_sky/reschedule/observe.py
# keeps the same tuple
LENGTH_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


class LogHistogram:
    """A mergeable histogram with fixed log-spaced buckets (DDSketch-style): a value x goes to cell
    2*ceil(log_gamma |x|) (+1 when negative), |x| < 1e-9 to the zero cell. Count, sum, min and max are exact; a
    quantile is the midpoint of its cell (relative error STATS_QUANTILE_REL_ERROR), clamped to [min, max].
    Non-finite values are not recorded. Memory: one counter per occupied cell (~3,500 over +-1e-9..1e9)."""

    __slots__ = ("cells", "count", "total", "lo", "hi")

    def __init__(self) -> None:
        self.cells: dict[int | None, int] = {}
        self.count = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, x: float) -> None:
        if not math.isfinite(x):
            return
        self.count += 1
        self.total += x
        if x < self.lo:
            self.lo = x
        if x > self.hi:
            self.hi = x
        if -_TINY < x < _TINY:
            key = None
        else:
            key = 2 * math.ceil(math.log(abs(x)) * _INV_LOG_GAMMA) + (x < 0)
        cells = self.cells
        cells[key] = cells.get(key, 0) + 1

    def merge(self, other: LogHistogram, sign: int = 1) -> None:
        """Add `other` in (sign -1: take it out again; min and max are then left for the caller to recompute)."""
        cells = self.cells
        for key, c in other.cells.items():
            n = cells.get(key, 0) + sign * c
            if n:
                cells[key] = n
            else:
                del cells[key]
        self.count += sign * other.count
        self.total += sign * other.total
        if sign > 0:
            self.lo = min(self.lo, other.lo)
            self.hi = max(self.hi, other.hi)

    def quantiles(self, qs: tuple[float, ...]) -> list[float]:
        """Linear interpolation between the order statistics at ranks floor(h) and floor(h)+1, h = q*(n-1).
        Cells are sorted by value and their counts accumulated once; each rank is then a bisection."""
        n = self.count
        keys = sorted(self.cells, key=_cell_value)
        cumulative = list(itertools.accumulate(self.cells[k] for k in keys))

        def at(rank: int) -> float:
            return _cell_value(keys[bisect.bisect_right(cumulative, rank)])

        out = []
        for q in qs:
            h = q * (n - 1)
            lo_rank = math.floor(h)
            a, b = at(lo_rank), at(min(lo_rank + 1, n - 1))
            out.append(min(self.hi, max(self.lo, a + (h - lo_rank) * (b - a))))
        return out

    def summary(self, qs: tuple[float, ...] = _QUANTILES) -> dict[str, Any]:
        """The /stats shape: {"count": 0} or {"count", "mean", "p10", "p50", "p90", "p95", "p99"} (token lengths:
        `LENGTH_QUANTILES`, a superset)."""
        if not self.count:
            return {"count": 0}
        out: dict[str, Any] = {"count": self.count, "mean": self.total / self.count}
        for q, v in zip(qs, self.quantiles(qs), strict=True):
            out[f"p{round(q * 100)}"] = v
        return out


@functools.lru_cache(maxsize=16_384)
def _cell_value(key: int | None) -> float:
    """A cell's representative value: the midpoint (in relative terms) of (gamma^(i-1), gamma^i], signed."""
    if key is None:
        return 0.0
    return (-1.0 if key & 1 else 1.0) * _GAMMA ** (key >> 1) * 2.0 / (_GAMMA + 1.0)


@dataclass(slots=True)
class _StageAgg:
    reached: int = 0
    answered: int = 0
    answered_ok: int = 0
    escalated: int = 0
    early_escalated: int = 0
    failed: int = 0
    score: LogHistogram = field(default_factory=LogHistogram)
    latency: LogHistogram = field(default_factory=LogHistogram)

    def merge(self, o: _StageAgg, sign: int = 1) -> None:
        self.reached += sign * o.reached
        self.answered += sign * o.answered
        self.answered_ok += sign * o.answered_ok
        self.escalated += sign * o.escalated
        self.early_escalated += sign * o.early_escalated
        self.failed += sign * o.failed
        self.score.merge(o.score, sign)
        self.latency.merge(o.latency, sign)


@dataclass(slots=True)
class _Bucket:
    """Aggregates of the requests that finished in one time bucket (or, merged, in a whole window)."""

    index: int = 0
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    input_tokens: LogHistogram = field(default_factory=LogHistogram)
    output_tokens: LogHistogram = field(default_factory=LogHistogram)
    latency: LogHistogram = field(default_factory=LogHistogram)
    stages: dict[str, _StageAgg] = field(default_factory=dict)

    def add(self, trace: Trace, ok: bool, seconds: float) -> None:
        self.requests += 1
        self.errors += not ok
        self.fallbacks += trace.fallback
        if trace.input_tokens is not None:
            self.input_tokens.add(trace.input_tokens)
        if trace.output_tokens is not None:
            self.output_tokens.add(trace.output_tokens)
        if ok:
            self.latency.add(seconds)
        for step in trace.steps:
            agg = self._stage(step.stage)
            agg.reached += 1
            agg.escalated += step.outcome in ("escalated", "early_escalated")
            agg.early_escalated += step.outcome == "early_escalated"
            agg.failed += step.outcome == "failed"
            if step.score is not None:
                agg.score.add(step.score)
            agg.latency.add(step.seconds)
        if trace.stage is not None:
            agg = self._stage(trace.stage)
            agg.answered += 1
            agg.answered_ok += ok

    def _stage(self, name: str) -> _StageAgg:
        agg = self.stages.get(name)
        if agg is None:
            agg = self.stages[name] = _StageAgg()
        return agg

    def merge(self, o: _Bucket, sign: int = 1) -> None:
        self.requests += sign * o.requests
        self.errors += sign * o.errors
        self.fallbacks += sign * o.fallbacks
        self.input_tokens.merge(o.input_tokens, sign)
        self.output_tokens.merge(o.output_tokens, sign)
        self.latency.merge(o.latency, sign)
        for name, agg in o.stages.items():
            self._stage(name).merge(agg, sign)

    def histograms(self) -> dict[tuple[str, str], LogHistogram]:
        out = {("", "input_tokens"): self.input_tokens, ("", "output_tokens"): self.output_tokens,
               ("", "latency"): self.latency}
        for name, agg in self.stages.items():
            out[(name, "score")] = agg.score
            out[(name, "latency")] = agg.latency
        return out


class _Window:
    """A ring of time buckets covering one window (bucket k holds finish times in [k*width, (k+1)*width)) and
    their running sum: a tick's bucket is added to the sum when it is flushed and taken out again when it leaves
    the window, so a snapshot reads one sum instead of merging the ring."""

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self.width_s = window_s / STATS_BUCKETS_PER_WINDOW
        self.ring: list[_Bucket | None] = [None] * STATS_BUCKETS_PER_WINDOW
        self.total = _Bucket()

    def add(self, t: float, part: _Bucket) -> None:
        """Count `part` (requests that finished at about t) into the bucket for t, unless t is already too old."""
        k = int(t // self.width_s)
        self.expire(k)
        slot = k % STATS_BUCKETS_PER_WINDOW
        b = self.ring[slot]
        if b is None:
            b = self.ring[slot] = _Bucket(index=k)
        if b.index != k:
            return  # older than the window (times out of order)
        b.merge(part)
        self.total.merge(part)

    def expire(self, newest: int) -> None:
        """Take buckets that left the window out of the sum; recompute min/max from the remaining ones."""
        gone = False
        for slot, b in enumerate(self.ring):
            if b is not None and b.index <= newest - STATS_BUCKETS_PER_WINDOW:
                self.total.merge(b, -1)
                self.ring[slot] = None
                gone = True
        if gone:
            live = [b.histograms() for b in self.ring if b is not None]
            for key, h in self.total.histograms().items():
                parts = [hs[key] for hs in live if key in hs]
                h.lo = min((p.lo for p in parts), default=math.inf)
                h.hi = max((p.hi for p in parts), default=-math.inf)


class Stats:
    """Sliding-window aggregates: O(1) per finished request, O(histogram cells) per snapshot.

    A request is counted once, into a pending bucket one tick wide (the narrowest window's bucket width); when the
    tick ends, that bucket is merged into every window's ring, so the per-request cost does not grow with the
    number of windows."""

    def __init__(self, windows_s: list[int]) -> None:
        self.windows_s = sorted(windows_s)
        self.windows = [_Window(w) for w in self.windows_s]
        self.tick_s = self.windows[0].width_s
        self.pending: _Bucket | None = None
        self.pending_t = 0.0
        self.started = time.monotonic()

    def record(self, trace: Trace, ok: bool, seconds: float, now: float | None = None) -> None:
        """Count one finished request (`now`: its monotonic finish time; default: now)."""
        now = time.monotonic() if now is None else now
        tick = int(now // self.tick_s)
        if self.pending is None or self.pending.index != tick:
            self._flush()
            self.pending, self.pending_t = _Bucket(index=tick), now
        self.pending.add(trace, ok, seconds)

    def _flush(self) -> None:
        if self.pending is None:
            return
        for w in self.windows:
            w.add(self.pending_t, self.pending)
        self.pending = None

    def snapshot(self, stage_names: list[str]) -> dict[str, Any]:
        now = time.monotonic()
        windows = {}
        self._flush()  # later requests of the same tick merge into the same ring buckets
        for w in self.windows:
            w.expire(int(now // w.width_s))
            agg = w.total
            span = min(w.window_s, now - self.started) or 1e-9
            per_stage: dict[str, dict[str, Any]] = {}
            for name in stage_names:
                st = agg.stages.get(name) or _StageAgg()
                per_stage[name] = {
                    "reached": st.reached,
                    "answered": st.answered,
                    "answered_share": st.answered_ok / agg.requests if agg.requests else 0.0,
                    "escalated_share": st.escalated / st.reached if st.reached else 0.0,
                    "early_escalated": st.early_escalated,
                    "failed": st.failed,
                    "score": st.score.summary(),
                    "latency_s": st.latency.summary(),
                }
            windows[str(w.window_s)] = {
                "window_s": w.window_s,
                "requests": agg.requests,
                "arrival_rate_per_s": agg.requests / span,
                "errors": agg.errors,
                "fallbacks": agg.fallbacks,
                "input_tokens": agg.input_tokens.summary(LENGTH_QUANTILES),
                "output_tokens": agg.output_tokens.summary(LENGTH_QUANTILES),
                "latency_s": agg.latency.summary(),
                "stages": per_stage,
                "bucket_s": w.width_s,
            }
        return {"uptime_s": now - self.started, "windows": windows}


class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cascadia_router_requests", "Requests finished, by answering stage and result",
                                ["stage", "result"], registry=r)
        self.stage_calls = Counter("cascadia_router_stage_outcomes", "Stage outcomes (accepted, escalated, ...)",
                                   ["stage", "outcome"], registry=r)
        self.upstream_failures = Counter("cascadia_router_upstream_failures",
                                         "Failed attempts at an engine, by kind", ["stage", "kind"], registry=r)
        self.request_seconds = Histogram("cascadia_router_request_seconds", "Request latency at the router",
                                         registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30,
                                                              60, 120))
        self.stage_seconds = Histogram("cascadia_router_stage_seconds", "Time spent in a stage", ["stage"],
                                       registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30,
                                                            60, 120))
        self.score = Histogram("cascadia_router_score", "Confidence score per stage", ["stage"], registry=r,
                               buckets=(-10, -5, -3, -2, -1.5, -1, -.75, -.5, -.25, -.1, 0))
        self.in_flight = Gauge("cascadia_router_in_flight", "Requests in flight", registry=r)
        self.config_version = Gauge("cascadia_router_config_version", "Version of the live config", registry=r)
        self.shadow = Counter("cascadia_router_shadow_checks", "Quality watch: shadow checks of accepted answers, by "
                              "stage and result (graded, failed, skipped_rate, skipped_busy, cancelled); not "
                              "counted in cascadia_router_requests", ["stage", "result"], registry=r)
        self.shadow_checked = Gauge("cascadia_router_accepted_quality_checks", "Quality watch: graded checks under "
                                    "the stage's current threshold in the window", ["stage", "window"], registry=r)
        self.accepted_quality = Gauge("cascadia_router_accepted_quality", "Quality watch: measured quality of "
                                      "accepted answers (mean, Wilson lower/upper) and the plan's promise",
                                      ["stage", "window", "stat"], registry=r)

    def record(self, trace: Trace, result: str, seconds: float) -> None:
        self.requests.labels(trace.stage or "", result).inc()
        self.request_seconds.observe(seconds)
        for s in trace.steps:
            self.stage_calls.labels(s.stage, s.outcome).inc()
            self.stage_seconds.labels(s.stage).observe(s.seconds)
            if s.score is not None and s.score == s.score and abs(s.score) != float("inf"):
                self.score.labels(s.stage).observe(s.score)
        for stage, kind in trace.failures:
            self.upstream_failures.labels(stage, kind).inc()
