"""Status is derived, never stored: one pure function turns raw observations into documented states.

The store records what the launcher *did* (a component's recorded phase); backends observe what *is* (is the
process alive, does the server answer, what does SkyPilot say). `derive_component` and `derive_deployment` combine
the two, so a killed `up`, a crashed engine or a preempted replica all show up without anyone updating a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ComponentStatus(str, Enum):
    """The state of one engine process, SkyServe service, SkyPilot cluster or router."""

    PENDING = "pending"        # recorded, not started yet (or `up` was killed before starting it)
    STARTING = "starting"      # started (process alive / SkyPilot provisioning), not answering yet
    READY = "ready"            # answers its health probe / SkyPilot says READY or UP
    RESTARTING = "restarting"  # crashed; the supervisor (or SkyServe) is bringing it back
    FAILED = "failed"          # failed for good: crash loop, not ready in time, provisioning error
    LOST = "lost"              # was started, is gone, and nothing is bringing it back (killed outside cascadia)
    STOPPING = "stopping"      # `down` is stopping it
    STOPPED = "stopped"        # stopped by `down`


class DeploymentStatus(str, Enum):
    """The state of a whole deployment (stages + router), as `cascadia status` shows it."""

    LAUNCHING = "launching"      # `up` (or the local supervisor) is bringing components up; nothing failed
    READY = "ready"              # every component ready: the router answers and every planned replica serves
    DEGRADED = "degraded"        # was ready; some replicas are restarting or gone, the rest still serves
    INTERRUPTED = "interrupted"  # `up` stopped half-way and nothing works on it: run `up` again or `down`
    FAILED = "failed"            # a component failed for good, or the cascade cannot answer and nobody repairs it
    STOPPING = "stopping"        # `down` is in progress


# SkyPilot's own states (sky.serve ServiceStatus/ReplicaStatus, sky ClusterStatus) -> ours.
_REMOTE = {
    "READY": ComponentStatus.READY, "UP": ComponentStatus.READY,
    "CONTROLLER_INIT": ComponentStatus.STARTING, "REPLICA_INIT": ComponentStatus.STARTING,
    "PENDING": ComponentStatus.STARTING, "PROVISIONING": ComponentStatus.STARTING,
    "STARTING": ComponentStatus.STARTING, "INIT": ComponentStatus.STARTING, "NO_REPLICA": ComponentStatus.STARTING,
    "NOT_READY": ComponentStatus.RESTARTING, "PREEMPTED": ComponentStatus.RESTARTING,
    "UPDATING": ComponentStatus.STARTING,
    "SHUTTING_DOWN": ComponentStatus.STOPPING, "STOPPED": ComponentStatus.STOPPED,
}


@dataclass(frozen=True)
class ComponentObservation:
    """What is known about one component right now (recorded + observed)."""

    name: str
    kind: str
    stage: str = ""
    recorded: str = "pending"    # the phase in the state store
    alive: bool | None = None    # local process alive? (None: not a local process)
    healthy: bool | None = None  # HTTP probe answered 200? (None: not probed)
    remote: str | None = None    # SkyPilot's status string (None: not a SkyPilot component; "" : not found)
    detail: str = ""             # what SkyPilot says beyond the status (e.g. SkyServe replica states)


@dataclass(frozen=True)
class DeploymentObservation:
    phase: str                   # the recorded deployment phase: launching | up | failed | stopping
    owner_alive: bool            # is a process (the `up`, the local supervisor, SkyServe's controller) working on it
    components: tuple[ComponentObservation, ...] = field(default=())


def derive_component(obs: ComponentObservation) -> ComponentStatus:
    """One component's state from its recorded phase and what was observed."""
    if obs.recorded in ("failed", "stopped", "stopping"):
        return ComponentStatus(obs.recorded)
    if obs.remote is not None:
        if obs.remote == "":
            return ComponentStatus.PENDING if obs.recorded == "pending" else ComponentStatus.LOST
        key = obs.remote.upper()
        if key.startswith("FAILED"):
            return ComponentStatus.FAILED
        status = _REMOTE.get(key, ComponentStatus.STARTING)
        if status is ComponentStatus.READY and obs.healthy is False:
            return ComponentStatus.STARTING  # the cluster is up, the server on it is not answering yet
        return status
    if obs.alive is None:
        return ComponentStatus(obs.recorded) if obs.recorded in ComponentStatus._value2member_map_ \
            else ComponentStatus.PENDING
    if not obs.alive:
        if obs.recorded == "pending":
            return ComponentStatus.PENDING
        return ComponentStatus.RESTARTING if obs.recorded == "restarting" else ComponentStatus.LOST
    if obs.healthy:
        return ComponentStatus.READY
    return ComponentStatus.RESTARTING if obs.recorded == "restarting" else ComponentStatus.STARTING


def derive_deployment(obs: DeploymentObservation) -> tuple[DeploymentStatus, dict[str, ComponentStatus]]:
    """The deployment's state and each component's, from one observation. Pure: no I/O, no clock."""
    comps = {c.name: derive_component(c) for c in obs.components}
    states = set(comps.values())
    if obs.phase == "stopping":
        return DeploymentStatus.STOPPING, comps
    if ComponentStatus.FAILED in states or obs.phase == "failed":
        return DeploymentStatus.FAILED, comps
    if comps and states == {ComponentStatus.READY}:
        return DeploymentStatus.READY, comps
    if obs.phase == "launching":
        return (DeploymentStatus.LAUNCHING if obs.owner_alive else DeploymentStatus.INTERRUPTED), comps
    # phase "up": it was ready once. Does the cascade still answer (router + every stage has one ready replica)?
    router_ok = all(s is ComponentStatus.READY for c, s in comps.items() if _kind(obs, c) == "router")
    stages: dict[str, bool] = {}
    for c in obs.components:
        if c.kind not in ("router", "watcher"):
            stages[c.stage] = stages.get(c.stage, False) or comps[c.name] is ComponentStatus.READY
    serving = router_ok and all(stages.values())
    if serving or obs.owner_alive:
        return DeploymentStatus.DEGRADED, comps
    return DeploymentStatus.FAILED, comps


def _kind(obs: DeploymentObservation, name: str) -> str:
    return next(c.kind for c in obs.components if c.name == name)


__all__ = ["ComponentObservation", "ComponentStatus", "DeploymentObservation", "DeploymentStatus",
           "derive_component", "derive_deployment"]
