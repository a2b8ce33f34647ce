"""GET /stats from incremental aggregates (issue 14, item 9): the cost of a snapshot does not grow with traffic, the
figures match exact statistics within the documented bounds, windows forget what is older than them, and the JSON
keys that `cascadia status` and re-scheduling read stay as they were."""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
import pytest

from router import create_app, parse_config
from router.serving import StageStep, Trace
import router.stats as stats_mod
from router.stats import Stats
from tests.router.helpers import FakeEngine, serve_app, two_stage_config


def _trace(score: float, seconds: float, escalate: bool, tokens: int) -> Trace:
    steps = [StageStep("small", "escalated" if escalate else "accepted", score, seconds / 2)]
    if escalate:
        steps.append(StageStep("big", "answered", score / 2, seconds / 2))
    return Trace(model="cascade", steps=steps, stage="big" if escalate else "small", score=score,
                 input_tokens=tokens, output_tokens=tokens // 2 + 1)


def test_snapshot_cost_does_not_grow_with_events():
    """100k finished requests: the old event log took seconds to walk; aggregates take milliseconds."""
    stats = Stats([60, 300, 3600])
    rng = np.random.default_rng(1)
    scores = -rng.exponential(0.5, 100_000)
    for i, s in enumerate(scores):
        stats.record(_trace(float(s), 0.01 + i % 7 * 0.001, bool(i % 3 == 0), 10 + i % 50), True, 0.02)
    start = time.perf_counter()
    snap = stats.snapshot(["small", "big"])
    elapsed = time.perf_counter() - start
    assert snap["windows"]["60"]["requests"] == 100_000
    assert elapsed < 0.25, f"snapshot took {elapsed:.3f} s at 100k events"


def test_figures_match_exact_statistics():
    stats = Stats([60])
    rng = np.random.default_rng(7)
    n = 5_000
    scores = -rng.exponential(0.7, n)
    secs = rng.lognormal(-3, 1, n)
    tokens = rng.integers(1, 4000, n)
    esc = rng.random(n) < 0.3
    for s, sec, tok, e in zip(scores, secs, tokens, esc, strict=True):
        stats.record(_trace(float(s), float(sec), bool(e), int(tok)), True, float(sec))
    stats.record(Trace(model="cascade", steps=[StageStep("small", "failed", None, 0.5)]), False, 0.5)
    w = stats.snapshot(["small", "big"])["windows"]["60"]
    assert w["requests"] == n + 1 and w["errors"] == 1
    small, big = w["stages"]["small"], w["stages"]["big"]
    assert small["reached"] == n + 1 and small["failed"] == 1 and big["reached"] == int(esc.sum())
    assert small["escalated_share"] == pytest.approx(esc.sum() / (n + 1))
    assert small["answered_share"] + big["answered_share"] == pytest.approx(n / (n + 1))
    tol = getattr(stats_mod, "STATS_QUANTILE_REL_ERROR", 0.0) * 1.01
    for got, xs in ((small["score"], scores), (w["latency_s"], secs), (w["input_tokens"], tokens)):
        assert got["count"] == len(xs) and got["mean"] == pytest.approx(float(np.mean(xs)))
        for q in (10, 50, 90, 95, 99):
            exact = float(np.quantile(xs, q / 100))
            assert math.isclose(got[f"p{q}"], exact, rel_tol=tol), (q, got[f"p{q}"], exact)


def test_windows_forget_older_requests():
    stats = Stats([60, 300])
    now = time.monotonic()
    for age_s in (250.0, 120.0, 30.0, 1.0):
        stats.record(_trace(-0.1, 0.1, False, 10), True, 0.1, now=now - age_s)
    w = stats.snapshot(["small", "big"])["windows"]
    assert w["60"]["requests"] == 2 and w["300"]["requests"] == 4
    assert w["60"]["bucket_s"] == 60 / stats_mod.STATS_BUCKETS_PER_WINDOW


def test_stats_json_keys_stay_as_they_were():
    """The keys `cascadia status` (launch/report.py) and re-scheduling read; new keys may be added, none renamed."""
    fe = FakeEngine("small", logprob=-0.1)
    with serve_app(fe.app()) as eng, \
            serve_app(create_app(parse_config(two_stage_config([eng], [eng]), "t"))) as url:
        httpx.post(url + "/v1/chat/completions", json={"model": "cascade", "messages": [{"role": "user",
                                                                                         "content": "hi"}]})
        snap = httpx.get(url + "/stats").json()
    assert {"uptime_s", "windows", "cascade", "config_version"} <= set(snap)
    w = snap["windows"]["60"]
    assert {"window_s", "requests", "arrival_rate_per_s", "errors", "fallbacks", "input_tokens", "output_tokens",
            "latency_s", "stages"} <= set(w)
    assert {"count", "mean", "p1", "p5", "p10", "p25", "p50", "p75", "p90", "p95", "p99"} == set(w["input_tokens"])
    assert {"count", "mean", "p10", "p50", "p90", "p95", "p99"} == set(w["latency_s"])
    assert {"reached", "answered", "answered_share", "escalated_share", "early_escalated", "failed", "score",
            "latency_s"} <= set(w["stages"]["small"])
    assert w["requests"] == 1 and w["stages"]["small"]["answered_share"] == 1.0
    assert w["input_tokens"]["p50"] == 5 and w["output_tokens"]["mean"] == 8
