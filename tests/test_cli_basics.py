"""The CLI boundary: version, help, and one-line errors with exit codes."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cascadia_sky.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_version_prints() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert "cascadia-sky" in out.stdout


def test_unknown_command_exits_2() -> None:
    out = run_cli("no-such-command")
    assert out.returncode == 2
    assert "No such command" in out.stderr
