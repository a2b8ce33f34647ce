"""Decide first, act second: the pure decision, the state store, and status derivation (no processes, no cloud)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from cascadia_sky.launch.fingerprint import router_fingerprint, stage_fingerprint
from cascadia_sky.launch.launcher import decide
from cascadia_sky.launch.state import ComponentRecord, DeploymentRecord, StateStore
from cascadia_sky.launch.status import (
    ComponentObservation,
    ComponentStatus,
    DeploymentObservation,
    DeploymentStatus,
    derive_component,
    derive_deployment,
)
from cascadia_sky.planner.plan import Plan
from tests.launch.helpers import example_plan


def _recorded(plan: Plan, phase: str = "ready") -> DeploymentRecord:
    """A deployment record as a completed `up` of `plan` leaves it (one component per replica + the router)."""
    comps = [ComponentRecord("x", f"{s.name}/{r}", "engine", s.name, r, phase=phase,
                             fingerprint=stage_fingerprint(plan, s)) for s in plan.stages for r in range(s.replicas)]
    comps.append(ComponentRecord("x", "router", "router", phase=phase, fingerprint=router_fingerprint(plan)))
    return DeploymentRecord(name=plan.name, backend="skyserve", phase="up", plan_json=plan.to_json(),
                            components=tuple(comps))


def _with_stage(plan: Plan, index: int, **changes) -> Plan:
    stages = list(plan.stages)
    stages[index] = stages[index].model_copy(update=changes)
    return plan.model_copy(update={"stages": stages})


def test_fresh_deployment_launches_every_stage_then_the_router() -> None:
    plan = example_plan("deepseek")
    acts = decide(None, plan)
    assert [(a.op, a.stage) for a in acts] == [("launch_stage", "small"), ("launch_stage", "medium"),
                                               ("launch_stage", "large"), ("launch_router", "")]


def test_same_plan_twice_is_a_no_op() -> None:
    plan = example_plan("deepseek")
    assert decide(_recorded(plan), plan) == []


def test_changes_map_to_the_smallest_action() -> None:
    plan = example_plan("deepseek")
    rec = _recorded(plan)
    new = _with_stage(plan, 0, threshold=-0.1)             # routing only: router update, no relaunch
    assert [(a.op, a.stage) for a in decide(rec, new)] == [("update_router", "")]
    new = _with_stage(plan, 1, replicas=plan.stages[1].replicas + 1)   # replica count only: scale that stage
    acts = decide(rec, new)
    assert [(a.op, a.stage) for a in acts] == [("scale_stage", "medium")]
    assert f"replicas {plan.stages[1].replicas} -> {plan.stages[1].replicas + 1}" in acts[0].reason
    new = _with_stage(plan, 1, tp=plan.stages[1].tp * 2)                 # new engines: relaunch that stage only
    acts = decide(rec, new)
    assert [(a.op, a.stage) for a in acts] == [("update_stage", "medium")]
    assert f"tp {plan.stages[1].tp} -> {plan.stages[1].tp * 2}" in acts[0].reason
    new = _with_stage(plan, 0, threshold=-0.3)             # a dropped stage goes, the router is re-pointed
    new = new.model_copy(update={"stages": [new.stages[0], new.stages[2]]})
    assert {(a.op, a.stage) for a in decide(rec, new)} == {("remove_stage", "medium"), ("update_router", "")}


def test_launch_settings_changes_map_to_the_component_they_affect() -> None:
    plan = example_plan("deepseek")
    rec = _recorded(plan)
    assert [(a.op, a.stage) for a in decide(rec, plan.with_launch(router_port=9000))] == [("update_router", "")]
    assert decide(rec, plan.with_launch(ready_timeout_s=5)) == []         # how long `up` waits changes nothing
    acts = decide(rec, plan.with_launch(vllm_version="0.34.0"))          # every engine is relaunched
    assert [(a.op, a.stage) for a in acts] == [("update_stage", s.name) for s in plan.stages]
    assert "launch.vllm_version '0.33.0' -> '0.34.0'" in acts[0].reason


def test_interrupted_up_resumes_only_what_did_not_start() -> None:
    plan = example_plan("deepseek")
    rec = _recorded(plan)
    comps = [c if c.stage != "large" else ComponentRecord(**{**c.__dict__, "phase": "pending"})
             for c in rec.components if c.kind != "router"]
    rec = DeploymentRecord(**{**rec.__dict__, "phase": "launching", "components": tuple(comps)})
    assert [(a.op, a.stage) for a in decide(rec, plan)] == [("launch_stage", "large"), ("launch_router", "")]


def test_backend_default_follows_the_plan_mode() -> None:
    assert example_plan("local").launch.backend == "local"
    assert example_plan("deepseek").launch.backend == "skyserve"
    assert example_plan("local-slurm").launch.backend == "clusters"


def _writer(home: str, i: int) -> None:
    StateStore(Path(home)).put_component(ComponentRecord("d", f"c{i}", "engine", "s", i, phase="starting"))


def test_state_store_round_trip_and_concurrent_writers(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.get("d") is None and store.names() == []
    plan = example_plan("local").model_copy(update={"name": "d"})
    store.put(DeploymentRecord(name="d", backend="local", plan_json=plan.to_json()))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rec = StateStore(tmp_path).get("d")
    assert rec is not None and rec.plan == plan and rec.plan.launch.engine_threads == 1
    assert sorted(c.name for c in rec.components) == [f"c{i}" for i in range(6)]
    store.update_component("d", "c3", phase="ready", url="http://127.0.0.1:1")
    assert store.get("d").component("c3").phase == "ready"  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        store.update("d", no_such_field=1)
    store.delete("d")
    assert store.get("d") is None and store.names() == []


@pytest.mark.parametrize(("recorded", "alive", "healthy", "remote", "expected"), [
    ("pending", False, None, None, ComponentStatus.PENDING),       # never started (up killed before)
    ("starting", True, False, None, ComponentStatus.STARTING),
    ("starting", True, True, None, ComponentStatus.READY),
    ("ready", False, None, None, ComponentStatus.LOST),            # killed outside cascadia, nobody restarts
    ("restarting", False, None, None, ComponentStatus.RESTARTING),
    ("failed", True, True, None, ComponentStatus.FAILED),          # the record's verdict stands
    ("starting", None, None, "REPLICA_INIT", ComponentStatus.STARTING),
    ("starting", None, None, "READY", ComponentStatus.READY),
    ("ready", None, None, "FAILED_PROVISION", ComponentStatus.FAILED),
    ("ready", None, None, "", ComponentStatus.LOST),               # SkyPilot no longer knows it
    ("pending", None, None, "", ComponentStatus.PENDING),
    ("starting", None, False, "UP", ComponentStatus.STARTING),     # cluster up, server not answering yet
])
def test_component_status(recorded, alive, healthy, remote, expected) -> None:
    assert derive_component(ComponentObservation("c", "engine", "s", recorded, alive, healthy, remote)) is expected


def _obs(phase: str, owner: bool, *states: tuple[str, str, bool, bool]) -> DeploymentObservation:
    return DeploymentObservation(phase, owner, tuple(ComponentObservation(n, "router" if n == "router" else "engine",
                                                                          "" if n == "router" else n[0], rec, alive,
                                                                          healthy)
                                                     for n, rec, alive, healthy in states))


def test_deployment_status() -> None:
    ready = ("a/0", "ready", True, True), ("router", "ready", True, True)
    assert derive_deployment(_obs("up", True, *ready))[0] is DeploymentStatus.READY
    starting = ("a/0", "starting", True, False), ("router", "pending", False, None)
    assert derive_deployment(_obs("launching", True, *starting))[0] is DeploymentStatus.LAUNCHING
    assert derive_deployment(_obs("launching", False, *starting))[0] is DeploymentStatus.INTERRUPTED
    two = ("a/0", "ready", True, True), ("a/1", "ready", False, None), ("router", "ready", True, True)
    assert derive_deployment(_obs("up", False, *two))[0] is DeploymentStatus.DEGRADED  # a/0 still serves
    gone = ("a/0", "ready", False, None), ("router", "ready", True, True)
    assert derive_deployment(_obs("up", False, *gone))[0] is DeploymentStatus.FAILED
    assert derive_deployment(_obs("up", True, *gone))[0] is DeploymentStatus.DEGRADED  # being restarted
    failed = ("a/0", "failed", False, None), ("router", "ready", True, True)
    assert derive_deployment(_obs("up", True, *failed))[0] is DeploymentStatus.FAILED
    assert derive_deployment(_obs("stopping", True, *ready))[0] is DeploymentStatus.STOPPING
