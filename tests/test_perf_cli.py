"""`cascadia perf estimate`: closed and open loop from the command line, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cascadia_sky.cli", "perf", *args], check=False, capture_output=True,
                          text=True, timeout=120)


def test_estimate_closed_loop() -> None:
    out = run_cli("estimate", "--model", "llama-3.1-70b", "--gpu", "h100_sxm", "--tp", "4", "--concurrency", "16",
                  "--isl", "2048", "--osl", "256")
    assert out.returncode == 0, out.stderr
    for word in ("TTFT", "TPOT", "closed loop", "H100 x 4"):
        assert word in out.stdout


def test_estimate_open_loop_with_spread() -> None:
    out = run_cli("estimate", "--model", "deepseek-v3", "--gpu", "H200", "--tp", "8", "--precision", "fp8",
                  "--rate", "1.5", "--length-sigma", "0.8", "--replicas", "2")
    assert out.returncode == 0, out.stderr
    for word in ("end-to-end p95", "max rate per replica", "stable"):
        assert word in out.stdout


def test_estimate_reports_a_model_that_does_not_fit() -> None:
    out = run_cli("estimate", "--model", "llama-3.1-405b", "--gpu", "L4", "--concurrency", "1")
    assert out.returncode == 0 and "no:" in out.stdout


def test_estimate_errors_are_one_line() -> None:
    both = run_cli("estimate", "--model", "llama-3.1-8b", "--gpu", "H100", "--rate", "1", "--concurrency", "2")
    assert both.returncode == 2 and "exactly one of --concurrency" in both.stderr
    unknown = run_cli("estimate", "--model", "llama-3-7b", "--gpu", "H100", "--rate", "1")
    assert unknown.returncode == 2 and "did you mean 'meta-llama/Llama-3.1-8B'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
