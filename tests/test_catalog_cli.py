"""`cascadia catalog`: tables, JSON, filters, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from cascadia_sky.cli import app


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cascadia_sky.cli", "catalog", *args], capture_output=True,
                          text=True, timeout=120)


def test_tables_list_gpus_and_cheapest_offers() -> None:
    result = CliRunner().invoke(app, ["catalog"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "GPU types" in result.output and "Cheapest on-demand offer" in result.output
    for text in ("H100", "MI300X", "g5.xlarge", "gpu_8x_h100_sxm5", "SOURCES.md"):
        assert text in result.output


def test_json_with_filters() -> None:
    out = run_cli("--json", "--gpu", "h100_sxm", "--cloud", "aws", "--cloud", "gcp", "--spot", "--max-price", "30")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["spot"] is True and [g["name"] for g in data["gpus"]] == ["H100"]
    offers = data["cheapest_offers"]
    assert offers and {o["gpu"] for o in offers} == {"H100"} and {o["cloud"] for o in offers} <= {"aws", "gcp"}
    assert all(o["spot_usd_per_hour"] <= 30 for o in offers)
    assert len({o["gpus"] for o in offers}) == len(offers)  # one per instance size


def test_no_match_says_what_to_relax() -> None:
    result = CliRunner().invoke(app, ["catalog", "--max-price", "0.01"])
    assert result.exit_code == 0
    assert "No offers match" in result.output


def test_bad_gpu_is_one_red_line() -> None:
    out = run_cli("--gpu", "H1000")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown GPU 'H1000' (did you mean 'H100'?)" in lines[0]
    assert "Traceback" not in out.stderr
