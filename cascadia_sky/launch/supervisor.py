"""The local backend's supervisor: one detached process per local deployment that owns its engines and router.

`cascadia up` records the components a deployment should have and starts this process
(`python -m cascadia_sky.launch.supervisor NAME`, its own session, output in the deployment's folder). It then
reconciles the state store with reality in a loop: starts engines that should run (recording pid, port and log
before waiting on them), marks them ready when they answer, restarts a crashed one with back-off (same port, so
the router's config stays valid), fails one that crashed too often or was not ready in time (with its last log
lines), starts the router once every engine is ready, and stops anything marked `desired = stopped`. SIGTERM (what
`cascadia down` sends) stops every child and exits. It exits by itself when its deployment row disappears.

Changes to a running deployment never restart the router: a new routing fingerprint (thresholds) and a change of
the ready replicas are pushed through the router's admin API as one atomic config swap (requests in flight finish
on the config they started with). A replica is added to the router once it answers; a replica to be removed is
first taken out of the router, then drained (until no client request that started on an older router config is
in flight and the engine reports no request in progress; at most RESCHEDULE_DRAIN_TIMEOUT_SECONDS), then stopped.
Changed engines go blue/green: the router keeps a stage's old engines until every new one answers, then switches to
the new ones in one swap; the old ones drain and stop, and each successor (`small/0+next`) takes its replica's
name. With `reschedule.enabled` in the plan the supervisor also keeps the re-schedule loop running as a child
process (`python -m cascadia_sky.reschedule`, one pass every `reschedule.interval_s`; cascadia_sky/reschedule/loop.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascadia_sky.constants import (
    LAUNCH_LOG_TAIL_CHARS,
    LAUNCH_MAX_RESTARTS,
    LAUNCH_POLL_INTERVAL_SECONDS,
    LAUNCH_RESTART_BACKOFF_SECONDS,
    RESCHEDULE_DRAIN_POLL_SECONDS,
    RESCHEDULE_DRAIN_TIMEOUT_SECONDS,
)
from cascadia_sky.engines.process import EngineProcess, free_port, spawn, start_bundled
from cascadia_sky.launch.fingerprint import stage_fingerprint
from cascadia_sky.launch.keys import engine_key_env, ensure_admin_key, read_engine_keys
from cascadia_sky.launch.procs import engine_idle, http_get, http_post, process_start
from cascadia_sky.launch.state import (
    ComponentRecord,
    DeploymentRecord,
    StateStore,
    replaced_name,
    successor_name,
)
from cascadia_sky.launch.tasks import router_config
from cascadia_sky.planner.plan import Plan


@dataclass
class _Child:
    proc: EngineProcess
    fingerprint: str
    started: float
    listen: tuple[str, int] | None = None     # the router's address (a change needs a restart, not a swap)


class Supervisor:
    """Reconciles one deployment's recorded components with running processes."""

    def __init__(self, store: StateStore, name: str) -> None:
        self.store = store
        self.name = name
        self.children: dict[str, _Child] = {}
        self.not_before: dict[str, float] = {}   # restart back-off
        self.stopping = False
        self._plan: tuple[str, Plan] | None = None   # the recorded plan, parsed once per change
        self.router_endpoints: dict[str, list[str]] = {}   # what the live router balances over
        self.watcher: subprocess.Popen[bytes] | None = None   # `python -m cascadia_sky.reschedule NAME`
        self.watcher_not_before = 0.0
        self.draining: dict[str, float] = {}    # engine component -> drain deadline (monotonic)
        self.next_drain_poll: dict[str, float] = {}

    def plan(self, rec: DeploymentRecord) -> Plan:
        """The deployment's recorded plan (typed; re-read only when `up` recorded another)."""
        if self._plan is None or self._plan[0] != rec.plan_json:
            plan = rec.plan
            if plan is None:
                raise RuntimeError(f"deployment {rec.name!r} has no recorded plan")
            self._plan = (rec.plan_json, plan)
        return self._plan[1]

    # --- one pass ------------------------------------------------------------------------------

    def step(self) -> bool:
        """One reconcile pass; False when the deployment is gone or stopping (time to exit)."""
        rec = self.store.get(self.name)
        if rec is None or rec.phase == "stopping" or self.stopping:
            return False
        engines = [c for c in rec.components if c.kind != "router"]  # local engines, or clusters' servers
        for comp in engines:
            if comp.kind == "engine":
                self._reconcile(rec, comp, engines)
        router = rec.component("router")
        if router is not None:
            self._reconcile(rec, router, engines)
            self._sync_router(rec, router, engines)
            self._retire_replaced(rec, engines)
            self._keep_watcher(rec, router)
        rec = self.store.get(self.name)
        if rec is not None and rec.phase == "launching" and rec.components and all(
                c.phase == "ready" for c in rec.components):
            self.store.update(self.name, phase="up", up_pid=None, up_start=None)
        return True

    def _reconcile(self, rec: DeploymentRecord, comp: ComponentRecord, engines: list[ComponentRecord]) -> None:
        child = self.children.get(comp.name)
        if comp.desired == "stopped":
            if comp.kind == "engine" and not self._drained(comp):
                return
            self._stop(comp.name)
            self.draining.pop(comp.name, None)
            self.store.delete_component(self.name, comp.name)
            nxt = rec.component(successor_name(comp.name))
            if nxt is not None and nxt.desired == "running":
                self._promote(nxt.name, comp.name)
            return
        if comp.phase == "failed":
            self._stop(comp.name)
            return
        if child is not None and child.fingerprint != comp.fingerprint and not (
                comp.kind == "router" and child.listen == self._listen(rec)):  # a router at its address is swapped
            self._stop(comp.name)
            child = None
        now = time.monotonic()
        if child is None:
            if comp.kind == "router" and not all(e.phase == "ready" for e in engines if e.desired == "running"):
                return
            if now < self.not_before.get(comp.name, 0.0):
                return
            self._start(rec, comp, engines)
            return
        if not child.proc.alive():
            code = child.proc.proc.returncode
            tail = child.proc.log_tail(LAUNCH_LOG_TAIL_CHARS)
            del self.children[comp.name]
            if comp.restarts >= LAUNCH_MAX_RESTARTS:
                self.store.update_component(self.name, comp.name, phase="failed", pid=None, pid_start=None,
                                            message=f"exited with code {code} after {comp.restarts} restarts; "
                                                    f"last lines of {child.proc.log_path}:\n{tail}")
                return
            self.not_before[comp.name] = now + LAUNCH_RESTART_BACKOFF_SECONDS * 2 ** comp.restarts
            self.store.update_component(self.name, comp.name, phase="restarting", restarts=comp.restarts + 1,
                                        pid=None, pid_start=None, message=f"exited with code {code}; restarting")
            return
        if comp.phase in ("starting", "restarting", "pending"):
            if _answers(comp.kind, child.proc.url):
                self.store.update_component(self.name, comp.name, phase="ready", message="")
            elif now - child.started > (timeout := self.plan(rec).launch.ready_timeout_s):
                tail = child.proc.log_tail(LAUNCH_LOG_TAIL_CHARS)
                self._stop(comp.name)
                self.store.update_component(self.name, comp.name, phase="failed", pid=None, pid_start=None,
                                            message=f"not ready after {timeout:g} s; last lines of "
                                                    f"{child.proc.log_path}:\n{tail}")

    # --- changes without a restart: router swap, drain -------------------------------------------------------

    def _listen(self, rec: DeploymentRecord) -> tuple[str, int]:
        launch = self.plan(rec).launch
        return launch.router_host, launch.router_port

    def _admin_key_file(self) -> Path:
        """The router's admin key (hot swap), made once per deployment, mode 0600, read only by this process."""
        return ensure_admin_key(self.store.deployment_dir(self.name))

    def _wanted_endpoints(self, rec: DeploymentRecord, engines: list[ComponentRecord]) -> dict[str, list[str]]:
        """Per stage, the engines that should get traffic: running, ready and not draining, and of one version:
        while a stage's new engines (the plan's fingerprint) are not all ready, its old ones that are serve alone;
        once all are ready, only the new ones (blue/green: one atomic switch, never a mix). A stage with none
        ready keeps what the router has (never a stage without endpoints)."""
        out: dict[str, list[str]] = {}
        plan = self.plan(rec)
        for stage in {e.stage for e in engines}:
            fp = stage_fingerprint(plan, plan.stage(stage)) if any(s.name == stage for s in plan.stages) else None
            running = [e for e in engines if e.stage == stage and e.desired == "running"]
            new = [e for e in running if e.fingerprint == fp]
            new_ready = [e.url for e in new if e.phase == "ready" and e.url]
            old_ready = [e.url for e in running if e.fingerprint != fp and e.phase == "ready" and e.url]
            urls = new_ready if new_ready and len(new_ready) == len(new) else old_ready or new_ready
            if urls:
                out[stage] = urls
        for stage, urls in self.router_endpoints.items():
            if not out.get(stage):
                keep = [u for u in urls if any(e.url == u and e.desired == "running" for e in engines)]
                out[stage] = keep or urls
        return {k: sorted(v) for k, v in out.items()}

    def _sync_router(self, rec: DeploymentRecord, comp: ComponentRecord, engines: list[ComponentRecord]) -> None:
        """Push a new routing config or replica set to the running router (atomic swap, no restart)."""
        child = self.children.get(comp.name)
        if child is None or comp.phase != "ready" or not child.proc.alive():
            return
        wanted = self._wanted_endpoints(rec, engines)
        if wanted == self.router_endpoints and child.fingerprint == comp.fingerprint:
            return
        doc = router_config(self.plan(rec), wanted, self._key_env(self.plan(rec))[0])
        key = self._admin_key_file().read_text().strip()
        code, _ = http_post(child.proc.url + "/admin/config", doc, {"Authorization": f"Bearer {key}"})
        if code == 200:
            self.router_endpoints = wanted
            child.fingerprint = comp.fingerprint
            self.store.update_component(self.name, comp.name, message="")
        else:
            self.store.update_component(self.name, comp.name, message=f"config swap refused ({code}); retrying")

    def _retire_replaced(self, rec: DeploymentRecord, engines: list[ComponentRecord]) -> None:
        """Blue/green, after the switch: a replica whose successor serves (the router no longer sends it anything)
        drains and stops; once it is gone the successor takes its name."""
        switched = "router" in self.children and rec.component("router") is not None
        live = {u for urls in self.router_endpoints.values() for u in urls}
        for nxt in engines:
            name = replaced_name(nxt.name)
            if name is None or nxt.desired != "running" or nxt.phase != "ready":
                continue
            old = rec.component(name)
            if old is None:   # gone already (a supervisor restarted half-way)
                self._promote(nxt.name, name)
            elif old.desired == "running" and switched and nxt.url in live and old.url not in live:
                self.store.update_component(self.name, name, desired="stopped",
                                            message=f"replaced by {nxt.name} (blue/green)")

    def _promote(self, successor: str, name: str) -> None:
        """The successor takes the name of the replica it replaced (the process keeps running)."""
        self.store.rename_component(self.name, successor, name)
        self.store.update_component(self.name, name, message="")
        if successor in self.children:
            self.children[name] = self.children.pop(successor)
        if successor in self.not_before:
            self.not_before[name] = self.not_before.pop(successor)

    def _keep_watcher(self, rec: DeploymentRecord, router: ComponentRecord) -> None:
        """With reschedule.enabled, the re-schedule loop runs as a child once the router is ready (restarted if it
        exits, at most once per interval); it is stopped with everything else."""
        settings = self.plan(rec).launch.reschedule
        running = self.watcher is not None and self.watcher.poll() is None
        if not settings.enabled:
            if running:
                self._stop_watcher()
            return
        if running or router.phase != "ready" or time.monotonic() < self.watcher_not_before:
            return
        log = self.store.deployment_dir(self.name) / "logs" / "reschedule.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.watcher = subprocess.Popen([sys.executable, "-m", "cascadia_sky.reschedule", self.name],
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.watcher_not_before = time.monotonic() + settings.interval_s

    def _stop_watcher(self) -> None:
        if self.watcher is not None and self.watcher.poll() is None:
            self.watcher.terminate()
            try:
                self.watcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.watcher.kill()
                self.watcher.wait()
        self.watcher = None

    def _drained(self, comp: ComponentRecord) -> bool:
        """A replica to remove: out of the router first, then idle (or out of time), then it may stop."""
        if any(comp.url in urls for urls in self.router_endpoints.values()) and "router" in self.children:
            return False   # _sync_router takes it out first
        now = time.monotonic()
        if comp.name not in self.draining:
            self.draining[comp.name] = now + RESCHEDULE_DRAIN_TIMEOUT_SECONDS
            self.store.update_component(self.name, comp.name, phase="stopping", message="draining")
        if now >= self.draining[comp.name] or not comp.url or comp.name not in self.children:
            return True
        if now < self.next_drain_poll.get(comp.name, 0.0):
            return False
        self.next_drain_poll[comp.name] = now + RESCHEDULE_DRAIN_POLL_SECONDS
        if not self._router_settled():
            return False   # a request that started on an older config may still escalate to this replica
        return engine_idle(comp.url, read_engine_keys(self.store.deployment_dir(self.name)).get(comp.stage, ""))

    def _router_settled(self) -> bool:
        """No client request in flight on a config older than the router's current one (GET /admin/config's
        `in_flight`): requests keep the config they started with, endpoints included, to their end. No router
        running: settled; a router that does not answer: not (the drain deadline bounds the wait)."""
        child = self.children.get("router")
        if child is None or not child.proc.alive():
            return True
        key = self._admin_key_file().read_text().strip()
        code, body = http_get(child.proc.url + "/admin/config", {"Authorization": f"Bearer {key}"})
        if code != 200 or not isinstance(body, dict):
            return False
        current = int(body.get("version", 0))
        return not any(int(v) < current and n for v, n in (body.get("in_flight") or {}).items())

    def _start(self, rec: DeploymentRecord, comp: ComponentRecord, engines: list[ComponentRecord]) -> None:
        """Start one component; its pid, port and log are recorded right after the fork, before any wait."""
        log_dir = self.store.deployment_dir(self.name) / "logs"
        port = comp.port or free_port()
        try:
            if comp.kind == "engine":
                proc = self._start_engine(rec, comp, port, log_dir)
            else:
                proc = self._start_router(rec, port, engines, log_dir)
        except Exception as exc:  # a missing model package, an unreadable plan: fail this component, keep going
            self.store.update_component(self.name, comp.name, phase="failed", message=f"cannot start: {exc}")
            return
        self.children[comp.name] = _Child(proc, comp.fingerprint, time.monotonic(),
                                          self._listen(rec) if comp.kind == "router" else None)
        self.store.update_component(self.name, comp.name, phase="restarting" if comp.restarts else "starting",
                                    pid=proc.proc.pid, pid_start=process_start(proc.proc.pid), port=port,
                                    url=proc.url, log_path=str(proc.log_path), started_at=time.time())

    def _start_engine(self, rec: DeploymentRecord, comp: ComponentRecord, port: int, log_dir: Path) -> EngineProcess:
        plan = self.plan(rec)
        stage = plan.stage(comp.stage)
        key = read_engine_keys(self.store.deployment_dir(self.name)).get(stage.name)
        return start_bundled(stage.model, alias=stage.served_model_name, port=port, api_key=key,
                             threads=plan.launch.engine_threads, ctx=stage.max_context, log_dir=log_dir, wait=False)

    def _start_router(self, rec: DeploymentRecord, port: int, engines: list[ComponentRecord],
                      log_dir: Path) -> EngineProcess:
        plan = self.plan(rec)
        endpoints: dict[str, list[str]] = {}
        for e in engines:
            if e.desired == "running":
                endpoints.setdefault(e.stage, []).append(e.url)
        endpoints = {k: sorted(v) for k, v in endpoints.items()}
        names, keys = self._key_env(plan)
        path = self.store.deployment_dir(self.name) / "router.json"
        path.write_text(json.dumps(router_config(plan, endpoints, names), indent=2) + "\n")
        argv = [sys.executable, "-m", "router", "--config", str(path), "--host", plan.launch.router_host,
                "--port", str(port), "--api-keys-file", rec.api_key_file,
                "--admin-key-file", str(self._admin_key_file())]
        self.router_endpoints = endpoints
        return spawn("router", rec.name, argv, port, log_dir, env={names[s]: keys[s] for s in names})

    def _key_env(self, plan: Plan) -> tuple[dict[str, str], dict[str, str]]:
        """({stage: the router's variable for its engine key}, {stage: key}) for the stages served."""
        keys = read_engine_keys(self.store.deployment_dir(self.name))
        return {s.name: engine_key_env(s.name) for s in plan.serving() if s.name in keys}, keys

    def _stop(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is not None:
            child.proc.stop()

    def stop_all(self) -> None:
        """The watcher, then the router (no request reaches a stopped engine), then the engines; rows say
        `stopped`."""
        self._stop_watcher()
        for name in sorted(self.children, key=lambda n: n != "router"):
            self._stop(name)
            self.store.update_component(self.name, name, phase="stopped", pid=None, pid_start=None)

    def run(self) -> None:
        me = os.getpid()
        self.store.update(self.name, supervisor_pid=me, supervisor_start=process_start(me))
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            while self.step():
                time.sleep(LAUNCH_POLL_INTERVAL_SECONDS)
        finally:
            self.stop_all()

    def _on_signal(self, *_: Any) -> None:
        self.stopping = True


def _answers(kind: str, url: str) -> bool:
    """Ready: /health answers 200 (open on engines that require a key for /v1, and on the router)."""
    code, _ = http_get(url + "/health")
    return code == 200


def main(argv: list[str] | None = None) -> None:
    """`python -m cascadia_sky.launch.supervisor NAME` (CASCADIA_HOME says which state store)."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m cascadia_sky.launch.supervisor DEPLOYMENT", file=sys.stderr)
        sys.exit(2)
    Supervisor(StateStore(), args[0]).run()


if __name__ == "__main__":
    main()
