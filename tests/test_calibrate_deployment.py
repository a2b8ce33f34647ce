"""`cascadia calibrate` asks the running deployment of the spec's name when it is up: its engines, with each stage's
engine key (engines answer /v1 only with it), and starts no engine of its own."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

from tests.launch.helpers import REPO, cli, processes_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_calibrate_uses_the_running_deployment_with_its_engine_keys(tmp_path: Path) -> None:
    up = cli(tmp_path, "up", "examples/local.yaml", "--port", str(_free_port()), timeout=300)
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        out = tmp_path / "profile.csv"
        r = cli(tmp_path, "calibrate", "examples/local.yaml", "--prompts", str(REPO / "examples/prompts/basic.jsonl"),
                "--limit", "3", "-o", str(out), "--max-tokens", "8", timeout=600)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "starting a local engine" not in r.stdout + r.stderr
        rows = [row for row in csv.reader(line for line in out.read_text().splitlines() if not line.startswith("#"))]
        assert len(rows) == 1 + 3 * 2                                  # header + 3 prompts x 2 stages
        assert all(row[2] not in ("", "nan") for row in rows[1:])       # every answer scored (the engines answered)
    finally:
        assert cli(tmp_path, "down", "local").returncode == 0
    assert processes_of(tmp_path) == []
