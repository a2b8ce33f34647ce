"""The planner's request-level p95 against the simulator's (the full table: benchmarks/latency_accuracy.py).

The plan's `request_p95_latency_s` predicts a replay with Poisson arrivals, `request_p95_latency_bursty_s` one with
the trace's own arrivals; both within 20 % on the examples with a trace. A model that assumed a latency shape (a
log-normal through each stage's p50 and p95) missed the multicloud example by 23 % under both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cascadia_sky.planner.planner import make_plan
from cascadia_sky.sim.check import latency_check
from cascadia_sky.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("example", ["deepseek", "multicloud"])
def test_predicted_request_p95_is_within_20_percent_of_the_simulator(example: str) -> None:
    spec = load_spec(REPO / "examples" / f"{example}.yaml")
    check = latency_check(spec, make_plan(spec))
    for arrivals in ("poisson", "trace"):
        pair = check[arrivals]
        assert pair is not None
        assert abs(pair["error"]) <= 0.20, (arrivals, pair)


@pytest.mark.e2e
@pytest.mark.parametrize("cascade", ["deepseek", "llama3"])
def test_code_trace_bursts_at_8x_within_20_percent(cascade: str, tmp_path: Path) -> None:
    """The burstiest paper setting (code trace at 8x, 64 GPUs): bursts above capacity, batches filled by bursts,
    and later stages fed by the earlier stages' departures. Before the transient service model and the tandem
    departures the planner undershot these by 19 % and 21 % (a stage's p95 by up to 46 %)."""
    data = yaml.safe_load((REPO / "examples" / f"{cascade}.yaml").read_text())
    data["workload"]["trace"] = "traces/AzureLLMInferenceTrace_code.csv"
    data["workload"]["rate_scale"] = 8.0
    data["resources"]["pool"]["count"] = 64
    for folder in ("profiles", "traces"):
        (tmp_path / folder).symlink_to(REPO / "examples" / folder, target_is_directory=True)
    path = tmp_path / f"{cascade}-code-x8.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(path)
    pair = latency_check(spec, make_plan(spec))["trace"]
    assert pair is not None
    print(f"\n{cascade} code x8, trace: predicted {pair['predicted_s']:.2f} s, simulated {pair['simulated_s']:.2f} s")
    assert abs(pair["error"]) <= 0.20, pair
