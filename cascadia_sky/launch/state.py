"""The launcher's state store: one SQLite file under $CASCADIA_HOME (default ~/.cascadia), `state.db`.

Why a database and not a JSON file: `up`, the local supervisor and `status`/`down` run as separate processes and
write at the same time; SQLite (WAL, busy timeout) gives atomic updates across them. Every side effect is recorded
*before* it happens (a component row is written as `pending`, then `starting` with its pid or SkyPilot name, then
`ready`), so a `cascadia up` that is killed half-way leaves rows that `status` explains and `down` can undo.

Two tables: `deployments` (one row per cascade name: backend, plan, router endpoint, who is working on it) and
`components` (one row per engine process, SkyServe service, SkyPilot cluster or router). Secrets are never stored
here: the router's API key lives in a mode-0600 file whose *path* is recorded.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cascadia_sky.constants import DEFAULT_HOME_DIRNAME, HOME_ENV_VAR
from cascadia_sky.planner.plan import Plan, parse_plan

STATE_SCHEMA_VERSION = 2   # 2: launch settings live in the recorded plan (columns options, router_port, ... gone)
_BUSY_TIMEOUT_MS = 10_000


def state_home() -> Path:
    """$CASCADIA_HOME, else ~/.cascadia (created on first use)."""
    home = Path(os.environ.get(HOME_ENV_VAR) or Path.home() / DEFAULT_HOME_DIRNAME).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclass(frozen=True)
class ComponentRecord:
    """One thing the launcher started (or is about to start) for a deployment."""

    deployment: str
    name: str                      # "small/0" (engine or cluster), "small" (service), "router"
    kind: str                      # engine | router | service | cluster
    stage: str = ""                # the plan's stage name ("" for the router)
    replica: int = 0
    phase: str = "pending"         # pending | starting | ready | restarting | failed | stopping | stopped
    desired: str = "running"       # running | stopped: what the supervisor (local) should make true
    pid: int | None = None         # local process (its process group is the one stopped)
    pid_start: str | None = None   # the process's start time (guards against pid reuse)
    port: int | None = None
    url: str = ""                  # base URL once known
    handle: str = ""               # SkyServe service or SkyPilot cluster name
    log_path: str = ""
    restarts: int = 0
    message: str = ""              # why it failed, or what it is doing
    fingerprint: str = ""          # what was launched (plan fields that force a relaunch when they change)
    started_at: float | None = None
    updated_at: float = 0.0


@dataclass(frozen=True)
class DeploymentRecord:
    """A deployment as recorded: enough for `status` and `down` without the `up` that wrote it."""

    name: str
    backend: str
    phase: str = "launching"       # launching | up | failed | stopping
    plan_json: str = ""            # the plan being launched (plan.json, schema v2: it carries the launch settings)
    spec_path: str = ""
    endpoint: str = ""             # the router's OpenAI base URL (…/v1) once known
    api_key_file: str = ""
    up_pid: int | None = None      # the `cascadia up` working on it (while launching)
    up_start: str | None = None
    supervisor_pid: int | None = None   # local backend: the supervisor owning the processes
    supervisor_start: str | None = None
    message: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    components: tuple[ComponentRecord, ...] = field(default=())

    @property
    def plan(self) -> Plan | None:
        """The recorded plan, typed (None before `up` recorded one)."""
        if not self.plan_json:
            return None
        return parse_plan(json.loads(self.plan_json), f"the recorded plan of deployment {self.name!r}")

    def component(self, name: str) -> ComponentRecord | None:
        return next((c for c in self.components if c.name == name), None)


# Blue/green (local backend): the engine that replaces replica "small/0" runs beside it as "small/0+next" until the
# router has switched to it and the old one has drained; then it takes the replica's name.
SUCCESSOR_SUFFIX = "+next"


def successor_name(name: str) -> str:
    return name + SUCCESSOR_SUFFIX


def replaced_name(name: str) -> str | None:
    """The replica a successor replaces ("small/0+next" -> "small/0"); None for any other name."""
    return name.removesuffix(SUCCESSOR_SUFFIX) if name.endswith(SUCCESSOR_SUFFIX) else None


_DEPLOYMENT_COLS = [f.name for f in fields(DeploymentRecord) if f.name != "components"]
_COMPONENT_COLS = [f.name for f in fields(ComponentRecord)]


def _col_sql(cls: type, names: list[str]) -> str:
    hints = {f.name: f.type for f in fields(cls)}
    out = []
    for n in names:
        t = str(hints[n])
        sql = "INTEGER" if t.startswith("int") else "REAL" if t.startswith("float") else "TEXT"
        out.append(f"{n} {sql}")
    return ", ".join(out)


@contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """One immediate (write-locking) transaction on the state database, committed on success, rolled back on any
    error; shared by every table kept there (deployments, components, re-schedule history)."""
    db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        db.execute("BEGIN IMMEDIATE")
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()


class StateStore:
    """Deployments and their components in `<home>/state.db`. Safe to use from several processes at once."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else state_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "state.db"
        with self._connect() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS deployments ({_col_sql(DeploymentRecord, _DEPLOYMENT_COLS)}, "
                       "PRIMARY KEY (name))")
            db.execute(f"CREATE TABLE IF NOT EXISTS components ({_col_sql(ComponentRecord, _COMPONENT_COLS)}, "
                       "PRIMARY KEY (deployment, name))")
            db.execute(f"PRAGMA user_version = {STATE_SCHEMA_VERSION}")

    def _connect(self) -> Any:
        return transaction(self.path)

    # --- paths ------------------------------------------------------------------------------

    def deployment_dir(self, name: str) -> Path:
        """Per-deployment files: the plan, router config, API key, logs."""
        d = self.home / "deployments" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def plan_path(self, name: str) -> Path:
        """The plan a deployment runs (written by `up` before it acts; `up --plan` of it changes nothing)."""
        return self.deployment_dir(name) / "plan.json"

    # --- reads ------------------------------------------------------------------------------

    def get(self, name: str) -> DeploymentRecord | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {', '.join(_DEPLOYMENT_COLS)} FROM deployments WHERE name = ?",
                             (name,)).fetchone()
            if row is None:
                return None
            comps = db.execute(f"SELECT {', '.join(_COMPONENT_COLS)} FROM components WHERE deployment = ? "
                               "ORDER BY kind = 'router', stage, replica, name", (name,)).fetchall()
        return DeploymentRecord(**dict(zip(_DEPLOYMENT_COLS, row)),
                                components=tuple(ComponentRecord(**dict(zip(_COMPONENT_COLS, c))) for c in comps))

    def names(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM deployments ORDER BY name").fetchall()]

    def all(self) -> list[DeploymentRecord]:
        return [r for r in (self.get(n) for n in self.names()) if r is not None]

    # --- writes -----------------------------------------------------------------------------

    def put(self, record: DeploymentRecord) -> DeploymentRecord:
        """Insert or replace a deployment row (its components are written separately)."""
        now = time.time()
        record = replace(record, created_at=record.created_at or now, updated_at=now)
        values = asdict(record)
        with self._connect() as db:
            db.execute(f"INSERT OR REPLACE INTO deployments ({', '.join(_DEPLOYMENT_COLS)}) VALUES "
                       f"({', '.join('?' for _ in _DEPLOYMENT_COLS)})", [values[c] for c in _DEPLOYMENT_COLS])
        return record

    def update(self, name: str, **changes: Any) -> None:
        """Change some fields of a deployment row (no-op when the row is gone)."""
        self._update("deployments", "name = ?", (name,), _DEPLOYMENT_COLS, changes)

    def put_component(self, comp: ComponentRecord) -> ComponentRecord:
        comp = replace(comp, updated_at=time.time())
        values = asdict(comp)
        with self._connect() as db:
            db.execute(f"INSERT OR REPLACE INTO components ({', '.join(_COMPONENT_COLS)}) VALUES "
                       f"({', '.join('?' for _ in _COMPONENT_COLS)})", [values[c] for c in _COMPONENT_COLS])
        return comp

    def update_component(self, deployment: str, name: str, **changes: Any) -> None:
        self._update("components", "deployment = ? AND name = ?", (deployment, name), _COMPONENT_COLS, changes)

    def delete_component(self, deployment: str, name: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM components WHERE deployment = ? AND name = ?", (deployment, name))

    def rename_component(self, deployment: str, name: str, new_name: str) -> None:
        """Give a component another name (a successor taking its replica's name), in one transaction."""
        with self._connect() as db:
            db.execute("DELETE FROM components WHERE deployment = ? AND name = ?", (deployment, new_name))
            db.execute("UPDATE components SET name = ?, updated_at = ? WHERE deployment = ? AND name = ?",
                       (new_name, time.time(), deployment, name))

    def delete(self, name: str) -> None:
        """Forget a deployment and its components (after `down` has stopped them)."""
        with self._connect() as db:
            db.execute("DELETE FROM components WHERE deployment = ?", (name,))
            db.execute("DELETE FROM deployments WHERE name = ?", (name,))

    def _update(self, table: str, where: str, key: tuple[Any, ...], cols: list[str], changes: dict[str, Any]) -> None:
        unknown = set(changes) - set(cols)
        if unknown:
            raise KeyError(f"unknown {table} fields: {sorted(unknown)}")
        changes = {**changes, "updated_at": time.time()}
        sets = ", ".join(f"{k} = ?" for k in changes)
        with self._connect() as db:
            db.execute(f"UPDATE {table} SET {sets} WHERE {where}", [*changes.values(), *key])


__all__ = ["SUCCESSOR_SUFFIX", "ComponentRecord", "DeploymentRecord", "StateStore", "replaced_name", "state_home",
           "successor_name", "transaction"]
