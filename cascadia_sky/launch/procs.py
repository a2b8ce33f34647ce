"""Process identity and termination for recorded pids, and one-shot HTTP probes.

A pid in the state store may be reused by an unrelated process after a reboot or a long time; every pid is stored
with its start time and only signalled when both still match. Processes are started in their own session, so
stopping the process group also stops their children.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from typing import Any

from cascadia_sky.constants import LAUNCH_HEALTH_TIMEOUT_SECONDS


def process_start(pid: int) -> str | None:
    """The process's start time as the kernel reports it (Linux /proc), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        if os.path.isdir("/proc/self"):
            return None
        return "unknown" if _exists(pid) else None  # no /proc (macOS): identity by pid only
    fields = data[data.rfind(b")") + 2:].split()
    if fields and fields[0] == b"Z":  # a zombie has finished
        return None
    return fields[19].decode() if len(fields) > 19 else None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def same_process(pid: int | None, start: str | None) -> bool:
    """True when `pid` runs and is the process that was recorded (same start time)."""
    if not pid:
        return False
    now = process_start(pid)
    return now is not None and (start is None or now == start or now == "unknown")


def stop_group(pid: int | None, start: str | None, timeout_s: float) -> bool:
    """SIGTERM the recorded process's group, SIGKILL after `timeout_s`; True when something was signalled."""
    if not same_process(pid, start):
        return False
    assert pid is not None
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, timeout_s)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not same_process(pid, start):
                return True
            _reap(pid)
            time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout_s: float = LAUNCH_HEALTH_TIMEOUT_SECONDS) -> tuple[int, Any]:
    """GET a loopback/remote URL once: (status, parsed JSON or None); (0, None) when nothing answers."""
    return _http(urllib.request.Request(url, headers=headers or {}), timeout_s)


def http_post(url: str, doc: Any, headers: dict[str, str] | None = None,
              timeout_s: float = LAUNCH_HEALTH_TIMEOUT_SECONDS) -> tuple[int, Any]:
    """POST a JSON document once: (status, parsed JSON or None); (0, None) when nothing answers."""
    return _http(urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                        headers={"Content-Type": "application/json", **(headers or {})}), timeout_s)


def _http(req: urllib.request.Request, timeout_s: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = resp.read()
            try:
                return resp.status, json.loads(body)
            except ValueError:
                return resp.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def engine_idle(url: str, api_key: str = "") -> bool:
    """True when the engine at `url` has no request in progress (llama.cpp's /slots, asked with the stage's engine
    key). Engines without that route count as busy: a caller drains them until its deadline."""
    code, body = http_get(url + "/slots", {"Authorization": f"Bearer {api_key}"} if api_key else None)
    return code == 200 and isinstance(body, list) and not any(
        isinstance(s, dict) and s.get("is_processing") for s in body)


def log_tail(path: str, n_chars: int) -> str:
    """The last characters of a log file ('' when unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n_chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
