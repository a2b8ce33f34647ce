"""Launch backends, a registry keyed by name: `local`, `skyserve`, `clusters` (and test fakes registered the same way).

A backend *acts*: it carries out the actions the launcher decided (`execute`), observes what runs (`observe`),
stops everything (`teardown`) and explains what it would do (`dryrun`). It never decides what to launch. Importing
this package imports no backend module (and so no SkyPilot): `get_backend(name)` imports the one asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cascadia_sky.errors import UserInputError
from cascadia_sky.launch.state import DeploymentRecord, StateStore
from cascadia_sky.launch.status import DeploymentObservation
from cascadia_sky.planner.plan import Plan
from cascadia_sky.registries import LAUNCH_BACKENDS as _REGISTRY
from cascadia_sky.registries import backend_names


def register_backend(name: str, factory: Any) -> Any:
    """Register (or replace) a backend class under `name`; returns what was there before (for restoring)."""
    old = _REGISTRY.get(name)
    _REGISTRY[name] = factory
    return old


def unregister_backend(name: str, previous: Any = None) -> None:
    if previous is None:
        _REGISTRY.pop(name, None)
    else:
        _REGISTRY[name] = previous


def get_backend(name: str) -> Backend:
    """A fresh backend instance for `name`."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UserInputError(f"unknown launch backend {name!r}; known: {', '.join(backend_names())} "
                             "(set infra.backend in the cascade file)")
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry()


@dataclass(frozen=True)
class Action:
    """One step the launcher decided. `op` is one of launch_stage, update_stage (engines change: relaunch or
    blue/green), scale_stage (only the replica count changes), remove_stage, launch_router, update_router; `stage` names the plan stage ("" for the router); `reason` says why (shown by `up`)."""

    op: str
    stage: str = ""
    reason: str = ""

    def describe(self) -> str:
        what = f"{self.op.replace('_', ' ')} {self.stage}".strip()
        return f"{what}: {self.reason}" if self.reason else what


@dataclass
class LaunchContext:
    """Everything a backend needs to act on one deployment."""

    store: StateStore
    plan: Plan                           # the contract, launch settings included (frozen)
    backend: str
    progress: Callable[[str], None] = lambda msg: None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def directory(self) -> Path:
        return self.store.deployment_dir(self.name)

    def record(self) -> DeploymentRecord:
        rec = self.store.get(self.name)
        if rec is None:
            raise UserInputError(f"deployment {self.name!r} disappeared from the state store (a concurrent "
                                 f"`cascadia down {self.name}`?)")
        return rec


@dataclass(frozen=True)
class DryrunReport:
    """What `up --dryrun` shows: per component the rendered task and SkyPilot's choice (or the local command)."""

    backend: str
    actions: tuple[Action, ...]
    items: tuple[dict[str, Any], ...]    # {"name", "kind", "task" (YAML text) or "command", "choice", "usd_per_hour"}
    notes: tuple[str, ...] = ()


class Backend(Protocol):
    """What every launch backend provides."""

    name: str

    def preflight(self, ctx: LaunchContext) -> None:
        """Checks that need no side effect (port free, SkyPilot importable); raise a CascadiaError."""

    def execute(self, actions: list[Action], ctx: LaunchContext) -> None:
        """Carry out the actions, recording each component before its side effect; return when ready."""

    def observe(self, record: DeploymentRecord) -> DeploymentObservation:
        """Raw observations of a recorded deployment (no decisions)."""

    def teardown(self, record: DeploymentRecord, store: StateStore) -> list[str]:
        """Stop every recorded component (idempotent); return what was stopped."""

    def dryrun(self, actions: list[Action], ctx: LaunchContext) -> DryrunReport:
        """What `execute` would do, validated as far as possible without side effects."""


__all__ = ["Action", "Backend", "DryrunReport", "LaunchContext", "backend_names", "get_backend",
           "register_backend", "unregister_backend"]
