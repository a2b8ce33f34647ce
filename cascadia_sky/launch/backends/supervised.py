"""Supervised local processes, shared by the backends whose router (and, for `local`, engines) run on this
machine: the per-deployment supervisor (cascadia_sky/launch/supervisor.py) is started here, `up` waits here until
everything answers, and the processes are observed and stopped here. Used by `local` and `clusters`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from cascadia_sky.constants import (
    LAUNCH_POLL_INTERVAL_SECONDS,
    LAUNCH_STOP_TIMEOUT_SECONDS,
)
from cascadia_sky.errors import LaunchError, UserInputError
from cascadia_sky.launch.backends import LaunchContext
from cascadia_sky.launch.procs import http_get, process_start, same_process, stop_group
from cascadia_sky.launch.state import (
    ComponentRecord,
    DeploymentRecord,
    StateStore,
    replaced_name,
)
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
    timeout = 2 * ctx.plan.launch.ready_timeout_s + _UP_MARGIN_SECONDS
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        rec = ctx.record()
        state, comps = derive_deployment(observe(rec))
        summary = ", ".join(f"{n} {s.value}" for n, s in comps.items())
        if summary != last:
            ctx.progress(summary)
            last = summary
        if state is DeploymentStatus.READY and not any(replaced_name(c.name) for c in rec.components):
            return   # (a successor with its own name: a blue/green switch is still under way)
        failed = [c for c in rec.components if comps.get(c.name) is ComponentStatus.FAILED]
        if failed:
            raise LaunchError("; ".join(f"{c.name} failed: {c.message}" for c in failed))
        if not same_process(rec.supervisor_pid, rec.supervisor_start):
            raise LaunchError(f"the supervisor of {ctx.name!r} exited; see {ctx.directory / 'supervisor.log'}")
        if time.monotonic() > deadline:
            raise LaunchError(f"not ready after {timeout:.0f} s ({summary})")
        time.sleep(LAUNCH_POLL_INTERVAL_SECONDS)


def check_router_port(ctx: LaunchContext) -> None:
    """The router's port must be free on its address (unless this deployment's own router holds it)."""
    port, host = ctx.plan.launch.router_port, ctx.plan.launch.router_host
    rec = ctx.store.get(ctx.name)
    router = rec.component("router") if rec else None
    ours = router is not None and router.port == port and same_process(router.pid, router.pid_start)
    if not ours and port_in_use(port, host):
        raise UserInputError(f"port {port} on {host} is already in use; pass --port with a free port "
                             "(or stop what listens there; `cascadia status` lists deployments)")


def observe_local(record: DeploymentRecord, c: ComponentRecord) -> ComponentObservation:
    """A local process: alive (same pid and start time) and answering its health route."""
    alive = same_process(c.pid, c.pid_start)
    healthy = None
    if alive and c.url:
        code, _ = http_get(c.url + "/health")   # open on engines that require the router's key for /v1
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


__all__ = ["check_router_port", "ensure_supervisor", "observe_local", "port_in_use", "stop_local",
           "wait_until_ready"]
