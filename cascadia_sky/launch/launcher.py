"""The launcher decides; backends act.

`decide(record, plan)` is a pure function from the recorded deployment (or None) and a plan to a list of actions:
launch a stage that is not there (or was left pending by an interrupted `up`), update a stage whose engines
changed (model, GPU type, TP/PP, placement), scale a stage whose replica count alone changed (the running
replicas stay; new ones are added, surplus ones drained), remove a stage the plan dropped, launch the router or
update it when routing changed (thresholds, scorer, served names), launch or remove the re-schedule watcher of a
SkyServe cascade (reschedule.enabled). The same plan twice gives no actions, which is
what makes `up` idempotent. `up`, `status` and `down` wire the decision to a backend and to the state store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cascadia_sky.constants import FAILOVER_MAX_REPLANS
from cascadia_sky.errors import CapacityError, CascadiaError, InfeasibleError, LaunchError, UserInputError
from cascadia_sky.launch.backends import Action, DryrunReport, LaunchContext, get_backend
from cascadia_sky.launch.fingerprint import engine_changes, router_fingerprint, stage_fingerprint
from cascadia_sky.launch.keys import ensure_api_key, ensure_engine_keys
from cascadia_sky.launch.procs import process_start, same_process
from cascadia_sky.launch.state import DeploymentRecord, StateStore
from cascadia_sky.launch.status import ComponentStatus, DeploymentObservation, DeploymentStatus, derive_deployment
from cascadia_sky.launch.watcher import wants_watcher
from cascadia_sky.planner.plan import Plan

_UNSTARTED = ("pending", "failed", "stopped", "stopping")


def decide(record: DeploymentRecord | None, plan: Plan) -> list[Action]:
    """The actions that take the recorded deployment to `plan`. Pure: reads only its arguments."""
    recorded: dict[str, list[Any]] = {}
    router = None
    for comp in record.components if record is not None else ():
        if comp.kind == "router":
            router = comp
        elif comp.kind != "watcher":
            recorded.setdefault(comp.stage, []).append(comp)
    old_plan = record.plan if record is not None and record.plan_json else None
    actions: list[Action] = []
    for stage in plan.serving():
        comps = recorded.get(stage.name, [])
        fp = stage_fingerprint(plan, stage)
        if not comps:
            actions.append(Action("launch_stage", stage.name, "new stage"))
        elif any(c.fingerprint != fp for c in comps):
            changed = engine_changes(old_plan, plan, stage.name)
            actions.append(Action("update_stage", stage.name,
                                  f"changed: {changed}" if changed else "deployment changed"))
        elif any(c.phase in _UNSTARTED for c in comps if c.desired == "running"):
            actions.append(Action("launch_stage", stage.name, "resume (not started or failed before)"))
        elif (now := _recorded_replicas(comps, old_plan, stage.name)) != stage.replicas:
            actions.append(Action("scale_stage", stage.name, f"replicas {now} -> {stage.replicas}"))
    names = {s.name for s in plan.serving()}
    for name in recorded:
        if name not in names:
            actions.append(Action("remove_stage", name, "not in the plan any more"))
    if router is None:
        actions.append(Action("launch_router", "", "new router"))
    elif router.fingerprint != router_fingerprint(plan):
        actions.append(Action("update_router", "", "routing changed (thresholds, scorer, stage names, port)"))
    elif router.phase in _UNSTARTED:
        actions.append(Action("launch_router", "", "resume (not started or failed before)"))
    watcher = wants_watcher(record, plan.launch.reschedule.enabled, plan.launch.backend)
    if watcher:
        actions.append(Action(f"{watcher}_watcher", "", "reschedule.enabled" if watcher == "launch"
                              else "reschedule not enabled any more"))
    return actions


def _recorded_replicas(comps: list[Any], old_plan: Plan | None, stage: str) -> int:
    """Replicas a stage runs now: its running per-replica components (local, clusters), else the recorded plan's
    count (a SkyServe service is one component for all its replicas)."""
    per_replica = [c for c in comps if c.kind in ("engine", "cluster") and c.desired == "running"]
    if per_replica:
        return len(per_replica)
    if old_plan is not None and any(s.name == stage for s in old_plan.stages):
        return old_plan.stage(stage).replicas
    return len(comps)


# --- what to launch ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A plan to launch (its launch section says how) and the file it came from."""

    plan: Plan
    source: str = ""


def load_target(spec_file: str | None, plan_file: str | None, *, port: int | None = None,
                timeout_s: float | None = None, progress: Callable[[str], None] = lambda msg: None) -> Target:
    """A cascade.yaml (planned now) or a plan.json, validated before anything is launched. `port` and `timeout_s`
    (`up --port/--timeout`) change the plan's launch section, so the recorded plan says what was launched."""
    from cascadia_sky.planner.plan import read_plan

    if (spec_file is None) == (plan_file is None):
        raise UserInputError("give a cascade file (cascadia up cascade.yaml) or a plan (cascadia up --plan plan.json)")
    if plan_file is not None:
        plan = read_plan(plan_file)
        source = plan_file
    else:
        from cascadia_sky.planner.planner import make_plan
        from cascadia_sky.spec import load_spec

        plan = make_plan(load_spec(spec_file), progress=progress)  # type: ignore[arg-type]
        source = str(spec_file)
    changes = {k: v for k, v in (("router_port", port), ("ready_timeout_s", timeout_s)) if v is not None}
    if changes:
        plan = plan.with_launch(**changes)
    return Target(plan, str(Path(source).resolve()))


# --- up --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UpResult:
    """What `cascadia up` reports."""

    name: str
    backend: str
    actions: tuple[Action, ...]
    endpoint: str
    api_key_file: str
    status: DeploymentStatus
    dryrun: DryrunReport | None = None
    plan_file: str = ""            # the plan this deployment runs (`up --plan` of it is a no-op)


def up(target: Target, *, store: StateStore | None = None, dryrun: bool = False,
       progress: Callable[[str], None] = lambda msg: None,
       confirm: Callable[[list[Action], str], bool] | None = None) -> UpResult:
    """Decide, then act: bring the deployment named by the plan to the plan. Idempotent.

    The plan is recorded (state store, and `<state home>/deployments/<name>/plan.json`) before any backend acts.
    `confirm(actions, backend)` is asked before a backend that costs money acts (not for `local`). A fresh (or
    interrupted) deployment that fails to come up is torn down before the error is raised, so a failed `up`
    leaves no process or cluster behind; its logs stay under the state home.

    When SkyPilot finds no capacity on any offer of a stage's failover list (a CapacityError), `up` re-plans the
    cascade file without those offers (`resources.cloud.exclude_offers`), says what it excluded and why, and
    launches the new plan (the stages that came up stay); it stops with one clear message when no plan within
    the budget and quotas remains, after FAILOVER_MAX_REPLANS re-plans, or when it was given a plan file.
    """
    store = store or StateStore()
    before = store.get(target.plan.name)
    fresh = before is None or before.phase == "launching"   # never came up: a final failure leaves nothing
    excluded: list[str] = []
    for attempt in range(FAILOVER_MAX_REPLANS + 1):
        try:
            return _up_once(target, store=store, dryrun=dryrun, progress=progress, confirm=confirm)
        except CapacityError as exc:
            try:
                if attempt == FAILOVER_MAX_REPLANS:
                    raise LaunchError(f"{exc}\nstill no capacity after {FAILOVER_MAX_REPLANS} re-plans (excluded: "
                                      f"{', '.join(excluded)}); try again later, or raise quotas or the budget")
                target, newly = replan_without_capacity(target, exc, excluded, progress)
                excluded += newly
            except CascadiaError as final:
                if not fresh:
                    store.update(target.plan.name, message=str(final)[:2000])
                    raise
                cleaned = _teardown(store, target.plan.name)
                raise LaunchError(f"{final}\n`up` stopped everything it had started ({cleaned}); logs stay in "
                                  f"{store.deployment_dir(target.plan.name)}") from None
    raise AssertionError("unreachable")


def replan_without_capacity(target: Target, exc: CapacityError, excluded: list[str],
                            progress: Callable[[str], None]) -> tuple[Target, list[str]]:
    """The target re-planned from its cascade file without the offers SkyPilot found no capacity on (every offer
    of each failed stage's failover list), and the offers newly excluded. Raises a LaunchError saying why not
    when it cannot re-plan (a plan file) or no plan within the budget and quotas remains."""
    from cascadia_sky.planner.failover import offer_key
    from cascadia_sky.planner.planner import make_plan
    from cascadia_sky.spec import load_spec

    plan = target.plan
    newly = []
    for name in exc.stages:
        stage = plan.stage(name)
        keys = [offer_key(o.cloud, o.region, o.instance_type) for o in stage.offers] or (
            [offer_key(stage.cloud, stage.region, stage.instance_type)] if stage.cloud and stage.instance_type else [])
        newly += [k for k in keys if k not in excluded and k not in newly]
    source = target.source
    if not newly or not source.endswith((".yaml", ".yml")) or not Path(source).is_file():
        why = ("the failed stages have no cloud offers to exclude" if not newly else
               "it was started from a plan file; `cascadia up cascade.yaml` re-plans around missing capacity")
        raise LaunchError(f"{exc}\n`up` cannot re-plan: {why}")
    progress(f"SkyPilot found no capacity on any offer of stage(s) {', '.join(exc.stages)}: excluding "
             f"{', '.join(newly)} and re-planning")
    spec = load_spec(source)
    cloud = spec.resources.cloud
    if cloud is None:
        raise LaunchError(f"{exc}\n`up` cannot re-plan: {source} has no resources.cloud section")
    keep = list(dict.fromkeys([*cloud.exclude_offers, *excluded, *newly]))
    spec = _with_exclusions(spec, keep)
    try:
        new = make_plan(spec)
    except InfeasibleError as err:
        raise LaunchError(f"{exc}\nno plan within the budget and quotas remains without {', '.join(keep)}: "
                          f"{err}") from None
    new = new.model_copy(update={"launch": plan.launch})   # `up --port/--timeout` and the backend stay
    moved = [f"{s.name}: {s.gpu_type} x{s.gpus} on {s.cloud}/{s.region}/{s.instance_type} ${s.usd_per_hour:.2f}/h"
             for s in new.serving() if s.cloud]
    progress(f"re-planned ({new.predicted.usd_per_hour:.2f} $/h, was {plan.predicted.usd_per_hour:.2f}): "
             + "; ".join(moved) + f". A later `up {source}` plans with every offer again; list them under "
             "resources.cloud.exclude_offers to keep them out")
    return Target(new, source), newly


def _with_exclusions(spec: Any, keys: list[str]) -> Any:
    """A copy of the spec whose resources.cloud.exclude_offers is `keys` (relative paths resolve as before)."""
    from cascadia_sky.spec import CascadeSpec

    data = spec.model_dump(mode="json", exclude_none=True)
    data["resources"]["cloud"]["exclude_offers"] = keys
    new = CascadeSpec.model_validate(data)
    new._source = spec.source
    return new


def _up_once(target: Target, *, store: StateStore, dryrun: bool, progress: Callable[[str], None],
             confirm: Callable[[list[Action], str], bool] | None) -> UpResult:
    """One decide-and-act pass of `up` (see there). A CapacityError leaves what came up running: `up` re-plans,
    and the new plan's decision keeps what did not change."""
    plan = target.plan
    name, backend = plan.name, plan.launch.backend
    record = store.get(name)
    if record is not None and record.backend != backend:
        raise UserInputError(f"deployment {name!r} runs on backend {record.backend!r}, not {backend!r}; "
                             f"run `cascadia down {name}` first")
    impl = get_backend(backend)
    if record is not None and not dryrun and hasattr(impl, "sync"):   # a remote watcher may have changed it
        impl.sync(record, store)
        record = store.get(name)
    actions = decide(record, plan)
    ctx = LaunchContext(store=store, plan=plan, backend=backend, progress=progress)
    if dryrun:
        return UpResult(name, backend, tuple(actions), "", "", DeploymentStatus.LAUNCHING, impl.dryrun(actions, ctx))
    if not actions:
        assert record is not None
        if record.api_key_file:
            ensure_api_key(Path(record.api_key_file).parent, progress)
        return UpResult(name, backend, (), record.endpoint, record.api_key_file, observe(record)[0],
                        plan_file=str(store.plan_path(name)))
    impl.preflight(ctx)
    if confirm is not None and backend != "local" and not confirm(actions, backend):
        raise LaunchError("cancelled; nothing was launched")
    fresh = record is None or record.phase == "launching"
    key = ensure_api_key(store.deployment_dir(name), progress)
    ensure_engine_keys(store.deployment_dir(name), [s.name for s in plan.serving()], progress)
    me = os.getpid()
    base = record or DeploymentRecord(name=name, backend=backend)
    plan_json = plan.to_json()
    store.put(replace(base, components=(), backend=backend, phase="launching", plan_json=plan_json,
                      spec_path=target.source or base.spec_path, api_key_file=str(key), up_pid=me,
                      up_start=process_start(me), message=""))
    plan_file = store.plan_path(name)
    plan_file.write_text(plan_json)
    progress(f"plan recorded: {plan_file}")
    try:
        impl.execute(actions, ctx)
    except CapacityError as exc:
        store.update(name, message=str(exc)[:2000])
        raise
    except (CascadiaError, KeyboardInterrupt) as exc:
        if not fresh:
            store.update(name, message=str(exc)[:2000])
            raise
        cleaned = _teardown(store, name)
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        raise LaunchError(f"{why}\n`up` stopped everything it had started ({cleaned}); logs stay in "
                          f"{store.deployment_dir(name)}") from None
    store.update(name, phase="up", up_pid=None, up_start=None, message="")
    final = store.get(name)
    assert final is not None
    return UpResult(name, backend, tuple(actions), final.endpoint, final.api_key_file, observe(final)[0],
                    plan_file=str(plan_file))


# --- status ----------------------------------------------------------------------------------

def _observation(record: DeploymentRecord) -> DeploymentObservation:
    obs = get_backend(record.backend).observe(record)
    if record.phase == "launching" and not obs.owner_alive:
        obs = replace(obs, owner_alive=same_process(record.up_pid, record.up_start))
    return obs


def observe(record: DeploymentRecord) -> tuple[DeploymentStatus, dict[str, ComponentStatus]]:
    """Observe a recorded deployment through its backend and derive its states."""
    return derive_deployment(_observation(record))


@dataclass(frozen=True)
class DeploymentView:
    """One deployment as `cascadia status` shows it."""

    record: DeploymentRecord
    status: DeploymentStatus
    components: dict[str, ComponentStatus]
    router_stats: dict[str, Any] | None
    details: dict[str, str] = field(default_factory=dict)   # per component, what SkyPilot says beyond its state


def status(name: str | None = None, store: StateStore | None = None) -> list[DeploymentView]:
    """Every recorded deployment (or the one named), observed now, with the router's live figures if reachable."""
    from cascadia_sky.launch.procs import http_get

    store = store or StateStore()
    if name is not None:
        rec = store.get(name)
        if rec is None:
            raise UserInputError(f"no deployment named {name!r} (known: {', '.join(store.names()) or 'none'}); "
                                 f"start one with `cascadia up cascade.yaml`")
        records = [rec]
    else:
        records = store.all()
    views = []
    for rec in records:
        obs = _observation(rec)
        state, comps = derive_deployment(obs)
        stats = None
        if rec.endpoint and comps.get("router") is ComponentStatus.READY:
            code, body = http_get(rec.endpoint.removesuffix("/v1") + "/stats", _auth(rec))
            stats = body if code == 200 and isinstance(body, dict) else None
        views.append(DeploymentView(rec, state, comps, stats, {c.name: c.detail for c in obs.components if c.detail}))
    return views


def _auth(rec: DeploymentRecord) -> dict[str, str]:
    try:
        return {"Authorization": f"Bearer {Path(rec.api_key_file).read_text().strip()}"}
    except OSError:
        return {}


# --- down ------------------------------------------------------------------------------------

def down(name: str, store: StateStore | None = None) -> str:
    """Stop every component of a deployment and forget it. Idempotent: a second `down` only says so."""
    store = store or StateStore()
    if store.get(name) is None:
        return f"deployment {name!r} is not recorded; nothing to stop (already down?)"
    return f"stopped {name}: {_teardown(store, name)}"


def _teardown(store: StateStore, name: str) -> str:
    record = store.get(name)
    if record is None:
        return "nothing recorded"
    store.update(name, phase="stopping")
    stopped = get_backend(record.backend).teardown(record, store)
    store.delete(name)
    return ", ".join(stopped) if stopped else "nothing was running"


__all__ = ["DeploymentView", "Target", "UpResult", "decide", "down", "load_target", "observe", "status", "up"]
