"""Launch a trivial task on the local Slurm cluster through SkyPilot's SDK, reach it, tear it down, time it.

Made by `scripts/local-slurm.sh up`; used by tests/test_slurm_smoke.py and runnable by hand:

    .venv/bin/python scripts/slurm/sky_smoke.py [--state-dir DIR] [--cluster-name NAME]

The task runs `python3 -m http.server` bound to 127.0.0.1 inside the cluster; the script fetches it at the cluster's
head IP, then runs `sky down`. SkyPilot's client state (HOME, SKY_RUNTIME_DIR, its own API server on a free port)
lives in a throw-away directory, so the user's ~/.sky is never touched; the API server is stopped at the end.
The last line printed is one JSON object: the figures and what was observed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/tmp/cascadia-slurm"
HTTP_WAIT_SECONDS = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slurm_alias(state_dir: Path) -> str:
    """The Host alias (= Slurm cluster name) written by local-slurm.sh into its copy of ~/.slurm/config."""
    for line in (state_dir / "client" / "slurm-config").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "Host":
            return parts[1]
    raise SystemExit(f"{state_dir}/client/slurm-config: no Host line; run scripts/local-slurm.sh up")


def isolate_skypilot(state_dir: Path, home: Path) -> None:
    """Point SkyPilot's client and API server at `home`, with the cluster's ssh config; before `import sky`."""
    (home / ".slurm").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)  # the API server's workers leave sky-tmp* dirs behind when stopped
    shutil.copy(state_dir / "client" / "slurm-config", home / ".slurm" / "config")
    os.environ.update({
        "HOME": str(home),
        "SKY_RUNTIME_DIR": str(home),
        "TMPDIR": str(home / "tmp"),
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
        "SKYPILOT_API_SERVER_LOCAL_PORT": str(free_port()),
    })


def http_get(url: str, wait_seconds: float) -> tuple[int, str, float]:
    """(HTTP status, start of the body, seconds until it answered); status 0 when nothing answered in time."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait_seconds:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read(2000).decode(errors="replace"), time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    return 0, "", time.monotonic() - t0


def slurm_jobs(state_dir: Path) -> list[str]:
    """Names of the Slurm jobs in the local cluster's queue (SkyPilot names them <cluster>-<user hash>)."""
    env = {**os.environ, "SLURM_CONF": str(state_dir / "slurm" / "slurm.conf")}
    out = subprocess.run(["squeue", "-h", "-o", "%j"], env=env, capture_output=True, text=True, check=True).stdout
    return out.split()


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_smoke(state_dir: Path, cluster_name: str, port: int) -> dict[str, Any]:
    """launch -> GET -> status -> down -> status, timed; tears down whatever it launched even on failure."""
    import sky  # imported here: after isolate_skypilot() set HOME and friends

    alias = slurm_alias(state_dir)
    result: dict[str, Any] = {"cluster_name": cluster_name, "slurm_cluster": alias, "port": port}
    task = sky.Task(name="cascadia-smoke", run=f"python3 -m http.server {port} --bind 127.0.0.1")
    task.set_resources(sky.Resources(infra=f"slurm/{alias}", cpus=1))
    launched = False
    try:
        t0 = time.monotonic()
        launched = True
        job_id, handle = sky.stream_and_get(sky.launch(task, cluster_name=cluster_name))
        result["launch_seconds"] = round(time.monotonic() - t0, 1)
        result["job_id"] = job_id
        result["head_ip"] = handle.head_ip
        status, body, waited = http_get(f"http://{handle.head_ip}:{port}/", HTTP_WAIT_SECONDS)
        result["http_status"] = status
        result["http_body_is_listing"] = "Directory listing for /" in body
        result["slurm_jobs_while_up"] = slurm_jobs(state_dir)
        result["first_response_seconds"] = round(time.monotonic() - t0, 1)
        result["http_wait_seconds"] = round(waited, 1)
        records = sky.get(sky.status([cluster_name]))
        result["status_after_launch"] = [str(r.status.value) for r in records]
        t1 = time.monotonic()
        sky.stream_and_get(sky.down(cluster_name))
        launched = False
        result["down_seconds"] = round(time.monotonic() - t1, 1)
        result["clusters_after_down"] = [r.name for r in sky.get(sky.status())]
        result["port_open_after_down"] = port_open(port)
    finally:
        if launched:
            try:
                sky.stream_and_get(sky.down(cluster_name, purge=True))
            except Exception as exc:  # noqa: BLE001 - report, the caller's checks fail on the leftover
                result["cleanup_error"] = repr(exc)
        sky.api_stop()
        api_port = int(os.environ["SKYPILOT_API_SERVER_LOCAL_PORT"])
        result["api_server_port_open_after_stop"] = port_open(api_port)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=os.environ.get("CASCADIA_SLURM_DIR", DEFAULT_STATE_DIR))
    parser.add_argument("--cluster-name", default="cascadia-smoke")
    parser.add_argument("--port", type=int, default=0, help="port of the task's http.server (default: a free one)")
    parser.add_argument("--home", default="", help="SkyPilot client home (default: a temp dir, removed after)")
    args = parser.parse_args()
    state_dir = Path(args.state_dir)
    if not (state_dir / "client" / "slurm-config").is_file():
        raise SystemExit(f"{state_dir}: no local Slurm cluster; run scripts/local-slurm.sh up (as root)")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="cascadia-sky-home."))
    try:
        isolate_skypilot(state_dir, home)
        result = run_smoke(state_dir, args.cluster_name, args.port or free_port())
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
