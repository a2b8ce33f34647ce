"""SkyPilot on the local Slurm cluster of scripts/local-slurm.sh: launch a task, reach its server, tear it down.

Marked `slurm`: scripts/test.sh runs these after the fast tests when CI=true or CASCADIA_TEST_SLURM=1, between
`scripts/local-slurm.sh up` and `down`. Without a running cluster they fail in CI (with the reason) and skip elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = Path(os.environ.get("CASCADIA_SLURM_DIR", "/tmp/cascadia-slurm"))
SMOKE = REPO / "scripts" / "slurm" / "sky_smoke.py"
SMOKE_TIMEOUT_SECONDS = 900   # first launch pip-installs SkyPilot's runtime on the node (about 35 s seen)
QUEUE_DRAIN_SECONDS = 30


def _unavailable(reason: str) -> None:
    """In CI a missing cluster is a failure with its reason; elsewhere (no root, not set up) a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _slurm_config_value(key: str) -> str:
    """A value (User, Port, ...) from the Host block local-slurm.sh wrote for SkyPilot."""
    for line in (STATE_DIR / "client" / "slurm-config").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return parts[1]
    raise AssertionError(f"{STATE_DIR}/client/slurm-config has no {key} line")


def _queue(user: str) -> str:
    env = {**os.environ, "SLURM_CONF": str(STATE_DIR / "slurm" / "slurm.conf")}
    return subprocess.run(["squeue", "-h", "-u", user], env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def local_slurm() -> Path:
    """The running local cluster's state dir, checked healthy by `local-slurm.sh status`."""
    if importlib.util.find_spec("sky") is None:
        _unavailable("SkyPilot is not installed: .venv/bin/pip install -e '.[sky]'")
    if not (STATE_DIR / "client" / "slurm-config").is_file():
        _unavailable(f"no local Slurm cluster at {STATE_DIR}: run `scripts/local-slurm.sh up` as root first")
    status = subprocess.run(["bash", str(REPO / "scripts" / "local-slurm.sh"), "status"],
                            env={**os.environ, "CASCADIA_SLURM_DIR": str(STATE_DIR)},
                            capture_output=True, text=True)
    if status.returncode != 0:
        _unavailable(f"local Slurm cluster at {STATE_DIR} is not healthy:\n{status.stdout}{status.stderr}")
    return STATE_DIR


def test_sky_launch_serves_on_head_ip_and_down_leaves_nothing(local_slurm: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """sky.launch of `python3 -m http.server` on Slurm: reachable at head IP 127.0.0.1, then sky down cleans up."""
    user = _slurm_config_value("User")
    name = f"cascadia-smoke-{os.getpid()}"
    proc = subprocess.run(
        [sys.executable, str(SMOKE), "--state-dir", str(local_slurm), "--home", str(tmp_path / "sky-home"),
         "--cluster-name", name],
        capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS)
    assert proc.returncode == 0, f"sky_smoke.py failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    with capsys.disabled():
        print(f"\n[slurm smoke] launch {result['launch_seconds']} s, first answer {result['first_response_seconds']} s,"
              f" down {result['down_seconds']} s")

    # Launched on the Slurm cluster (a job named after the SkyPilot cluster), reachable at the head IP.
    assert result["slurm_cluster"] == _slurm_config_value("Host")
    assert any(job.startswith(name) for job in result["slurm_jobs_while_up"]), result["slurm_jobs_while_up"]
    assert result["head_ip"] == "127.0.0.1"
    assert result["http_status"] == 200
    assert result["http_body_is_listing"], "the server that answered is not the task's http.server"
    assert result["status_after_launch"] == ["UP"]

    # Down: SkyPilot knows no cluster, the server is gone, SkyPilot's API server stopped, Slurm's queue drains.
    assert result["clusters_after_down"] == []
    assert not result["port_open_after_down"]
    assert not result["api_server_port_open_after_stop"]
    deadline = time.monotonic() + QUEUE_DRAIN_SECONDS
    while _queue(user) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _queue(user) == "", f"Slurm jobs of {user} left after sky down"
