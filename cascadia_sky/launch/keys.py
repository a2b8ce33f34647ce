"""A deployment's secrets on disk: the router's API key (what clients send) and one engine key per stage (what only
the router sends to that stage's engines, so nobody bypasses the router). Each lives in a mode-0600 file under the
deployment's folder, is checked on every `up`, and reaches a process only through its environment or SkyPilot
secrets; never a command line, a config file, a log or `status`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from cascadia_sky.constants import ENGINE_API_KEY_ENV
from cascadia_sky.errors import LaunchError

API_KEY_FILE = "api_key"
ADMIN_KEY_FILE = "admin_key"                      # the router's admin key (POST /admin/config: hot swaps)
ENGINE_KEYS_FILE = "engine_keys.json"
VLLM_API_KEY_ENV = "VLLM_API_KEY"                 # what vLLM reads its --api-key from


def _private_file(path: Path, content: Callable[[], str], progress: Callable[[str], None]) -> Path:
    """Create `path` with mode 0600 unless it exists; check an existing one: a regular file of this user, and
    tightened to 0600 (said so) when others may read it."""
    if not path.exists() and not path.is_symlink():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content())
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise LaunchError(f"{path} is not a regular file (a symlink?); remove it and run `cascadia up` again to "
                          f"make a new key")
    if info.st_uid != os.getuid():
        raise LaunchError(f"{path} belongs to another user (uid {info.st_uid}); remove it and run `cascadia up` "
                          f"again to make a new key")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        progress(f"{path} was mode {mode:04o} (readable by others); set it to 0600")
    return path


def ensure_api_key(directory: Path, progress: Callable[[str], None] = lambda msg: None) -> Path:
    """The router's API key file, created once per deployment and checked on every `up`. Never printed."""
    return _private_file(directory / API_KEY_FILE, lambda: f"csk-{secrets.token_urlsafe(24)}\n", progress)


def ensure_admin_key(directory: Path, progress: Callable[[str], None] = lambda msg: None) -> Path:
    """The router's admin key file (config swaps), created once per deployment; held by whoever swaps the config
    (the local supervisor, `up`, the re-schedule watcher). Never printed."""
    return _private_file(directory / ADMIN_KEY_FILE, lambda: f"csk-admin-{secrets.token_urlsafe(24)}\n", progress)


def key_file_mode(path: str | Path) -> str:
    """The key file's permission bits as they are now (what `up` reports; never a mode it did not read)."""
    try:
        return f"{stat.S_IMODE(os.stat(path).st_mode):04o}"
    except OSError:
        return "unknown"


def ensure_engine_keys(directory: Path, stages: Sequence[str],
                       progress: Callable[[str], None] = lambda msg: None) -> dict[str, str]:
    """One key per stage (kept across `up`s, so running engines keep theirs; a new stage gets a new key)."""
    path = _private_file(directory / ENGINE_KEYS_FILE, lambda: "{}\n", progress)
    keys = read_engine_keys(directory)
    missing = [s for s in stages if s not in keys]
    if missing:
        keys.update({s: f"cek-{secrets.token_urlsafe(24)}" for s in missing})
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(keys, f)
        os.replace(tmp, path)
    return {s: keys[s] for s in stages}


def read_engine_keys(directory: Path) -> dict[str, str]:
    """The engine keys recorded for a deployment ({} when it has none)."""
    try:
        data = json.loads((directory / ENGINE_KEYS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def engine_key_env(stage: str) -> str:
    """The router's environment variable holding a stage's engine key (the router config names it)."""
    return "CASCADIA_ENGINE_KEY_" + re.sub(r"[^A-Z0-9]", "_", stage.upper())


__all__ = ["ADMIN_KEY_FILE", "API_KEY_FILE", "ENGINE_API_KEY_ENV", "ENGINE_KEYS_FILE", "VLLM_API_KEY_ENV",
           "engine_key_env", "ensure_admin_key", "ensure_api_key", "ensure_engine_keys", "key_file_mode",
           "read_engine_keys"]
