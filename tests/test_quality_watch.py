"""The router's quality watch (router/quality.py): shadow checks of accepted answers run after the client has its
answer, are bounded (rate, in flight), counted apart from client requests, cancelled on shutdown, and graded with the
calibration graders' agreement (a copy in router/grading.py held equal here) or a judge's score; /stats and /metrics
report the measured quality with its Wilson interval next to the plan's promise."""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import NormalDist

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cascadia_sky.calibrate.graders import (
    DEFAULT_RUBRIC,
    grade_agreement,
    parse_judge_score,
)
from cascadia_sky.calibrate.graders import answer_number as cal_answer_number
from cascadia_sky.calibrate.graders import normalise as cal_normalise
from cascadia_sky.calibrate.prompts import load_prompts
from cascadia_sky.calibrate.report import quality_interval
from router import create_app, grading, parse_config
from router.config import RouterConfig, swap_config
from tests.launch.helpers import REPO
from tests.router.helpers import FakeEngine, serve_app, two_stage_config

WATCH = {"fraction": 1.0, "max_per_s": 1000, "max_in_flight": 64, "windows_s": [600, 3600], "level": 0.9}


# --- one grader, two copies -------------------------------------------------------------------------------------

def _corpus() -> list[tuple[str, str]]:
    """Answer pairs: the shipped prompts' references in the phrasings small models use, right and wrong, plus the
    awkward cases (empty, articles only, long texts, numbers with commas and fractions, letters)."""
    refs = [p.reference for p in load_prompts(REPO / "examples" / "prompts" / "basic.jsonl") if p.reference]
    rng = np.random.default_rng(3)
    forms = ["{}", "The answer is {}.", "{}\n\nThis is because of the rules.", "answer: {}", "It is {}",
             "I think the answer might be {} but I am not sure about it at all really", "({})"]
    pairs = []
    for ref in refs:
        other = refs[int(rng.integers(len(refs)))]
        for f in rng.choice(forms, 3, replace=False):
            pairs += [(f.format(ref), ref), (ref, f.format(ref)), (f.format(other), f.format(ref))]
    pairs += [("", ""), ("", "Paris"), ("the", "a"), ("1,234 apples", "1234"), ("3/4", "0.75"), ("B", "B. Rome"),
              ("Paris", "The capital of France is Paris."), ("12 * 7 = 88", "84"), ("A. red", "A"),
              ("The answer is 12.", "12 days"), ("Il CorioBellaRomeo is the capital", "Rome")]
    return pairs


def test_the_router_grades_agreement_as_calibrate_does() -> None:
    pairs = _corpus()
    assert len(pairs) > 2000
    router_grades = [grading.agreement(a, b) for a, b in pairs]
    assert router_grades == [grade_agreement(a, b) for a, b in pairs]
    assert 0.2 < float(np.mean(router_grades)) < 0.8        # the corpus has both outcomes in numbers
    for a, b in pairs[:500]:
        assert grading.normalise(a) == cal_normalise(a) and grading.answer_number(b) == cal_answer_number(b)
    for text in ("7", "Score: 8/10", "11", "-2", "none", "7.5 out of 10"):
        assert grading.parse_judge_score(text, 10) == parse_judge_score(text, 10)


def test_wilson_interval_is_the_calibration_reports() -> None:
    z = NormalDist().inv_cdf(0.975)
    for k, n in ((0, 10), (3, 10), (10, 10), (37, 50), (412, 500)):
        grades = np.array([1.0] * k + [0.0] * (n - k))
        _mean, lo, hi = quality_interval(grades, z)
        assert grading.wilson_interval(k, n, 0.95) == pytest.approx((lo, hi), abs=1e-12)
    assert grading.wilson_interval(0, 0, 0.9) == (0.0, 1.0)


def test_the_router_judge_rubric_is_calibrates() -> None:
    assert grading.DEFAULT_JUDGE_RUBRIC == DEFAULT_RUBRIC.read_text(encoding="utf-8")


# --- the router -------------------------------------------------------------------------------------------------

def _config(small: FakeEngine, big_urls: list[str], small_url: str, watch: dict | None = None,
            threshold: float = -0.5, promise: float | None = 0.8) -> dict:
    doc = two_stage_config([small_url], big_urls, threshold, quality_watch={**WATCH, **(watch or {})})
    doc["stages"][0]["promise"] = promise
    return doc


def _wait(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _post(c: httpx.Client, base: str, stream: bool = False, model: str = "cascade") -> httpx.Response:
    return c.post(f"{base}/v1/chat/completions", json={"model": model, "stream": stream,
                                                       "messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize("same_answer", [True, False])
def test_accepted_answers_are_checked_and_reported(same_answer: bool) -> None:
    """Every accepted answer (fraction 1) is sent to the last stage after the client has it, graded by agreement;
    /stats and /metrics carry the checks apart from the client requests."""
    small = FakeEngine("same" if same_answer else "small", logprob=-0.1)
    big = FakeEngine("same" if same_answer else "big", logprob=-0.1)
    with serve_app(small.app()) as s_url, serve_app(big.app()) as b_url:
        app = create_app(parse_config(_config(small, [b_url], s_url), "test"))
        with serve_app(app) as base, httpx.Client(timeout=30) as c:
            for i in range(8):
                r = _post(c, base, stream=i % 2 == 1)
                assert r.status_code == 200 and r.headers["x-cascadia-stage"] == "small"
            _wait(lambda: app.state.watch.counts["graded"] == 8)
            snap = c.get(f"{base}/stats").json()
            metrics = c.get(f"{base}/metrics").text
    assert big.requests == 8 and all(b["stream"] is False for b in big.bodies)   # the shadow requests
    q = snap["quality"]
    w = q["windows"]["600"]["stages"]["small"]
    assert w["checks"] == 8 and w["promise"] == 0.8 and w["threshold"] == -0.5
    assert w["quality"] == (1.0 if same_answer else 0.0)
    assert w["interval"] == pytest.approx(list(grading.wilson_interval(8 * w["quality"], 8, 0.9)))
    assert q["shadow"]["graded"] == 8 and q["shadow"]["failed"] == 0
    assert [len(q["checks"]["small"]), q["checks"]["small"][0][1:3]] == [8, [pytest.approx(-0.1), -0.5]]
    assert snap["windows"]["60"]["requests"] == 8                       # shadow requests are not client requests
    assert 'cascadia_router_shadow_checks_total{result="graded",stage="small"} 8.0' in metrics
    assert 'cascadia_router_accepted_quality_checks{stage="small",window="600"} 8.0' in metrics
    assert 'cascadia_router_requests_total{result="ok",stage="small"} 8.0' in metrics


def test_escalated_pinned_and_unsampled_requests_are_not_checked() -> None:
    small, big = FakeEngine("small", logprob=-2.0), FakeEngine("big")
    with serve_app(small.app()) as s_url, serve_app(big.app()) as b_url:
        app = create_app(parse_config(_config(small, [b_url], s_url, {"fraction": 1.0}), "test"))
        with serve_app(app) as base, httpx.Client(timeout=30) as c:
            assert _post(c, base).headers["x-cascadia-stage"] == "big"            # escalated: the last stage answered
            assert _post(c, base, model="small").status_code == 200               # pinned to a stage
            time.sleep(0.3)
    assert big.requests == 1 and app.state.watch.counts["graded"] == 0


def test_shadow_traffic_is_bounded_never_delays_the_client_and_is_cancelled_on_shutdown() -> None:
    """The last stage hangs (60 s): clients accepted at stage 1 still get their answers at once; at most
    max_in_flight checks run, the rest are skipped (counted); shutdown cancels the ones in flight."""
    small, big = FakeEngine("small", logprob=-0.1), FakeEngine("big", mode="hang")
    with serve_app(small.app()) as s_url, serve_app(big.app()) as b_url:
        app = create_app(parse_config(_config(small, [b_url], s_url, {"max_in_flight": 2}), "test"))
        with serve_app(app) as base, httpx.Client(timeout=30) as c:
            seconds = []
            for _ in range(6):
                t0 = time.perf_counter()
                assert _post(c, base).status_code == 200
                seconds.append(time.perf_counter() - t0)
            _wait(lambda: big.requests == 2)
            assert app.state.watch.in_flight == 2
        counts = dict(app.state.watch.counts)
    assert max(seconds) < 5.0                                     # the hanging shadow requests did not hold them up
    assert counts == {"graded": 0, "failed": 0, "skipped_rate": 0, "skipped_busy": 4, "cancelled": 2}


def test_the_rate_cap_skips_checks_beyond_it() -> None:
    small, big = FakeEngine("small", logprob=-0.1), FakeEngine("big")
    with serve_app(small.app()) as s_url, serve_app(big.app()) as b_url:
        app = create_app(parse_config(_config(small, [b_url], s_url, {"max_per_s": 0.01}), "test"))
        with serve_app(app) as base, httpx.Client(timeout=30) as c:
            for _ in range(5):
                _post(c, base)
            _wait(lambda: app.state.watch.counts["graded"] == 1)
    assert app.state.watch.counts["skipped_rate"] == 4 and big.requests == 1


def test_a_threshold_swap_starts_the_count_afresh() -> None:
    small, big = FakeEngine("same", logprob=-0.1), FakeEngine("same")
    with serve_app(small.app()) as s_url, serve_app(big.app()) as b_url:
        cfg = parse_config(_config(small, [b_url], s_url), "test")
        app = create_app(cfg)
        with serve_app(app) as base, httpx.Client(timeout=30) as c:
            for _ in range(3):
                _post(c, base)
            _wait(lambda: app.state.watch.counts["graded"] == 3)
            doc = json.loads(cfg.model_dump_json())
            doc["stages"][0]["threshold"] = -0.3
            from router.serving import Runtime

            app.state.runtime = Runtime(parse_config(doc, "swap"), 2)
            w = c.get(f"{base}/stats").json()["quality"]["windows"]["600"]["stages"]["small"]
    assert w["checks"] == 0 and w["quality"] is None and w["threshold"] == -0.3


def test_judge_grading() -> None:
    """grader judge: the accepted answer is shown to the judge with the rubric; its number / scale is the grade."""
    seen: list[str] = []

    async def judge(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body["messages"][0]["content"])
        return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": "7"}}]})

    small, big = FakeEngine("small", logprob=-0.1), FakeEngine("big")
    judge_app = Starlette(routes=[Route("/v1/chat/completions", judge, methods=["POST"])])
    with serve_app(small.app()) as s_url, serve_app(big.app()) as b_url, serve_app(judge_app) as j_url:
        watch = {"grader": "judge", "judge": {"url": j_url, "model": "judge"}}
        app = create_app(parse_config(_config(small, [b_url], s_url, watch), "test"))
        with serve_app(app) as base, httpx.Client(timeout=30) as c:
            _post(c, base)
            _wait(lambda: app.state.watch.counts["graded"] == 1)
            w = c.get(f"{base}/stats").json()["quality"]["windows"]["600"]["stages"]["small"]
    assert big.requests == 0 and w["quality"] == pytest.approx(0.7)
    assert "Question: hi" in seen[0] and "Answer to grade:  small0 small1" in seen[0]


def test_the_plan_turns_the_watch_on_with_its_promises() -> None:
    plan = {"name": "c", "scorer": "mean_logprob",
            "stages": [{"name": "a", "threshold": -0.4, "accepted_quality": 0.7, "accepted_agreement": 0.6},
                       {"name": "b", "threshold": None, "accepted_quality": 0.9, "accepted_agreement": 0.9}],
            "launch": {"quality_watch": {"enabled": True, "fraction": 0.05, "grader": "last_stage",
                                         "windows_s": [300], "level": 0.95}}}
    eps = {"a": ["http://127.0.0.1:1"], "b": ["http://127.0.0.1:2"]}
    cfg = RouterConfig.from_plan(plan, eps)
    assert cfg.quality_watch is not None and cfg.quality_watch.fraction == 0.05
    assert [s.promise for s in cfg.stages] == [0.6, None]
    plan["launch"]["quality_watch"].update(grader="judge", judge_endpoint="http://127.0.0.1:3", judge_model="j")
    judged = RouterConfig.from_plan(plan, eps)
    assert judged.stages[0].promise == 0.7 and judged.quality_watch.judge.url == "http://127.0.0.1:3"
    plan["launch"]["quality_watch"] = {"enabled": False}
    off = swap_config(cfg, {"plan": plan, "endpoints": eps})             # a plan swap says whether the watch runs
    assert off.quality_watch is None and off.stages[0].promise is None
    with pytest.raises(Exception, match="judge"):
        parse_config({**two_stage_config(["http://x:1"], ["http://x:2"]), "quality_watch": {"grader": "judge"}},
                     "test")


def test_a_spec_with_a_judge_needs_its_endpoint(tmp_path: Path) -> None:
    from cascadia_sky.spec import QualityWatchSpec

    with pytest.raises(ValueError, match="judge_endpoint"):
        QualityWatchSpec(enabled=True, grader="judge")
    assert QualityWatchSpec(enabled=True).fraction == 0.03
