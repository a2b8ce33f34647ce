"""The re-schedule pass end to end on a SkyServe deployment (recording fake SDK behind the real backend), with the
router's /stats replaced by synthetic windows: dry run changes nothing; --apply records the step before acting,
re-plans with the real planner and reaches SkyPilot as a rolling (replicas) or blue/green (engines) update."""

from __future__ import annotations

from pathlib import Path

from cascadia_sky.launch import launcher
from cascadia_sky.launch.state import StateStore
from cascadia_sky.reschedule.history import History, history_lines
from cascadia_sky.reschedule.loop import reschedule_pass
from tests.launch.helpers import REPO, RecordingSkyApi, example_plan

SPEC = str(REPO / "examples" / "deepseek.yaml")


def _stats(rate: float, plan, window_s: float = 60.0) -> dict:
    n = round(rate * window_s)
    stages = {s.name: {"reached": round(n * s.share), "escalated_share": 0.0, "failed": 0} for s in plan.stages}
    return {"windows": {str(int(window_s)): {"window_s": window_s, "requests": n, "arrival_rate_per_s": rate,
                                             "errors": 0, "input_tokens": {"count": 0}, "output_tokens": {"count": 0},
                                             "stages": stages}}}


def test_pass_dry_run_then_apply(fake_sky: RecordingSkyApi, tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    plan = example_plan("deepseek").with_launch(backend="skyserve", ready_timeout_s=30)
    launcher.up(launcher.Target(plan, SPEC), store=store)
    rate = plan.workload_rate_rps
    t = 1_000_000.0
    # in band: steady, nothing recorded but the observation
    r = reschedule_pass("deepseek", store=store, stats=_stats(rate * 1.1, plan), now=t)
    assert r.detection.verdict.value == "steady" and r.replan is None
    # 2.5x the rate (the exact planner sizes for bursts: 1.6x still fits the running deployment) for `windows` windows: drift, re-plan; dry run acts on nothing
    windows = plan.launch.reschedule.windows
    for k in range(1, windows + 1):
        r = reschedule_pass("deepseek", store=store, stats=_stats(rate * 2.5, plan), now=t + 60 * k)
    assert r.detection.verdict.value == "drift_up" and r.replan is not None and r.replan.worth_it
    assert r.actions and not r.applied and store.get("deepseek").plan_json == plan.to_json()
    assert "would do" in r.describe() and "cost: " in r.describe()
    n = len(fake_sky.calls)
    # apply: the next pass (still drifted) records `applying`, then `up`s the new plan
    r = reschedule_pass("deepseek", apply=True, store=store, stats=_stats(rate * 2.5, plan), now=t + 60 * (windows + 1))
    assert r.applied
    steps = [(e.step, e.kind) for e in History(store).events("deepseek")]
    assert steps[-2:] == [("applying", r.kind), ("applied", r.kind)]
    new = store.get("deepseek").plan
    assert new.to_json() != plan.to_json() and sum(s.gpus for s in new.stages) == 32
    modes = {name: info["mode"] for op, name, info in fake_sky.calls[n:] if op == "serve_update"}
    for a in r.actions:
        if a.op in ("scale_stage", "update_stage"):
            assert modes[f"deepseek-{a.stage}"] == ("rolling" if a.op == "scale_stage" else "blue_green")
    # cool-down: the next pass decides nothing
    r = reschedule_pass("deepseek", apply=True, store=store, stats=_stats(rate * 2.5, plan), now=t + 60 * (windows + 2))
    assert r.detection.verdict.value == "cooldown"
    lines = history_lines("deepseek", store)
    assert any(line.startswith(f"last change ({steps[-1][1]})") for line in lines), lines


def test_an_interrupted_apply_is_resumed(fake_sky: RecordingSkyApi, tmp_path: Path) -> None:
    """`applying` recorded, then the process died before `up` finished: the next --apply pass runs `up` of the
    recorded plan (idempotent) and records `applied`."""
    from cascadia_sky.reschedule.history import Event

    store = StateStore(tmp_path)
    plan = example_plan("deepseek").with_launch(backend="skyserve", ready_timeout_s=30)
    launcher.up(launcher.Target(plan, SPEC), store=store)
    stages = list(plan.stages)
    stages[1] = stages[1].model_copy(update={"replicas": stages[1].replicas + 1})
    wanted = plan.model_copy(update={"stages": stages})
    History(store).record(Event("deepseek", 1.0, "applying", "scale", "test", "scale stage medium",
                                wanted.to_json(), ""))
    r = reschedule_pass("deepseek", apply=True, store=store, stats=_stats(plan.workload_rate_rps, plan), now=2.0)
    assert store.get("deepseek").plan.stage("medium").replicas == stages[1].replicas
    assert ("serve_update", "deepseek-medium") in fake_sky.ops()
    events = History(store).events("deepseek")
    assert (events[-1].step, events[-1].reason) == ("applied", "resumed: test")
    assert r.detection.verdict.value == "cooldown"      # the resumed change starts the cool-down


def test_a_no_change_decision_starts_no_cool_down(fake_sky: RecordingSkyApi, tmp_path: Path) -> None:
    """A re-plan that keeps the running deployment only moves the reference: the next pass judges the traffic
    again (a real change does start the cool-down, as the tests above show)."""
    from cascadia_sky.reschedule.history import Event

    store = StateStore(tmp_path)
    plan = example_plan("deepseek").with_launch(backend="skyserve", ready_timeout_s=30)
    launcher.up(launcher.Target(plan, SPEC), store=store)
    History(store).record(Event("deepseek", 1_000_000.0, "applied", "none", "drift; the running plan carries it",
                                "", plan.to_json(), ""))
    assert History(store).last_change("deepseek").kind == "none"
    assert History(store).last_change("deepseek", changed_only=True) is None
    r = reschedule_pass("deepseek", store=store, stats=_stats(plan.workload_rate_rps, plan), now=1_000_060.0)
    assert r.detection.verdict.value == "steady"
