"""The SkyPilot backends: `skyserve` (one SkyServe service per stage + one for the router) and `clusters` (one
SkyPilot cluster per stage replica via `sky.launch`, the router as a supervised local process balancing over them;
for infra without SkyServe, e.g. Slurm or SSH node pools, where the launching machine reaches the nodes directly).

They act through `SkyApi` (cascadia_sky/launch/skypilot.py); tests register these same classes with a recording
`SkyApi`. Every component is recorded (`starting`, with its SkyPilot name) before SkyPilot is asked to create it,
so an interrupted `up` leaves names that `down` can tear down. Stages launch in parallel; the router goes last,
configured with the stages' endpoints.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cascadia_sky.constants import (
    LAUNCH_LOG_TAIL_CHARS,
    PRICE_CHECK_TOLERANCE_FRACTION,
    PRICE_CHECK_TOLERANCE_USD_PER_HOUR,
    RESCHEDULE_DRAIN_POLL_SECONDS,
    RESCHEDULE_DRAIN_TIMEOUT_SECONDS,
    SKY_HEALTH_POLL_INTERVAL_SECONDS,
    SKY_JOB_LOG_TAIL_LINES,
    SKY_POLL_INTERVAL_SECONDS,
)
from cascadia_sky.errors import CapacityError, CascadiaError, LaunchError
from cascadia_sky.launch.backends import Action, DryrunReport, LaunchContext
from cascadia_sky.launch.backends.supervised import (
    check_router_port,
    ensure_supervisor,
    observe_local,
    stop_local,
    wait_until_ready,
)
from cascadia_sky.launch.fingerprint import router_fingerprint, stage_fingerprint
from cascadia_sky.launch.keys import engine_key_env, ensure_admin_key, read_engine_keys
from cascadia_sky.launch.procs import engine_idle, http_get, http_post, same_process
from cascadia_sky.launch.skypilot import SkyApi, SkyApiProtocol, capacity_errors, check_tasks
from cascadia_sky.launch.state import ComponentRecord, DeploymentRecord, StateStore
from cascadia_sky.planner.plan import Plan, StagePlan
from cascadia_sky.launch.status import ComponentObservation, DeploymentObservation
from cascadia_sky.launch.tasks import (
    engine_key_secret,
    router_task,
    secret_values,
    stage_layout,
    stage_port,
    stage_task,
    to_yaml,
    watcher_task,
    write_router_config,
)
from cascadia_sky.launch.watcher import (
    ADMIN_KEY_ENV,
    IN_WATCHER_ENV,
    STATE_LOG_LINES,
    WATCHER_COMPONENT,
    check_reachable_api_server,
    import_state,
    parse_state_lines,
    plan_digest,
    watcher_cluster,
    watcher_secrets,
    write_bundle,
)

_STAGE_OPS = ("launch_stage", "update_stage", "scale_stage", "remove_stage")
# `sky serve update` mode per kind of change: a new replica count changes only the service section, so a rolling
# update reuses the running replicas (no relaunch); new engines (GPU type, TP/PP, model) come up beside the old
# version and traffic switches only when enough are ready (blue/green), so a threshold calibrated for one latency
# never serves a mix of versions.
UPDATE_MODES = {"scale_stage": "rolling", "update_stage": "blue_green"}
_JOB_ENDED = ("SUCCEEDED", "CANCELLED", "FAILED")   # SkyPilot job states after which the engine will not answer


def dryrun_clouds(plan: Plan) -> list[str]:
    """Clouds to seed and enable for the dry run: the targets', the plan's (every failover offer's too), else every
    shipped catalog's."""
    from cascadia_sky.catalog import SKYPILOT_CLOUD_NAMES

    named = [t.split("/")[0].lower() for t in plan.launch.targets or []]
    named += [s.cloud.lower() for s in plan.stages if s.cloud]
    named += [o.cloud.lower() for s in plan.stages for o in s.offers]
    known = sorted({c for c in named if c in SKYPILOT_CLOUD_NAMES})
    return known or sorted(SKYPILOT_CLOUD_NAMES)


class _SkyBase:
    name = "sky"
    service = True

    def __init__(self, api: SkyApiProtocol | None = None, poll_s: float = SKY_POLL_INTERVAL_SECONDS) -> None:
        self.api: SkyApiProtocol = api if api is not None else SkyApi()
        self.poll_s = poll_s

    def _run_parallel(self, jobs: list[Any], fn: Any, label: Any = lambda job: job.stage) -> None:
        """Run `fn(job)` for all jobs at once; raise one LaunchError naming every failure."""
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = [(job, pool.submit(fn, job)) for job in jobs]
        errors = []
        short: list[str] = []   # stages SkyPilot found no capacity for (CapacityError)
        for job, fut in futures:
            exc = fut.exception()
            if isinstance(exc, CapacityError):
                short += [s for s in exc.stages if s not in short]
            if exc is not None:
                errors.append(f"{label(job)}: {exc}" if isinstance(exc, CascadiaError)
                              else f"{label(job)}: {type(exc).__name__}: {exc}")
        if errors and short and all(isinstance(f.exception(), CapacityError) for _, f in futures
                                         if f.exception() is not None):
            raise CapacityError("; ".join(errors), stages=tuple(short))   # only capacity: `up` may re-plan
        if errors:
            raise LaunchError("; ".join(errors))

    def _deadline(self, ctx: LaunchContext) -> float:
        return time.monotonic() + ctx.plan.launch.ready_timeout_s

    def dryrun(self, actions: list[Action], ctx: LaunchContext) -> DryrunReport:
        """SkyPilot's parser, SkyServe's check and optimizer on every task (offline); fails when SkyPilot refuses a
        task, or picks or prices a stage's offers otherwise than the plan (see `price_problems`)."""
        items: list[dict[str, Any]] = []
        tasks: list[dict[str, Any]] = []
        stages = []
        for stage in ctx.plan.serving():
            cfg = stage_task(ctx.plan, stage, service=self.service)
            copies = stage.replicas
            label = f"{ctx.name}-{stage.name}" + ("" if self.service else f"-{{0..{copies - 1}}}")
            items.append({"name": label, "kind": "service" if self.service else f"{copies} cluster(s)",
                          "task": to_yaml(cfg), "_copies": copies * stage_layout(stage)[1],
                          "plan_usd_per_hour": stage.usd_per_hour if stage.cloud else None})
            tasks.append({"name": label, "config": cfg, "service": self.service})
            stages.append(stage)
        with tempfile.TemporaryDirectory(prefix="cascadia-router-") as tmp:
            if self.service:
                endpoints = {s.name: [f"http://{ctx.name}-{s.name}.pending:8000"] for s in ctx.plan.serving()}
                cfg = router_task(ctx.plan, write_router_config(ctx.plan, endpoints, Path(tmp) / "router.json"))
                items.append({"name": cfg["name"], "kind": "service", "task": to_yaml(cfg), "_copies": 1})
                tasks.append({"name": cfg["name"], "config": cfg, "service": True, "cpu_only": True})
                stages.append(None)
                if ctx.plan.launch.reschedule.enabled:   # the re-schedule watcher beside the router
                    cfg = watcher_task(ctx.plan, Path(tmp))
                    items.append({"name": cfg["name"], "kind": "cluster (re-schedule watcher)",
                                  "task": to_yaml(cfg), "_copies": 1})
                    tasks.append({"name": cfg["name"], "config": cfg, "service": False, "cpu_only": True})
                    stages.append(None)
            checked = check_tasks(tasks, dryrun_clouds(ctx.plan))
        problems: list[str] = []
        for item, res, stage in zip(items, checked, stages):
            if not res["ok"]:
                problems.append(f"{item['name']}: {res['error']}")
                continue
            item["choice"] = res["choice"]
            per_node = res.get("usd_per_hour_per_node")
            copies = item.pop("_copies")
            item["usd_per_hour"] = None if per_node is None else per_node * copies
            planned = list(stage.offers) if stage is not None else []
            item["band"] = [{**b, "usd_per_hour": None if b["usd_per_hour_per_node"] is None
                             else b["usd_per_hour_per_node"] * copies,
                             "plan_usd_per_hour": planned[k].usd_per_hour if k < len(planned) else None}
                            for k, b in enumerate(res.get("band") or [])]
            if stage is not None and stage.cloud:
                problems += price_problems(item["name"], stage, res, copies)
        if problems:
            raise LaunchError("SkyPilot does not launch this plan as planned:\n  " + "\n  ".join(problems))
        if not self.service:
            items.append({"name": "router", "kind": "local process", "usd_per_hour": 0.0,
                          "command": f"python -m router --config <deployment>/router.json --host 127.0.0.1 "
                                     f"--port {ctx.plan.launch.router_port} (endpoints: the clusters' head IPs)"})
        notes = [(f"SkyPilot's optimizer ran on the shipped catalogs ({', '.join(dryrun_clouds(ctx.plan))}"
                  f"; prices per hour, all replicas and nodes). HF_TOKEN and the router key are SkyPilot secrets "
                  f"passed at launch, never written.")]
        if any(item.get("band") for item in items):
            notes.append("failover: SkyPilot tries a stage's offers in the listed order (resources.ordered) when one "
                         "has no capacity; when none has, `up` re-plans without them.")
        return DryrunReport(self.name, tuple(actions), tuple(items), tuple(notes))


def price_problems(name: str, stage: StagePlan, res: dict[str, Any], copies: int) -> list[str]:
    """Where SkyPilot's choice or price for a cloud stage differs from the plan's (tolerance: a cent, or 0.5 % of
    the plan's price, whichever is larger): its first choice, and each offer of the failover list alone."""
    def off(plan_usd: float, sky_usd: float) -> bool:
        tol = max(PRICE_CHECK_TOLERANCE_USD_PER_HOUR, PRICE_CHECK_TOLERANCE_FRACTION * plan_usd)
        return abs(sky_usd - plan_usd) > tol

    fix = "re-plan (`cascadia plan`) so that the plan and SkyPilot read the same catalogs"
    per_node = res.get("usd_per_hour_per_node")
    if per_node is None:
        return [(f"{name}: SkyPilot prices no offer for it ({res.get('choice') or 'no choice'}); the plan's price "
                 f"is ${stage.usd_per_hour:.4f}/h; {fix}")]
    out = []
    where = (str(res.get("cloud", "")).lower(), res.get("region"), res.get("instance_type"))
    if where != (stage.cloud, stage.region, stage.instance_type) or off(stage.usd_per_hour, per_node * copies):
        out.append(f"{name}: SkyPilot picks {'/'.join(str(w) for w in where)} at ${per_node * copies:.4f}/h, the "
                   f"plan {stage.cloud}/{stage.region}/{stage.instance_type} at ${stage.usd_per_hour:.4f}/h; {fix}")
    for k, (offer, b) in enumerate(zip(stage.offers, res.get("band") or [])):
        if not b["ok"] or b["usd_per_hour_per_node"] is None:
            out.append(f"{name}: failover offer {k + 1} {offer.cloud}/{offer.region}/{offer.instance_type}: SkyPilot "
                       f"refuses it ({b['choice']}); the plan's price is ${offer.usd_per_hour:.4f}/h; {fix}")
        elif off(offer.usd_per_hour, b["usd_per_hour_per_node"] * copies):
            out.append(f"{name}: failover offer {k + 1} {offer.cloud}/{offer.region}/{offer.instance_type}: SkyPilot "
                       f"prices it at ${b['usd_per_hour_per_node'] * copies:.4f}/h, the plan at "
                       f"${offer.usd_per_hour:.4f}/h; {fix}")
    return out


class SkyServeBackend(_SkyBase):
    """One SkyServe service per stage (replicas = the plan's DP) plus one for the router."""

    name = "skyserve"

    def preflight(self, ctx: LaunchContext) -> None:
        self.api.check()
        if ctx.plan.launch.reschedule.enabled and not os.environ.get(IN_WATCHER_ENV):
            check_reachable_api_server()

    def execute(self, actions: list[Action], ctx: LaunchContext) -> None:
        secrets = secret_values()
        keys = read_engine_keys(ctx.directory)
        admin = ensure_admin_key(ctx.directory)
        stage_actions = [a for a in actions if a.op in _STAGE_OPS]
        self._run_parallel(stage_actions, lambda a: self._stage(a, ctx, secrets, keys))
        rec = ctx.record()
        router = rec.component("router")
        if stage_actions or any(a.op in ("launch_router", "update_router") for a in actions):
            endpoints = {c.stage: [c.url] for c in rec.components if c.kind == "service" and c.url}
            key_env = {s.name: engine_key_env(s.name) for s in ctx.plan.serving() if s.name in keys}
            path = ctx.directory / "router.json"
            before = path.read_text() if path.is_file() else ""
            write_router_config(ctx.plan, endpoints, path, key_env)
            same_stages = not any(a.op in ("launch_stage", "remove_stage", "launch_router") for a in actions)
            if router is not None and router.phase == "ready" and same_stages and (
                    path.read_text() == before or self._swap(ctx, path, admin)):
                ctx.store.update_component(ctx.name, "router", fingerprint=router_fingerprint(ctx.plan))
            else:   # a new router, new stages (the router needs their keys' variables), or the swap was refused
                cfg = router_task(ctx.plan, path)
                key = Path(rec.api_key_file).read_text().strip()
                router_secrets = {"CASCADIA_ROUTER_API_KEYS": key, ADMIN_KEY_ENV: admin.read_text().strip(),
                                  **{key_env[s]: keys[s] for s in key_env}}
                url = self._service(ctx, "router", "", cfg, router_secrets, update=router is not None)
                ctx.store.update(ctx.name, endpoint=url.rstrip("/") + "/v1")
        self._watcher(actions, ctx, secrets)

    def _swap(self, ctx: LaunchContext, path: Path, admin: Path) -> bool:
        """The running router takes the new config through its admin API (atomic; requests in flight finish on the
        old one; no restart, no SkyServe update). False when it refuses or does not answer (the caller then rolls
        the router service out with the new config)."""
        import json

        base = ctx.record().endpoint.removesuffix("/v1")
        code, body = http_post(base + "/admin/config", json.loads(path.read_text()),
                               {"Authorization": f"Bearer {admin.read_text().strip()}"})
        if code == 200:
            ctx.progress(f"{ctx.name}-router: new config swapped in through its admin API (no restart)")
            return True
        why = (body or {}).get("error", {}).get("message", "") if isinstance(body, dict) else ""
        ctx.progress(f"{ctx.name}-router: config swap refused ({code or 'no answer'}{': ' + why if why else ''}); "
                     f"rolling the router service out instead")
        return False

    def _watcher(self, actions: list[Action], ctx: LaunchContext, secrets: dict[str, str]) -> None:
        """Launch, relaunch (any other change: its bundle must hold the new plan) or remove the re-schedule
        watcher. Inside the watcher (its own changes) nothing happens here."""
        if os.environ.get(IN_WATCHER_ENV):
            return
        rec = ctx.record()
        have = rec.component(WATCHER_COMPONENT)
        cluster = watcher_cluster(ctx.name)
        if any(a.op == "remove_watcher" for a in actions) or (have is not None and not
                                                              ctx.plan.launch.reschedule.enabled):
            self._watcher_down(rec, ctx.store)
            return
        if have is None and not any(a.op == "launch_watcher" for a in actions):
            return
        if have is not None:
            ctx.progress(f"{cluster}: relaunching with the new plan")
            self._watcher_down(rec, ctx.store)
        ctx.store.put_component(ComponentRecord(
            deployment=ctx.name, name=WATCHER_COMPONENT, kind="watcher", phase="starting", handle=cluster,
            started_at=time.time(), fingerprint=plan_digest(ctx.plan.to_json())))
        bundle = write_bundle(ctx.store, ctx.name, rec.spec_path, ctx.directory / "watch-bundle")
        cfg = watcher_task(ctx.plan, bundle)
        ctx.progress(f"{cluster}: launching the re-schedule watcher (sky.launch)")
        self.api.cluster_launch(cfg, cluster, watcher_secrets(ctx.directory, secrets), 0)
        ctx.store.update_component(ctx.name, WATCHER_COMPONENT, phase="ready")

    def _watcher_down(self, rec: DeploymentRecord, store: StateStore) -> list[str]:
        have = rec.component(WATCHER_COMPONENT)
        if have is None:
            return []
        store.update_component(rec.name, WATCHER_COMPONENT, phase="stopping")
        gone = [have.handle] if have.handle in self.api.cluster_status([have.handle]) else []
        if gone:
            self.api.cluster_down(have.handle)
        store.delete_component(rec.name, WATCHER_COMPONENT)
        return gone

    def sync(self, record: DeploymentRecord, store: StateStore) -> list[dict[str, Any]]:
        """The running watcher's newest state (its job log) into this machine's record; the state lines read."""
        have = record.component(WATCHER_COMPONENT)
        if have is None or have.handle not in self.api.cluster_status([have.handle]):
            return []
        states = parse_state_lines(self.api.job_log_tail(have.handle, STATE_LOG_LINES))
        import_state(store, record, states)
        return [s for s in states if s.get("base") == have.fingerprint]

    def _stage(self, action: Action, ctx: LaunchContext, secrets: dict[str, str], keys: dict[str, str]) -> None:
        service = f"{ctx.name}-{action.stage}"
        if action.op == "remove_stage":
            ctx.store.update_component(ctx.name, action.stage, phase="stopping")
            self.api.serve_down([service])
            ctx.store.delete_component(ctx.name, action.stage)
            return
        stage = ctx.plan.stage(action.stage)
        if stage.name in keys:
            secrets = {**secrets, engine_key_secret(stage): keys[stage.name]}
        self._service(ctx, action.stage, action.stage, stage_task(ctx.plan, stage), secrets,
                      update=action.op in UPDATE_MODES, fingerprint=stage_fingerprint(ctx.plan, stage),
                      mode=UPDATE_MODES.get(action.op, "rolling"))

    def _service(self, ctx: LaunchContext, comp: str, stage: str, cfg: dict[str, Any], secrets: dict[str, str],
                 *, update: bool, fingerprint: str = "", mode: str = "rolling") -> str:
        """Create (or update) one service and wait for READY; recorded before SkyPilot is called."""
        service = str(cfg["name"])
        ctx.store.put_component(ComponentRecord(
            deployment=ctx.name, name=comp, kind="router" if comp == "router" else "service", stage=stage,
            phase="starting", handle=service, started_at=time.time(),
            fingerprint=fingerprint or router_fingerprint(ctx.plan)))
        ctx.progress(f"{service}: {'updating' if update else 'starting'} (SkyServe)")
        existing = self.api.serve_status([service]).get(service)
        if existing is not None and str(existing.get("status", "")).startswith("FAILED"):
            ctx.progress(f"{service}: SkyServe says {existing['status']}; replacing it")   # e.g. before a re-plan
            self.api.serve_down([service])
            existing = None
        if existing is not None and update:
            self.api.serve_update(cfg, service, secrets, mode)
            url = existing["endpoint"]
        elif existing is not None:  # an interrupted `up` had created it already
            url = existing["endpoint"]
        else:
            url = self.api.serve_up(cfg, service, secrets)
        ctx.store.update_component(ctx.name, comp, url=url)
        deadline = self._deadline(ctx)
        while True:
            info = self.api.serve_status([service]).get(service) or {}
            status = str(info.get("status", ""))
            if status == "READY":
                break
            if status.startswith("FAILED"):
                replicas = [str(r) for r in info.get("replicas") or []]
                ctx.store.update_component(ctx.name, comp, phase="failed",
                                           message=f"SkyServe: {status} (replicas: {', '.join(replicas) or '-'})")
                if stage and replicas and all(r == "FAILED_PROVISION" for r in replicas):
                    raise CapacityError(f"{stage}: SkyServe could not provision a replica on any of its offers "
                                        f"(service {service}: {status}, replicas {', '.join(replicas)}); see "
                                        f"`sky serve logs {service} --controller`", stages=(stage,))
                raise LaunchError(f"service {service} is {status}; see `sky serve logs {service} 1`")
            if time.monotonic() > deadline:
                raise LaunchError(f"service {service} not READY after {ctx.plan.launch.ready_timeout_s:g} s "
                                  f"(SkyServe says {status or 'nothing'}); see `sky serve status {service}`")
            time.sleep(self.poll_s)
        url = info.get("endpoint") or url
        ctx.store.update_component(ctx.name, comp, phase="ready", url=url)
        ctx.progress(f"{service}: ready at {url}")
        return str(url)

    def observe(self, record: DeploymentRecord) -> DeploymentObservation:
        handles = [c.handle for c in record.components if c.handle and c.kind != "watcher"]
        info = self.api.serve_status(handles) if handles else {}
        comps = [ComponentObservation(c.name, c.kind, c.stage, c.phase,
                                      remote=(info.get(c.handle) or {}).get("status", ""),
                                      detail=replica_detail((info.get(c.handle) or {}).get("replicas") or []))
                 for c in record.components if c.kind != "watcher"]
        watcher = record.component(WATCHER_COMPONENT)
        if watcher is not None:   # the cluster, and whether its job (the loop) still runs
            remote = self.api.cluster_status([watcher.handle]).get(watcher.handle, "")
            if remote == "UP" and watcher.phase == "ready":
                job = self.api.job_status(watcher.handle)
                remote = f"FAILED (its job: {job})" if job.startswith(_JOB_ENDED) else remote
            comps.append(ComponentObservation(watcher.name, watcher.kind, "", watcher.phase, remote=remote))
        return DeploymentObservation(record.phase, record.phase == "up", tuple(comps))

    def teardown(self, record: DeploymentRecord, store: StateStore) -> list[str]:
        """The watcher first (it must not change what is being taken down), then every service."""
        stopped = self._watcher_down(record, store)
        handles = [c.handle for c in record.components if c.handle and c.kind != "watcher"]
        existing = [h for h in handles if h in self.api.serve_status(handles)] if handles else []
        self.api.serve_down(existing)
        return stopped + existing


def replica_detail(replicas: list[str]) -> str:
    """SkyServe's replica states when not all are READY, e.g. "replicas: 1 READY, 1 PREEMPTED (SkyServe replaces
    a preempted spot replica, on-demand while spot has no capacity)"; "" when all are ready."""
    if not replicas or all(r == "READY" for r in replicas):
        return ""
    counts: dict[str, int] = {}
    for r in replicas:
        counts[r] = counts.get(r, 0) + 1
    text = "replicas: " + ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
    if "PREEMPTED" in counts:
        text += " (SkyServe replaces a preempted spot replica, on-demand while spot has no capacity)"
    return text


class ClustersBackend(_SkyBase):
    """One SkyPilot cluster per stage replica (`sky.launch`), the router local and balancing over their head IPs.

    GPU stages run vLLM (tasks/stage-service.yaml), CPU stages of a resources.local plan run llama.cpp
    (tasks/stage-llamacpp.yaml). Each replica's engine port is picked here and recorded before the launch: several
    clusters may share one node (a Slurm node runs many jobs), so a fixed port would collide.
    """

    name = "clusters"
    service = False

    def preflight(self, ctx: LaunchContext) -> None:
        self.api.check()
        check_router_port(ctx)
        for stage in ctx.plan.serving():  # every task renders (bundled model known, ...) before anything launches
            stage_task(ctx.plan, stage, service=False, replica=0)

    def execute(self, actions: list[Action], ctx: LaunchContext) -> None:
        secrets = secret_values()
        keys = read_engine_keys(ctx.directory)
        jobs = []
        surplus: list[ComponentRecord] = []
        rec = ctx.record()
        for a in actions:
            if a.op == "remove_stage":
                jobs += [(a, c.replica) for c in rec.components if c.stage == a.stage]
            elif a.op in ("launch_stage", "update_stage"):
                jobs += [(a, r) for r in range(ctx.plan.stage(a.stage).replicas)]
            elif a.op == "scale_stage":  # only the missing replicas launch; surplus ones drain, the rest keep running
                want = ctx.plan.stage(a.stage).replicas
                have = {c.replica for c in rec.components if c.stage == a.stage and c.kind == "cluster"}
                jobs += [(Action("launch_stage", a.stage, a.reason), r) for r in range(want) if r not in have]
                surplus += [c for c in rec.components if c.stage == a.stage and c.kind == "cluster"
                            and c.replica >= want]
        self._run_parallel(jobs, lambda job: self._replica(job[0], job[1], ctx, secrets, keys),
                           label=lambda job: f"{job[0].stage}/{job[1]}")
        port = ctx.plan.launch.router_port
        if ctx.record().component("router") is not None:   # the supervisor swaps the running router's config
            ctx.store.update_component(ctx.name, "router", fingerprint=router_fingerprint(ctx.plan))
        else:
            ctx.store.put_component(ComponentRecord(deployment=ctx.name, name="router", kind="router",
                                                    fingerprint=router_fingerprint(ctx.plan), port=port))
        ctx.store.update(ctx.name, endpoint=f"http://{ctx.plan.launch.router_host}:{port}/v1")
        ensure_supervisor(ctx)
        self._drain(ctx, surplus)
        wait_until_ready(ctx, self.observe)

    def _drain(self, ctx: LaunchContext, surplus: list[ComponentRecord]) -> None:
        """Surplus replicas: out of the router (the supervisor swaps its config), then idle or out of time, then
        their clusters go. No request is sent to a replica after it is downed."""
        if not surplus:
            return
        for c in surplus:
            ctx.store.update_component(ctx.name, c.name, desired="stopped", phase="stopping", message="draining")
        urls = {c.url for c in surplus if c.url}
        stage_of = {c.url: c.stage for c in surplus if c.url}
        keys = read_engine_keys(ctx.directory)
        deadline = time.monotonic() + RESCHEDULE_DRAIN_TIMEOUT_SECONDS
        key_file = ctx.directory / "admin_key"
        router = f"http://{ctx.plan.launch.router_host}:{ctx.plan.launch.router_port}"
        while time.monotonic() < deadline:
            headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"} if key_file.exists() else {}
            code, body = http_get(router + "/admin/config", headers)
            live = {u for s in (body or {}).get("config", {}).get("stages", []) for u in s.get("endpoints", [])} \
                if code == 200 and isinstance(body, dict) else urls
            if not live & urls:
                break
            time.sleep(RESCHEDULE_DRAIN_POLL_SECONDS)
        pending = set(urls)
        while pending and time.monotonic() < deadline:
            pending = {u for u in pending if not engine_idle(u, keys.get(stage_of[u], ""))}
            if pending:
                time.sleep(RESCHEDULE_DRAIN_POLL_SECONDS)
        for c in surplus:
            ctx.progress(f"{c.handle}: drained; taking it down")
            if c.handle in self.api.cluster_status([c.handle]):
                self.api.cluster_down(c.handle)
            ctx.store.delete_component(ctx.name, c.name)

    def _replica(self, action: Action, replica: int, ctx: LaunchContext, secrets: dict[str, str],
                 keys: dict[str, str]) -> None:
        from cascadia_sky.engines.process import free_port

        comp = f"{action.stage}/{replica}"
        cluster = f"{ctx.name}-{action.stage}-{replica}"
        old = ctx.record().component(comp)
        if action.op == "remove_stage":
            ctx.store.update_component(ctx.name, comp, phase="stopping")
            if cluster in self.api.cluster_status([cluster]):
                self.api.cluster_down(cluster)
            ctx.store.delete_component(ctx.name, comp)
            return
        if old is not None and cluster in self.api.cluster_status([cluster]):
            if action.op == "launch_stage" and old.url and http_get(old.url + "/health")[0] == 200:
                ctx.store.update_component(ctx.name, comp, phase="ready")  # an interrupted `up` had finished it
                return
            # Changed, or left half-launched: start over on a fresh cluster rather than run a second engine job.
            ctx.store.update_component(ctx.name, comp, phase="stopping")
            self.api.cluster_down(cluster)
        stage = ctx.plan.stage(action.stage)
        if stage.name in keys:
            secrets = {**secrets, engine_key_secret(stage): keys[stage.name]}
        port = old.port if old is not None and old.port else free_port()
        cfg = stage_task(ctx.plan, stage, service=False, replica=replica, port=port)
        ctx.store.put_component(ComponentRecord(
            deployment=ctx.name, name=comp, kind="cluster", stage=action.stage, replica=replica, phase="starting",
            handle=cluster, port=port, started_at=time.time(), fingerprint=stage_fingerprint(ctx.plan, stage)))
        ctx.progress(f"{cluster}: launching (sky.launch)")
        try:
            with capacity_errors(action.stage):
                url = self.api.cluster_launch(cfg, cluster, secrets, stage_port(cfg))
        except LaunchError as exc:
            ctx.store.update_component(ctx.name, comp, phase="failed", message=str(exc)[:2000])
            raise
        ctx.store.update_component(ctx.name, comp, url=url)
        ctx.progress(f"{cluster}: job submitted; waiting for its engine at {url}")
        self._wait_serving(ctx, comp, cluster, url)
        ctx.store.update_component(ctx.name, comp, phase="ready")
        ctx.progress(f"{cluster}: ready at {url}")

    def _wait_serving(self, ctx: LaunchContext, comp: str, cluster: str, url: str) -> None:
        """Probe the engine (cheap, often) until it answers; ask SkyPilot about the job (slower) to fail fast."""
        deadline = self._deadline(ctx)
        next_job_check = time.monotonic() + self.poll_s
        while http_get(url + "/health")[0] != 200:
            now = time.monotonic()
            if now >= next_job_check:
                job = self.api.job_status(cluster)
                if job.startswith(_JOB_ENDED):
                    tail = self.api.job_log_tail(cluster, SKY_JOB_LOG_TAIL_LINES)[-LAUNCH_LOG_TAIL_CHARS:]
                    ctx.store.update_component(ctx.name, comp, phase="failed", message=f"job {job}:\n{tail}")
                    raise LaunchError(f"{cluster}: its job ended ({job}) before the engine answered at {url}; "
                                      f"last lines of `sky logs {cluster}`:\n{tail}")
                next_job_check = now + self.poll_s
            if now > deadline:
                raise LaunchError(f"{cluster}: no engine answering at {url} after "
                                  f"{ctx.plan.launch.ready_timeout_s:g} s; see `sky logs {cluster}`")
            time.sleep(min(SKY_HEALTH_POLL_INTERVAL_SECONDS, self.poll_s))

    def observe(self, record: DeploymentRecord) -> DeploymentObservation:
        clusters = [c.handle for c in record.components if c.kind == "cluster"]
        info = self.api.cluster_status(clusters) if clusters else {}
        comps = []
        for c in record.components:
            if c.kind != "cluster":
                comps.append(observe_local(record, c))
                continue
            remote = info.get(c.handle, "")
            healthy = http_get(c.url + "/health")[0] == 200 if remote == "UP" and c.url else None
            comps.append(ComponentObservation(c.name, c.kind, c.stage, c.phase, healthy=healthy, remote=remote))
        return DeploymentObservation(record.phase, same_process(record.supervisor_pid, record.supervisor_start),
                                     tuple(comps))

    def teardown(self, record: DeploymentRecord, store: StateStore) -> list[str]:
        """The router (and supervisor) first, then every recorded cluster that exists, in parallel."""
        stopped = stop_local(record, store)
        clusters = [c.handle for c in record.components if c.kind == "cluster"]
        found = self.api.cluster_status(clusters) if clusters else {}
        existing = [n for n in clusters if n in found]
        self._run_parallel(existing, self.api.cluster_down, label=lambda name: name)
        return stopped + existing
