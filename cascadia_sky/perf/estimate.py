"""One configuration, described for a person: what fits, and how fast it serves (`cascadia perf estimate`)."""

from __future__ import annotations

import math

import numpy as np

from cascadia_sky.errors import UserInputError


def estimate_rows(model: str, gpu: str, tp: int = 1, pp: int = 1, precision: str = "bf16", *,
                  concurrency: int | None = None, rate_rps: float | None = None, isl: int = 1024, osl: int = 256,
                  length_sigma: float = 0.0, replicas: int = 1) -> list[tuple[str, str]]:
    """(quantity, value) rows: memory fit, then closed-loop (concurrency) or open-loop (rate) latency.

    With a rate, lengths are lognormal around isl/osl with `length_sigma` (0: fixed lengths).
    """
    from cascadia_sky.catalog import get_gpu
    from cascadia_sky.constants import WORKLOAD_SAMPLE_COUNT, WORKLOAD_SEED
    from cascadia_sky.models import get_model
    from cascadia_sky.perf.serving import LengthDist, closed_loop, open_loop
    from cascadia_sky.perf.step import Deployment, memory_fit

    if (concurrency is None) == (rate_rps is None):
        raise UserInputError("give exactly one of --concurrency (closed loop) or --rate (open loop)")
    arch, spec = get_model(model), get_gpu(gpu)
    dep = Deployment(model=arch, gpu=spec, tp=tp, pp=pp, precision=precision)
    fit = memory_fit(dep, isl + osl)
    rows = [
        ("model", f"{arch.name} ({arch.params_total() / 1e9:.1f} B params, {arch.params_active() / 1e9:.1f} B active)"),
        ("deployment", f"{spec.name} x {dep.gpus} (TP {tp} x PP {pp}), {dep.precision}"),
        ("weights per GPU", f"{fit.weights_gb_per_gpu:.1f} GB"),
        ("KV cache per GPU", f"{fit.kv_gb_per_gpu:.1f} GB ({fit.kv_capacity_tokens:,} tokens per replica)"),
        ("fits", "yes" if fit.fits else f"no: {fit.reason}"),
    ]
    if not fit.fits:
        return rows
    if concurrency is not None:
        c = closed_loop(dep, concurrency, isl, osl)
        return rows + [
            ("workload", f"closed loop: {concurrency} clients, {isl} in / {osl} out tokens"),
            ("TTFT", f"{c.ttft_s * 1e3:.1f} ms"), ("TPOT", f"{c.tpot_s * 1e3:.2f} ms"),
            ("end-to-end", f"{c.e2e_s:.2f} s"), ("running at once", f"{c.running:.0f}"),
            ("throughput", f"{c.throughput_rps:.2f} req/s, {c.output_tokens_per_s:,.0f} output tok/s"),
            ("KV-limited", "yes" if c.kv_limited else "no"),
        ]
    assert rate_rps is not None
    if length_sigma > 0:
        rng = np.random.default_rng(WORKLOAD_SEED)
        mu = -length_sigma**2 / 2
        lengths = LengthDist(np.maximum(np.rint(isl * rng.lognormal(mu, length_sigma, WORKLOAD_SAMPLE_COUNT)), 1),
                             np.maximum(np.rint(osl * rng.lognormal(mu, length_sigma, WORKLOAD_SAMPLE_COUNT)), 1))
    else:
        lengths = LengthDist.fixed(isl, osl)
    o = open_loop(dep, rate_rps, lengths, replicas)

    def ms(x: float) -> str:
        return "unbounded" if math.isinf(x) else f"{x * 1e3:.1f} ms"

    def sec(x: float) -> str:
        return "unbounded" if math.isinf(x) else f"{x:.2f} s"

    return rows + [
        ("workload", f"open loop: {rate_rps:g} req/s over {replicas} replica(s), {isl} in / {osl} out tokens"
                     + (f" (lognormal, sigma {length_sigma:g})" if length_sigma > 0 else "")),
        ("TTFT p50", ms(o.ttft_p50_s)), ("TPOT", f"{o.tpot_s * 1e3:.2f} ms"),
        ("end-to-end p50", sec(o.e2e_p50_s)), ("end-to-end p95", sec(o.e2e_p95_s)),
        ("max rate per replica", f"{o.max_rate_rps:.2f} req/s"), ("utilization", f"{o.utilization:.0%}"),
        ("stable", "yes" if o.stable else "no: the rate exceeds what the replicas sustain"),
    ]
