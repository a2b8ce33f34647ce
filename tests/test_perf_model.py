"""The performance model: memory fit edge cases and the properties the planner relies on."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cascadia_sky.catalog import get_gpu
from cascadia_sky.errors import PerfError
from cascadia_sky.models import get_model
from cascadia_sky.perf import Deployment, LengthDist, closed_loop, memory_fit, open_loop, step_model


def dep(model: str, gpu: str = "H100", tp: int = 1, pp: int = 1, precision: str = "bf16") -> Deployment:
    return Deployment(model=get_model(model), gpu=get_gpu(gpu), tp=tp, pp=pp, precision=precision)


def lognormal_lengths(isl: float = 1000, osl: float = 300, sigma: float = 0.7, n: int = 4000) -> LengthDist:
    rng = np.random.default_rng(7)
    return LengthDist(np.rint(isl * rng.lognormal(-sigma**2 / 2, sigma, n)) + 1,
                      np.rint(osl * rng.lognormal(-sigma**2 / 2, sigma, n)) + 1)


# --- memory ------------------------------------------------------------------------------------

def test_70b_bf16_does_not_fit_one_h100_but_fits_two() -> None:
    one = memory_fit(dep("llama-3.1-70b", tp=1), 8192)
    assert not one.fits and "weights need" in one.reason and one.kv_capacity_tokens == 0
    two = memory_fit(dep("llama-3.1-70b", tp=2), 8192)
    assert two.fits and two.weights_gb_per_gpu == pytest.approx(70.6, rel=0.02)
    assert two.kv_capacity_tokens > 8192


def test_context_longer_than_the_kv_cache_does_not_fit() -> None:
    fit = memory_fit(dep("llama-3.1-70b", tp=2), 2_000_000)
    assert not fit.fits and "2000000-token context" in fit.reason


def test_tp_that_does_not_divide_heads_is_rejected() -> None:
    fit = memory_fit(dep("HuggingFaceTB/SmolLM2-135M", "L4", tp=2), 2048)   # 9 attention heads
    assert not fit.fits and "does not divide the 9 attention heads" in fit.reason
    with pytest.raises(PerfError, match="does not divide"):
        closed_loop(dep("HuggingFaceTB/SmolLM2-135M", "L4", tp=2), 4, 128, 128)


def test_405b_needs_fp8_on_eight_h200() -> None:
    assert not memory_fit(dep("llama-3.1-405b", "H100", tp=8), 8192).fits
    assert memory_fit(dep("llama-3.1-405b", "H200", tp=8, precision="fp8"), 8192).fits
    assert memory_fit(dep("llama-3.1-405b", "H100", tp=8, pp=2), 8192).fits


def test_kv_capacity_grows_with_gpus_and_lower_precision() -> None:
    caps = [memory_fit(dep("llama-3.1-70b", tp=t, pp=p), 4096).kv_capacity_tokens
            for t, p in ((2, 1), (4, 1), (4, 2), (8, 1))]
    assert caps[0] < caps[1] < caps[2] and caps[1] < caps[3]
    assert memory_fit(dep("llama-3.1-70b", tp=2, precision="fp8"), 4096).kv_capacity_tokens > caps[0]


def test_mla_latents_are_replicated_across_tp() -> None:
    sm = step_model(dep("deepseek-v3", "H200", tp=8, precision="fp8"))
    assert sm.kv_bytes_full == get_model("deepseek-v3").kv_bytes_per_token("bf16")   # not split by TP
    gqa = step_model(dep("llama-3.1-70b", "H200", tp=8))
    assert gqa.kv_bytes_full == get_model("llama-3.1-70b").kv_bytes_per_token("bf16") / 8


# --- closed loop -------------------------------------------------------------------------------

def test_more_clients_raise_latency() -> None:
    d = dep("llama-3.1-8b")
    est = [closed_loop(d, c, 1024, 512) for c in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    ttft, tpot = [e.ttft_s for e in est], [e.tpot_s for e in est]
    assert all(a <= b for a, b in itertools.pairwise(ttft))
    assert all(a <= b for a, b in itertools.pairwise(tpot))
    thr = [e.output_tokens_per_s for e in est]
    assert thr[-1] > 10 * thr[0]   # batching buys throughput


def test_longer_prompts_cost_more() -> None:
    d = dep("llama-3.1-8b")
    short, long = closed_loop(d, 16, 512, 256), closed_loop(d, 16, 8192, 256)
    assert long.ttft_s > 4 * short.ttft_s and long.tpot_s > short.tpot_s


def test_tp_lowers_tpot_for_a_big_model() -> None:
    tpot = [closed_loop(dep("llama-3.1-70b", tp=t), 8, 1024, 256).tpot_s for t in (2, 4, 8)]
    assert tpot[0] > tpot[1] > tpot[2]
    assert tpot[0] / tpot[2] < 4   # all-reduce and fixed costs: less than linear


def test_pp_adds_throughput_not_speed() -> None:
    one, two = (closed_loop(dep("llama-3.1-70b", tp=4, pp=p), 8, 1024, 256) for p in (1, 2))
    assert two.tpot_s > 0.8 * one.tpot_s
    lengths = LengthDist.fixed(1024, 256)
    assert open_loop(dep("llama-3.1-70b", tp=4, pp=2), 1.0, lengths).max_rate_rps > \
        1.5 * open_loop(dep("llama-3.1-70b", tp=4, pp=1), 1.0, lengths).max_rate_rps


def test_clients_beyond_the_kv_cache_wait() -> None:
    d = dep("Qwen/Qwen3-32B", tp=2)
    ok = closed_loop(d, 32, 4096, 128)
    full = closed_loop(d, 256, 4096, 128)
    assert not ok.kv_limited and full.kv_limited
    assert full.ttft_s > 10 * ok.ttft_s


def test_cold_start_adds_to_ttft() -> None:
    d = dep("llama-3.1-70b", tp=4)
    assert closed_loop(d, 64, 2048, 256, prompts_per_client=10).ttft_s > closed_loop(d, 64, 2048, 256).ttft_s


def test_request_that_cannot_fit_is_an_error() -> None:
    with pytest.raises(PerfError, match="does not fit the KV cache"):
        closed_loop(dep("llama-3.1-70b", tp=2), 1, 1_000_000, 10)
    with pytest.raises(PerfError, match="leaves no KV-cache memory"):
        closed_loop(dep("llama-3.1-70b", tp=1), 1, 100, 10)


# --- open loop ---------------------------------------------------------------------------------

def test_open_loop_latency_grows_with_load_and_breaks_beyond_capacity() -> None:
    d, lengths = dep("llama-3.1-8b"), lognormal_lengths()
    cap = open_loop(d, 0.1, lengths).max_rate_rps
    rates = [f * cap for f in (0.05, 0.3, 0.6, 0.85, 0.97)]
    est = [open_loop(d, r, lengths) for r in rates]
    assert all(e.stable for e in est)
    for key in ("tpot_s", "e2e_p50_s", "e2e_p95_s", "ttft_p50_s", "utilization"):
        values = [getattr(e, key) for e in est]
        assert all(a <= b for a, b in itertools.pairwise(values)), key
    assert est[-1].e2e_p95_s > 1.5 * est[0].e2e_p95_s
    assert all(e.e2e_p95_s >= e.e2e_p50_s for e in est)
    over = open_loop(d, 1.2 * cap, lengths)
    assert not over.stable and math.isinf(over.e2e_p95_s) and over.utilization > 1


def test_replicas_share_the_rate() -> None:
    d, lengths = dep("llama-3.1-8b"), lognormal_lengths()
    two = open_loop(d, 6.0, lengths, replicas=2)
    one = open_loop(d, 3.0, lengths, replicas=1)
    assert two.e2e_p95_s == pytest.approx(one.e2e_p95_s) and two.max_rate_rps == pytest.approx(one.max_rate_rps)


def test_weights_equal_repeated_samples() -> None:
    d = dep("llama-3.1-8b")
    rep = LengthDist(np.array([100.0, 100.0, 100.0, 2000.0]), np.array([50.0, 50.0, 50.0, 400.0]))
    wtd = LengthDist(np.array([100.0, 2000.0]), np.array([50.0, 400.0]), weights=np.array([3.0, 1.0]))
    a, b = open_loop(d, 2.0, rep), open_loop(d, 2.0, wtd)
    assert a.e2e_p95_s == pytest.approx(b.e2e_p95_s) and a.tpot_s == pytest.approx(b.tpot_s)


def test_compressed_lengths_keep_their_means() -> None:
    lengths = lognormal_lengths(n=20000)
    i, o, w = lengths.cells
    assert i.size <= 256 and w.sum() == pytest.approx(1.0)
    assert float(w @ i) == pytest.approx(lengths.input_tokens.mean(), rel=1e-9)
    assert float(w @ o) == pytest.approx(lengths.output_tokens.mean(), rel=1e-9)


def test_open_loop_at_low_rate_matches_one_client() -> None:
    d = dep("llama-3.1-8b")
    o = open_loop(d, 0.01, LengthDist.fixed(1024, 256))
    c = closed_loop(d, 1, 1024, 256)
    assert o.tpot_s == pytest.approx(c.tpot_s, rel=0.05)
    assert o.ttft_p50_s == pytest.approx(c.ttft_s, rel=0.1)


def test_moe_decode_reads_more_experts_at_larger_batches() -> None:
    d = dep("Qwen/Qwen3-235B-A22B-FP8", "H200", tp=4, precision="fp8")
    t = [closed_loop(d, c, 1024, 1024).tpot_s for c in (1, 8, 64)]
    assert t[0] < t[1] < t[2]


def test_bad_inputs_are_errors() -> None:
    d = dep("llama-3.1-8b")
    with pytest.raises(PerfError):
        open_loop(d, -1.0, LengthDist.fixed(10, 10))
    with pytest.raises(PerfError):
        LengthDist(np.array([1.0, 2.0]), np.array([1.0]))
    with pytest.raises(PerfError):
        closed_loop(d, 0, 10, 10)
