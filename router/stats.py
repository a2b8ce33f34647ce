"""Live workload statistics (GET /stats) over sliding windows, and the Prometheus metrics (GET /metrics).

/stats is what re-scheduling reads. For each window (seconds, from the config) it reports, over the requests that
finished inside the window: arrival rate (requests/s), input and output token lengths (mean and quantiles), the
share of requests answered per stage, and per stage the number of requests that reached it, the share it escalated,
its score distribution and its latency quantiles. Quantiles use linear interpolation (numpy's default).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.scorers import quantile_sorted
from router.serving import Trace

STATS_MAX_EVENTS = 500_000  # memory bound: older events drop out even inside the longest window
_QUANTILES = (0.1, 0.5, 0.9, 0.95, 0.99)


@dataclass(slots=True, frozen=True)
class Event:
    t: float                     # monotonic finish time
    ok: bool
    stage: str | None
    fallback: bool
    input_tokens: int | None
    output_tokens: int | None
    seconds: float
    steps: tuple[tuple[str, str, float | None, float], ...]  # (stage, outcome, score, seconds)


def _dist(xs: list[float]) -> dict[str, Any]:
    xs = sorted(x for x in xs if x is not None and x == x and abs(x) != float("inf"))
    if not xs:
        return {"count": 0}
    out: dict[str, Any] = {"count": len(xs), "mean": sum(xs) / len(xs)}
    for q in _QUANTILES:
        out[f"p{round(q * 100)}"] = quantile_sorted(xs, q)
    return out


class Stats:
    """Sliding-window request log."""

    def __init__(self, windows_s: list[int]) -> None:
        self.windows_s = sorted(windows_s)
        self.events: deque[Event] = deque(maxlen=STATS_MAX_EVENTS)
        self.started = time.monotonic()

    def record(self, trace: Trace, ok: bool, seconds: float) -> None:
        now = time.monotonic()
        self.events.append(Event(now, ok, trace.stage, trace.fallback, trace.input_tokens, trace.output_tokens,
                                 seconds, tuple((s.stage, s.outcome, s.score, s.seconds) for s in trace.steps)))
        horizon = now - self.windows_s[-1]
        while self.events and self.events[0].t < horizon:
            self.events.popleft()

    def snapshot(self, stage_names: list[str]) -> dict[str, Any]:
        now = time.monotonic()
        windows = {}
        for w in self.windows_s:
            evs = [e for e in self.events if e.t >= now - w]
            span = min(w, now - self.started) or 1e-9
            per_stage: dict[str, dict[str, Any]] = {}
            for name in stage_names:
                steps = [s for e in evs for s in e.steps if s[0] == name]
                reached = len(steps)
                escalated = sum(1 for s in steps if s[1] in ("escalated", "early_escalated"))
                per_stage[name] = {
                    "reached": reached,
                    "answered": sum(1 for e in evs if e.stage == name),
                    "answered_share": (sum(1 for e in evs if e.stage == name and e.ok) / len(evs)) if evs else 0.0,
                    "escalated_share": escalated / reached if reached else 0.0,
                    "early_escalated": sum(1 for s in steps if s[1] == "early_escalated"),
                    "failed": sum(1 for s in steps if s[1] == "failed"),
                    "score": _dist([s[2] for s in steps if s[2] is not None]),
                    "latency_s": _dist([s[3] for s in steps]),
                }
            windows[str(w)] = {
                "window_s": w,
                "requests": len(evs),
                "arrival_rate_per_s": len(evs) / span,
                "errors": sum(1 for e in evs if not e.ok),
                "fallbacks": sum(1 for e in evs if e.fallback),
                "input_tokens": _dist([e.input_tokens for e in evs if e.input_tokens is not None]),
                "output_tokens": _dist([e.output_tokens for e in evs if e.output_tokens is not None]),
                "latency_s": _dist([e.seconds for e in evs if e.ok]),
                "stages": per_stage,
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
