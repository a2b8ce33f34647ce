"""The launcher decides; backends act.

`decide(record, plan)` is a pure function from the recorded deployment (or None) and a plan to a list of actions:
launch a stage that is not there (or was left pending by an interrupted `up`), update a stage whose deployment
changed (model, GPU type, TP/PP, replicas, placement), remove a stage the plan dropped, launch the router or
update it when routing changed (thresholds, scorer, served names). The same plan twice gives no actions, which is
what makes `up` idempotent. `up`, `status` and `down` wire the decision to a backend and to the state store.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cascadia_sky.constants import LAUNCH_READY_TIMEOUT_SECONDS, LAUNCH_ROUTER_PORT
from cascadia_sky.errors import CascadiaError, LaunchError, UserInputError
from cascadia_sky.launch.backends import Action, DryrunReport, LaunchContext, get_backend
from cascadia_sky.launch.procs import process_start, same_process
from cascadia_sky.launch.state import DeploymentRecord, StateStore
from cascadia_sky.launch.status import ComponentStatus, DeploymentStatus, derive_deployment

# Plan keys whose change means the stage's engines must be relaunched (SkyServe: `sky serve update`).
STAGE_DEPLOY_KEYS = ("model", "served_model_name", "precision", "max_context", "gpu_type", "tp", "pp", "replicas",
                     "cloud", "region", "instance_type", "gpus_per_instance", "instances", "spot")
# Plan keys that only the router reads: a change is a router update, never an engine relaunch.
ROUTER_KEYS = ("name", "served_model_name", "threshold")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def stage_fingerprint(stage: dict[str, Any]) -> str:
    """What a stage's engines were launched with; equal fingerprints mean nothing to relaunch."""
    return _digest({k: stage.get(k) for k in STAGE_DEPLOY_KEYS})


def router_fingerprint(plan: dict[str, Any]) -> str:
    """What the router's routing depends on (stage order, names, thresholds, scorer)."""
    return _digest({"name": plan["name"], "scorer": plan.get("scorer"),
                    "stages": [{k: s.get(k) for k in ROUTER_KEYS} for s in plan["stages"]]})


def decide(record: DeploymentRecord | None, plan: dict[str, Any]) -> list[Action]:
    """The actions that take the recorded deployment to `plan`. Pure: reads only its arguments."""
    stages = {s["name"]: s for s in plan["stages"]}
    recorded: dict[str, list[Any]] = {}
    router = None
    for comp in record.components if record is not None else ():
        if comp.kind == "router":
            router = comp
        else:
            recorded.setdefault(comp.stage, []).append(comp)
    actions: list[Action] = []
    for name, stage in stages.items():
        comps = recorded.get(name, [])
        fp = stage_fingerprint(stage)
        if not comps:
            actions.append(Action("launch_stage", name, "new stage"))
        elif any(c.fingerprint != fp for c in comps):
            changed = _changed_keys(record, name, stage)
            actions.append(Action("update_stage", name, f"changed: {changed}" if changed else "deployment changed"))
        elif any(c.phase in ("pending", "failed", "stopped", "stopping") for c in comps):
            actions.append(Action("launch_stage", name, "resume (not started or failed before)"))
    for name in recorded:
        if name not in stages:
            actions.append(Action("remove_stage", name, "not in the plan any more"))
    if router is None:
        actions.append(Action("launch_router", "", "new router"))
    elif router.fingerprint != router_fingerprint(plan):
        actions.append(Action("update_router", "", "routing changed (thresholds, scorer or stage names)"))
    elif router.phase in ("pending", "failed", "stopped", "stopping"):
        actions.append(Action("launch_router", "", "resume (not started or failed before)"))
    return actions


def _changed_keys(record: DeploymentRecord | None, name: str, stage: dict[str, Any]) -> str:
    old = next((s for s in (record.plan if record else {}).get("stages", []) if s.get("name") == name), None)
    if old is None:
        return ""
    return ", ".join(f"{k} {old.get(k)!r} -> {stage.get(k)!r}" for k in STAGE_DEPLOY_KEYS if old.get(k) != stage.get(k))


def choose_backend(plan: dict[str, Any], requested: str | None) -> str:
    """`infra.backend` when set, else `local` for a local plan and `skyserve` for pool/cloud plans."""
    if requested:
        return requested
    return "local" if plan.get("mode") == "local" else "skyserve"


# --- what to launch ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A plan to launch with its launch options (the spec's `infra` section plus command-line overrides)."""

    plan: dict[str, Any]
    options: dict[str, Any]
    backend: str | None
    spec_path: str = ""


def load_target(spec_file: str | None, plan_file: str | None, *, port: int | None = None,
                timeout_s: float | None = None, progress: Callable[[str], None] = lambda msg: None) -> Target:
    """A cascade.yaml (planned now) or a plan.json, validated before anything is launched."""
    from cascadia_sky.planner.plan import read_plan

    if (spec_file is None) == (plan_file is None):
        raise UserInputError("give a cascade file (cascadia up cascade.yaml) or a plan (cascadia up --plan plan.json)")
    options: dict[str, Any] = {}
    backend = None
    if plan_file is not None:
        plan = read_plan(plan_file).model_dump(mode="json")
        source = plan_file
    else:
        from cascadia_sky.planner.planner import make_plan
        from cascadia_sky.spec import load_spec

        spec = load_spec(spec_file)  # type: ignore[arg-type]
        plan = make_plan(spec, progress=progress).model_dump(mode="json")
        options = spec.infra.model_dump(exclude_none=True)
        backend = options.pop("backend", None)
        if spec.resources.local is not None:
            options["threads"] = spec.resources.local.threads
        source = str(spec_file)
    if port is not None:
        options["router_port"] = port
    if timeout_s is not None:
        options["ready_timeout_s"] = timeout_s
    return Target(plan, options, backend, str(Path(source).resolve()))


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


def ensure_api_key(directory: Path) -> Path:
    """The router's API key file (mode 0600), created once per deployment. The key itself is never printed."""
    path = directory / "api_key"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"csk-{secrets.token_urlsafe(24)}\n")
    return path


def up(target: Target, *, store: StateStore | None = None, dryrun: bool = False,
       progress: Callable[[str], None] = lambda msg: None,
       confirm: Callable[[list[Action], str], bool] | None = None) -> UpResult:
    """Decide, then act: bring the deployment named by the plan to the plan. Idempotent.

    `confirm(actions, backend)` is asked before a backend that costs money acts (not for `local`). A fresh (or
    interrupted) deployment that fails to come up is torn down before the error is raised, so a failed `up`
    leaves no process or cluster behind; its logs stay under the state home.
    """
    store = store or StateStore()
    plan, backend, spec_path = target.plan, target.backend, target.spec_path
    opts = {"router_port": LAUNCH_ROUTER_PORT, "ready_timeout_s": LAUNCH_READY_TIMEOUT_SECONDS, **target.options}
    name = str(plan["name"])
    record = store.get(name)
    chosen = choose_backend(plan, backend or (record.backend if record else None))
    if record is not None and record.backend != chosen:
        raise UserInputError(f"deployment {name!r} runs on backend {record.backend!r}, not {chosen!r}; "
                             f"run `cascadia down {name}` first")
    impl = get_backend(chosen)
    actions = decide(record, plan)
    ctx = LaunchContext(store=store, plan=plan, backend=chosen, options=opts, progress=progress)
    if dryrun:
        return UpResult(name, chosen, tuple(actions), "", "", DeploymentStatus.LAUNCHING, impl.dryrun(actions, ctx))
    if not actions:
        assert record is not None
        return UpResult(name, chosen, (), record.endpoint, record.api_key_file, observe(record)[0])
    impl.preflight(ctx)
    if confirm is not None and chosen != "local" and not confirm(actions, chosen):
        raise LaunchError("cancelled; nothing was launched")
    fresh = record is None or record.phase == "launching"
    key = ensure_api_key(store.deployment_dir(name))
    me = os.getpid()
    base = record or DeploymentRecord(name=name, backend=chosen)
    store.put(replace(base, components=(), backend=chosen, phase="launching", plan_json=json.dumps(plan),
                      spec_path=spec_path or base.spec_path, router_port=int(opts["router_port"]),
                      api_key_file=str(key), up_pid=me, up_start=process_start(me),
                      ready_timeout_s=float(opts["ready_timeout_s"]), options=json.dumps(opts), message=""))
    try:
        impl.execute(actions, ctx)
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
    return UpResult(name, chosen, tuple(actions), final.endpoint, final.api_key_file, observe(final)[0])


# --- status ----------------------------------------------------------------------------------

def observe(record: DeploymentRecord) -> tuple[DeploymentStatus, dict[str, ComponentStatus]]:
    """Observe a recorded deployment through its backend and derive its states."""
    obs = get_backend(record.backend).observe(record)
    if record.phase == "launching" and not obs.owner_alive:
        obs = replace(obs, owner_alive=same_process(record.up_pid, record.up_start))
    return derive_deployment(obs)


@dataclass(frozen=True)
class DeploymentView:
    """One deployment as `cascadia status` shows it."""

    record: DeploymentRecord
    status: DeploymentStatus
    components: dict[str, ComponentStatus]
    router_stats: dict[str, Any] | None


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
        state, comps = observe(rec)
        stats = None
        if rec.endpoint and comps.get("router") is ComponentStatus.READY:
            code, body = http_get(rec.endpoint.removesuffix("/v1") + "/stats", _auth(rec))
            stats = body if code == 200 and isinstance(body, dict) else None
        views.append(DeploymentView(rec, state, comps, stats))
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


__all__ = ["DeploymentView", "Target", "UpResult", "choose_backend", "decide", "down", "ensure_api_key",
           "load_target", "observe", "router_fingerprint", "stage_fingerprint", "status", "up"]
