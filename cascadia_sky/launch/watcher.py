"""The re-schedule watcher beside a SkyServe router: what `up` hands it, and what it hands back.

The watcher is a small CPU cluster (tasks/reschedule-watch.yaml) running `python -m cascadia_sky.reschedule.remote`.
- **In**: a bundle written here before every launch of it: a state home holding only this deployment (its record,
  plan and re-schedule history; the state database copied and filtered) and the cascade file with the files it
  names (profile, trace, model configs) copied beside it. Keys go as SkyPilot secrets (`watcher_secrets`), never into
  the bundle. It acts through the SkyPilot API server this machine uses (`api_server_endpoint`), so it needs one it
  can reach: a remote API server, not the local one on 127.0.0.1.
- **Out**: after every step it records, the watcher prints one `cascadia-watch-state {json}` line to its job log
  (the plan that runs, the components, the new history events). `sync_state` reads the newest one back (SkyPilot's
  `sky logs`) into this machine's state store, so that `status` shows what runs and `up` decides from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from cascadia_sky.errors import UserInputError
from cascadia_sky.launch.keys import ADMIN_KEY_FILE, read_engine_keys
from cascadia_sky.launch.state import ComponentRecord, DeploymentRecord, StateStore

WATCHER_COMPONENT = "watch"
STATE_PREFIX = "cascadia-watch-state "
IN_WATCHER_ENV = "CASCADIA_IN_WATCHER"      # set by the watcher: its own `up` never launches a watcher
ENGINE_KEYS_ENV = "CASCADIA_ENGINE_KEYS"
ADMIN_KEY_ENV = "CASCADIA_ROUTER_ADMIN_KEY"
ROUTER_KEYS_ENV = "CASCADIA_ROUTER_API_KEYS"
SKY_ENDPOINT_ENV = "SKYPILOT_API_SERVER_ENDPOINT"
SKY_TOKEN_ENV = "SKYPILOT_SERVICE_ACCOUNT_TOKEN"
STATE_LOG_LINES = 400                       # job log lines read back per sync (one state line per step)
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def watcher_cluster(name: str) -> str:
    return f"{name}-watch"


def wants_watcher(record: DeploymentRecord | None, enabled: bool, backend: str) -> str:
    """The watcher action `decide()` adds: "launch" (enabled on skyserve, none recorded), "remove" (recorded, not
    enabled), or "". Inside the watcher its own record carries it, so it never launches another."""
    has = record is not None and record.component(WATCHER_COMPONENT) is not None
    if backend != "skyserve":
        return ""
    if enabled and not has:
        return "launch"
    if has and not enabled:
        return "remove"
    return ""


def plan_digest(plan_json: str) -> str:
    return hashlib.sha256(plan_json.encode()).hexdigest()[:16]


# --- what the watcher needs ------------------------------------------------------------------------------------

def api_server_endpoint() -> str:
    """The SkyPilot API server this machine's SkyPilot calls go to (SkyPilot's own order: the environment variable,
    then `api_server.endpoint` of its config), or "" for the local one."""
    url = os.environ.get(SKY_ENDPOINT_ENV, "").strip()
    if url:
        return url.rstrip("/")
    config = Path(os.environ.get("SKYPILOT_CONFIG") or Path.home() / ".sky" / "config.yaml").expanduser()
    try:
        data = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    url = str(((data.get("api_server") or {}) if isinstance(data, dict) else {}).get("endpoint") or "")
    return url.rstrip("/")


def check_reachable_api_server() -> str:
    """The API server endpoint the watcher will use; one clear line when there is none it could reach."""
    url = api_server_endpoint()
    host = urlparse(url).hostname or "" if url else ""
    if not url or host in _LOOPBACK:
        raise UserInputError(
            "reschedule.enabled on skyserve: the watcher runs on a cluster beside the router and acts through "
            f"SkyPilot's API server, but this machine uses a local one ({url or 'none configured'}), which a cluster "
            "cannot reach; use a remote API server (`sky api login -e URL`, or SKYPILOT_API_SERVER_ENDPOINT), or set "
            "reschedule.enabled: false in the cascade file and run `cascadia watch NAME` here")
    return url


def watcher_secrets(directory: Path, base: dict[str, str]) -> dict[str, str]:
    """The watcher's secrets: router key (/stats), admin key (swaps), engine keys (relaunched engines keep theirs),
    the API server endpoint (and service-account token when this shell has one), plus `base` (HF_TOKEN)."""
    out = dict(base)
    out[ROUTER_KEYS_ENV] = (directory / "api_key").read_text().strip()
    out[ADMIN_KEY_ENV] = (directory / ADMIN_KEY_FILE).read_text().strip()
    out[ENGINE_KEYS_ENV] = json.dumps(read_engine_keys(directory))
    out[SKY_ENDPOINT_ENV] = api_server_endpoint()
    if os.environ.get(SKY_TOKEN_ENV):
        out[SKY_TOKEN_ENV] = os.environ[SKY_TOKEN_ENV]
    return out


def write_bundle(store: StateStore, name: str, spec_path: str, bundle: Path) -> Path:
    """The watcher's bundle: `home/state.db` (this deployment only) and `spec/` (the cascade file and its data
    files, paths rewritten to the copies). Rewritten from scratch on every launch of the watcher."""
    if bundle.exists():
        shutil.rmtree(bundle)
    (bundle / "home").mkdir(parents=True)
    src = sqlite3.connect(store.path)
    dst = sqlite3.connect(bundle / "home" / "state.db")
    try:
        src.backup(dst)
    finally:
        src.close()
    try:
        for (table,) in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            cols = [r[1] for r in dst.execute(f"PRAGMA table_info({table})").fetchall()]
            key = "deployment" if "deployment" in cols else "name" if table == "deployments" else None
            if key is None:
                dst.execute(f"DELETE FROM {table}")
            else:
                dst.execute(f"DELETE FROM {table} WHERE {key} != ?", (name,))
        dst.execute("UPDATE deployments SET spec_path = '', api_key_file = '', up_pid = NULL, up_start = NULL, "
                    "supervisor_pid = NULL, supervisor_start = NULL")
        dst.commit()
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
    _copy_spec(Path(spec_path), bundle / "spec")
    return bundle


def _copy_spec(spec: Path, out: Path) -> None:
    """The cascade file and the files it names, copied into `out` with the paths inside it rewritten."""
    data = yaml.safe_load(spec.read_text())
    files = out / "files"
    files.mkdir(parents=True)
    used: set[str] = set()

    def copy(rel: str) -> str:
        src = Path(rel).expanduser()
        src = src if src.is_absolute() else spec.parent / src
        target = src.name
        while target in used:
            target = "_" + target
        used.add(target)
        shutil.copyfile(src, files / target)
        return f"files/{target}"

    quality = data.get("quality") or {}
    if quality.get("profile"):
        quality["profile"] = copy(quality["profile"])
    workload = data.get("workload") or {}
    if workload.get("trace"):
        workload["trace"] = copy(workload["trace"])
    for stage in data.get("stages") or []:
        if str(stage.get("model", "")).endswith(".json"):
            stage["model"] = copy(stage["model"])
    (out / spec.name).write_text(yaml.safe_dump(data, sort_keys=False))


# --- what the watcher hands back ------------------------------------------------------------------------------

def state_line(record: DeploymentRecord, events: list[dict[str, Any]], base: str) -> str:
    """One state line: the plan that runs, the components (no secrets, no local paths), the new events, and the
    digest of the plan the watcher was launched with (`base`: lines of an older watcher are ignored)."""
    comps = [{k: getattr(c, k) for k in ("name", "kind", "stage", "replica", "phase", "url", "handle",
                                         "fingerprint")}
             for c in record.components if c.kind != "watcher"]
    return STATE_PREFIX + json.dumps({"base": base, "plan_json": record.plan_json, "endpoint": record.endpoint,
                                      "components": comps, "events": events}, separators=(",", ":"))


def parse_state_lines(text: str) -> list[dict[str, Any]]:
    """Every state line in a job log, oldest first (lines that do not parse are skipped)."""
    out = []
    for line in text.splitlines():
        at = line.find(STATE_PREFIX)
        if at < 0:
            continue
        try:
            doc = json.loads(line[at + len(STATE_PREFIX):])
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("components"), list):
            out.append(doc)
    return out


def import_state(store: StateStore, record: DeploymentRecord, states: list[dict[str, Any]]) -> bool:
    """Bring this machine's record up to the newest state line of the running watcher; True when it changed."""
    watcher = record.component(WATCHER_COMPONENT)
    ours = [s for s in states if watcher is not None and s.get("base") == watcher.fingerprint]
    if not ours:
        return False
    last = ours[-1]
    changed = False
    if last.get("plan_json") and last["plan_json"] != record.plan_json:
        store.update(record.name, plan_json=last["plan_json"], endpoint=last.get("endpoint") or record.endpoint)
        store.plan_path(record.name).write_text(last["plan_json"])
        changed = True
    theirs = {c["name"]: c for c in last["components"]}
    for comp in record.components:
        if comp.kind == "watcher":
            continue
        if comp.name not in theirs:
            store.delete_component(record.name, comp.name)
            changed = True
            continue
        new = {k: theirs[comp.name][k] for k in ("phase", "url", "handle", "fingerprint")
               if theirs[comp.name].get(k) != getattr(comp, k)}
        if new:
            store.update_component(record.name, comp.name, **new)
            changed = True
    for name, c in theirs.items():
        if record.component(name) is None:
            store.put_component(ComponentRecord(deployment=record.name, **c))
            changed = True
    return changed


__all__ = ["IN_WATCHER_ENV", "STATE_PREFIX", "WATCHER_COMPONENT", "api_server_endpoint",
           "check_reachable_api_server", "import_state", "parse_state_lines", "plan_digest", "state_line",
           "wants_watcher", "watcher_cluster", "watcher_secrets", "write_bundle"]
