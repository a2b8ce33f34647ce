"""The quality watch's verdict and repair (cascadia_sky/reschedule/quality.py): pure verdicts from /stats, the
threshold re-fit on the checked answers (only upward), the planner's per-stage promise, and the loop applying a
re-fit as a threshold-only change recorded in the history (then kept as a floor by a later load re-plan)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cascadia_sky.launch import launcher
from cascadia_sky.launch.state import StateStore
from cascadia_sky.quality import QualityProfile
from cascadia_sky.reschedule.history import History, history_json, history_lines
from cascadia_sky.reschedule.loop import reschedule_pass
from cascadia_sky.reschedule.quality import (
    Promise,
    keep_floors,
    quality_floors,
    quality_lines,
    quality_status,
    quality_verdict,
    refit_threshold,
    refit_thresholds,
    stage_state,
)
from cascadia_sky.spec import QualityWatchSpec
from router.grading import wilson_interval
from tests.launch.helpers import REPO, RecordingSkyApi, example_plan

SETTINGS = QualityWatchSpec(enabled=True, windows_s=[600], min_checks=20, margin=0.05, level=0.9)


def _snapshot(stages: dict[str, tuple[list[tuple[float, float]], float, float | None]], level: float = 0.9) -> dict:
    """A /stats `quality` part: per stage (checks as (score, grade), threshold, promise)."""
    windows, checks = {}, {}
    for name, (items, threshold, promise) in stages.items():
        n = len(items)
        k = sum(g for _, g in items)
        windows[name] = {"checks": n, "quality": k / n if n else None, "interval": list(wilson_interval(k, n, level)),
                         "promise": promise, "threshold": threshold}
        checks[name] = [[1.0, s, threshold, g] for s, g in items]
    return {"quality": {"grader": "last_stage", "windows": {"600": {"window_s": 600, "stages": windows}},
                        "checks": checks, "shadow": {"graded": sum(len(v[0]) for v in stages.values())}}}


def test_stage_states() -> None:
    assert stage_state(10, 0.1, 0.3, 0.8, SETTINGS) is Promise.UNVERIFIED      # too few checks: no guess
    assert stage_state(50, 0.5, 0.6, 0.8, SETTINGS) is Promise.BROKEN          # upper end below the promise
    assert stage_state(50, 0.72, 0.83, 0.8, SETTINGS) is Promise.AT_RISK       # mean below promise - margin
    assert stage_state(50, 0.78, 0.88, 0.8, SETTINGS) is Promise.HELD          # within the margin
    assert stage_state(50, 0.9, 0.95, None, SETTINGS) is Promise.UNVERIFIED    # no promise for this stage


def test_the_verdict_is_the_worst_verified_stage() -> None:
    good = [(-0.1, 1.0)] * 30
    bad = [(-0.5, 0.0)] * 20 + [(-0.2, 1.0)] * 10
    v = quality_verdict(_snapshot({"a": (good, -0.6, 0.8), "b": (bad, -0.7, 0.8)}), SETTINGS)
    assert v.state is Promise.BROKEN and v.checks == 60 and [s.state for s in v.stages] == [Promise.HELD,
                                                                                          Promise.BROKEN]
    assert v.describe().startswith("promise: broken (60 checks in 600 s)")
    few = quality_verdict(_snapshot({"a": (good[:5], -0.6, 0.8)}), SETTINGS)
    assert few.state is Promise.UNVERIFIED and "unverified (5 checks" in few.describe()
    assert quality_verdict({"windows": {}}, SETTINGS).state is Promise.UNVERIFIED   # the watch is off


def test_refit_raises_to_the_lowest_threshold_that_meets_the_promise() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1.0, 0.0, 400)
    grades = (rng.random(400) < (scores + 1.0)).astype(float)      # P(agree) rises with the score
    checks = list(zip(scores, grades, strict=True))
    h = refit_threshold(checks, -1.0, 0.8, 10)
    kept = grades[scores >= h]
    assert kept.mean() >= 0.8 and len(kept) >= 10
    lower = max(s for s in scores if s < h)                          # one step lower no longer meets it
    assert grades[scores >= lower].mean() < 0.8
    assert refit_threshold(checks, -0.2, 0.8, 10) == -0.2           # already meets it: unchanged (never lower)
    none_good = [(s, 0.0) for s in scores]
    assert refit_threshold(none_good, -1.0, 0.8, 10) == math.nextafter(max(scores), math.inf)
    assert refit_threshold([], -0.4, 0.8, 10) == -0.4


def test_refit_uses_the_verdict_windows_checks_under_the_current_threshold() -> None:
    bad = [(-0.5, 0.0)] * 20 + [(-0.2, 1.0)] * 15
    snap = _snapshot({"a": (bad, -0.7, 0.8)})
    snap["quality"]["checks"]["a"] += [[1.0, -0.45, -0.9, 1.0]] * 50       # under an older threshold: ignored
    v = quality_verdict(snap, SETTINGS)
    assert refit_thresholds(snap, v, SETTINGS) == {"a": -0.2}
    held = _snapshot({"a": ([(-0.2, 1.0)] * 30, -0.7, 0.8)})
    assert refit_thresholds(held, quality_verdict(held, SETTINGS), SETTINGS) == {}


def test_the_profile_gives_each_stage_its_promise() -> None:
    scores = np.array([[-0.1, -0.2], [-0.5, -0.1], [-0.2, -0.3], [-0.9, -0.1]])
    quality = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    p = QualityProfile(scores, quality, np.ones_like(scores), np.ones_like(scores))
    q, agree = p.accepted([-0.3])
    assert q == [1.0, 0.5] and agree == [0.5, 0.5]        # prompt 2: right here, wrong at the last stage
    assert p.accepted([1.0])[0] == [None, 0.5]


def test_the_plan_carries_the_promise(example_plan) -> None:
    plan = example_plan("llama3")
    first = plan.stages[0]
    assert first.accepted_quality is not None and first.accepted_agreement is not None
    assert 0 <= first.accepted_agreement <= first.accepted_quality <= 1


def _watched(plan, **settings):
    watch = QualityWatchSpec(enabled=True, windows_s=[600], min_checks=20, **settings)
    return plan.with_launch(backend="skyserve", ready_timeout_s=30, quality_watch=watch)


def test_the_loop_raises_thresholds_when_the_promise_slips(fake_sky: RecordingSkyApi, tmp_path: Path) -> None:
    """Held: recorded once, nothing changes. Broken: the thresholds the checks support are applied as a
    router-only change and recorded (applying -> applied, with the verdict); status shows the promise; the next
    pass starts the cool-down; a load re-plan afterwards keeps the raised thresholds."""
    spec = str(REPO / "examples" / "deepseek.yaml")
    store = StateStore(tmp_path)
    plan = _watched(example_plan("deepseek"))
    launcher.up(launcher.Target(plan, spec), store=store)
    first = plan.stages[0]
    from tests.test_reschedule_loop import _stats

    base = _stats(plan.workload_rate_rps, plan, 60.0)
    good = [(first.threshold + 0.5, 1.0)] * 40
    held = {**base, **_snapshot({first.name: (good, first.threshold, 0.8)})}
    r = reschedule_pass("deepseek", apply=True, store=store, stats=held, now=1_000.0)
    assert r.quality.verdict.state is Promise.HELD and not r.applied
    r = reschedule_pass("deepseek", apply=True, store=store, stats=held, now=1_060.0)
    assert [e.step for e in History(store).events("deepseek")] == ["quality"]     # recorded on change only
    slipped = [(first.threshold + 0.01, 0.0)] * 30 + [(first.threshold + 0.3, 1.0)] * 20
    broken = {**base, **_snapshot({first.name: (slipped, first.threshold, 0.8)})}
    dry = reschedule_pass("deepseek", apply=False, store=store, stats=broken, now=1_120.0)
    assert dry.quality.thresholds and not dry.applied and store.get("deepseek").plan.to_json() == plan.to_json()
    r = reschedule_pass("deepseek", apply=True, store=store, stats=broken, now=1_180.0)
    new = store.get("deepseek").plan
    assert r.applied and r.kind == "router"
    assert new.stages[0].threshold == pytest.approx(first.threshold + 0.3)
    assert new.stages[0].accepted_agreement == first.accepted_agreement          # the promise stays the plan's
    events = History(store).events("deepseek")
    assert [e.step for e in events][-3:] == ["quality", "applying", "applied"]
    assert "promise: broken (50 checks" in events[-1].reason and "->" in events[-1].reason
    assert quality_floors(events) == {first.name: pytest.approx(first.threshold + 0.3),
                                      **{s.name: s.threshold for s in plan.stages[1:-1]}}
    lines = history_lines("deepseek", store)
    assert any("quality watch: promise: broken" in line for line in lines), lines
    shown = quality_lines("deepseek", store, fetch=lambda url, key: broken)
    assert shown[0].startswith("promise: broken (50 checks in 600 s") and "vs promised 0.80" in shown[1]
    data = quality_status("deepseek", store, fetch=lambda url, key: broken)      # status --json: the same, as data
    assert data["state"] == "broken" and data["checks"] == 50
    assert data["stages"][0]["promise"] == pytest.approx(0.8) and data["stages"][0]["quality"] < 0.8
    hist = history_json("deepseek", store)
    assert hist["last_change"]["kind"] == "router" and "promise: broken" in hist["last_change"]["reason"]
    assert [e["step"] for e in hist["events"]][-3:] == ["quality", "applying", "applied"]
    assert quality_status("deepseek", store, fetch=_unanswered)["state"] == "unknown"
    r = reschedule_pass("deepseek", apply=True, store=store, stats=broken, now=1_240.0)
    assert r.detection.verdict.value == "cooldown"


def test_a_load_replan_keeps_the_floors(example_plan) -> None:
    from cascadia_sky.reschedule.replan import Replan

    plan = example_plan("deepseek")
    rp = Replan(plan, 1.0, 1.0, 0.5, True, "J 1 -> 0.5", 0.1)
    floors = {plan.stages[0].name: plan.stages[0].threshold + 1.0}
    kept = keep_floors(rp, floors)
    assert kept.plan.stages[0].threshold == plan.stages[0].threshold + 1.0 and "floors" in kept.reason
    assert keep_floors(rp, {plan.stages[0].name: plan.stages[0].threshold - 1.0}) is rp


def _unanswered(url: str, key: str) -> dict:
    from cascadia_sky.errors import LaunchError

    raise LaunchError(f"{url}: connection refused")
