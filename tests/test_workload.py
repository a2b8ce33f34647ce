"""Workloads: the Azure trace format loads as is; distributions sample what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascadia_sky.errors import SpecError
from cascadia_sky.workload import load_trace, sample_lengths

REPO = Path(__file__).resolve().parents[1]
SHARED_TRACES = REPO.parent / "shared" / "data" / "traces" / "azure-llm-2023"


@pytest.mark.parametrize("name,count,rate", [("AzureLLMInferenceTrace_conv.csv", 19366, 5.4),
                                             ("AzureLLMInferenceTrace_code.csv", 8819, 2.5)])
def test_shipped_azure_traces_load(name: str, count: int, rate: float) -> None:
    w = load_trace(REPO / "examples" / "traces" / name)
    assert w.n == count
    assert w.rate_rps == pytest.approx(rate, rel=0.05)
    assert w.arrival_s is not None and w.arrival_s[0] == 0 and np.all(np.diff(w.arrival_s) >= 0)
    assert w.input_tokens.min() >= 1 and w.output_tokens.min() >= 1


def test_shipped_copy_equals_shared_original() -> None:
    if not SHARED_TRACES.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    for name in ("AzureLLMInferenceTrace_conv.csv", "AzureLLMInferenceTrace_code.csv"):
        assert (REPO / "examples" / "traces" / name).read_bytes() == (SHARED_TRACES / name).read_bytes()


def test_rate_scale_compresses_time(tmp_path: Path) -> None:
    w1 = load_trace(REPO / "examples" / "traces" / "AzureLLMInferenceTrace_conv.csv")
    w2 = load_trace(REPO / "examples" / "traces" / "AzureLLMInferenceTrace_conv.csv", rate_scale=2.0)
    assert w2.rate_rps == pytest.approx(2 * w1.rate_rps)


def test_bad_trace_header(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("time,in,out\n1,2,3\n")
    with pytest.raises(SpecError, match="missing column"):
        load_trace(p)


def test_bad_trace_value(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,5\n1,ten,5\n")
    with pytest.raises(SpecError, match="line 3"):
        load_trace(p)


def test_distributions() -> None:
    assert set(sample_lengths("fixed", value=128, n=10)) == {128}
    ln = sample_lengths("lognormal", mean=500, sigma=1.0, n=200_000)
    assert ln.mean() == pytest.approx(500, rel=0.03)
    emp = sample_lengths("empirical", values=[3, 7], n=1000)
    assert set(emp) == {3, 7}


def test_plain_seconds_and_iso_dates_give_the_same_arrivals(tmp_path: Path) -> None:
    secs = tmp_path / "secs.csv"
    secs.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023,10,5\n2024.5,20,6\n2030,30,7\n")
    iso = tmp_path / "iso.csv"
    iso.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0000000,10,5\n"
                   "2023-11-16 18:15:47.5000000,20,6\n2023-11-16 18:15:53.0000000,30,7\n")
    a, b = load_trace(secs), load_trace(iso)
    assert list(a.arrival_s) == pytest.approx([0.0, 1.5, 7.0])   # "2023" is seconds here, not a year
    assert list(b.arrival_s) == pytest.approx([0.0, 1.5, 7.0])
    assert list(a.input_tokens) == list(b.input_tokens) == [10, 20, 30]
