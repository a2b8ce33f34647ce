"""Local CPU engines (llama.cpp through xllamacpp, the embedded default): latency of one engine under Poisson load.

A local engine serves one request at a time (`--parallel 1`), so it is an M/G/1 queue: service time
S_i = ttft + in_i / prefill_rate + out_i / decode_rate from measured token rates, utilisation rho = lambda E[S],
and (Pollaczek-Khinchine) the mean wait of a request that waits is E[S^2] / (2 E[S] (1 - rho)); P(wait) = rho.
Percentiles mix each request's own service time with that exponential wait (the same mixture maths as the GPU
model). Token rates are measured on the 2-core reference machine (see `constants.LOCAL_ENGINE_*`); for models
without a measurement, decode speed scales with the weight bytes a token must read (a memory-bound decode).
"""

from __future__ import annotations

import math

import numpy as np

from cascadia_sky.constants import (
    LOCAL_ENGINE_DECODE_TOKENS_PER_S,
    LOCAL_ENGINE_EFFECTIVE_GB_PER_S,
    LOCAL_ENGINE_PREFILL_TOKENS_PER_S,
    LOCAL_ENGINE_TTFT_S,
    LOCAL_GGUF_BYTES_PER_PARAM,
)
from cascadia_sky.models import ModelArch
from cascadia_sky.perf.serving import LengthDist, OpenLoopEstimate, _mixture_quantile


def decode_tokens_per_s(model: ModelArch) -> float:
    """Measured decode rate for a bundled model, else a memory-bandwidth estimate."""
    for name, rate in LOCAL_ENGINE_DECODE_TOKENS_PER_S.items():
        if name.lower() == model.name.lower():
            return rate
    gb_per_token = model.params_active() * LOCAL_GGUF_BYTES_PER_PARAM / 1e9
    return LOCAL_ENGINE_EFFECTIVE_GB_PER_S / max(gb_per_token, 1e-6)


def local_open_loop(model: ModelArch, rate_rps: float, lengths: LengthDist) -> OpenLoopEstimate:
    """TTFT, TPOT and e2e percentiles of one local engine at `rate_rps` Poisson arrivals."""
    isl, osl, w = lengths.cells
    tpot = 1.0 / decode_tokens_per_s(model)
    ttft = LOCAL_ENGINE_TTFT_S + isl / LOCAL_ENGINE_PREFILL_TOKENS_PER_S
    service = ttft + (osl - 1) * tpot
    es = float(w @ service)
    max_rate = 1.0 / es
    rho = rate_rps * es
    if rho >= 1.0:
        return OpenLoopEstimate(math.inf, math.inf, tpot, math.inf, math.inf, max_rate, rho, False, 1.0)
    cond_wait = float(w @ service**2) / (2.0 * es * (1.0 - rho)) if rho > 0 else 0.0
    p1 = rho
    ttft_p50 = _mixture_quantile(np.asarray(ttft, dtype=float), w, 0.5, p1, cond_wait, 0.0, 0.0)
    return OpenLoopEstimate(ttft_p50_s=ttft_p50, ttft_mean_s=float(w @ ttft) + p1 * cond_wait, tpot_s=tpot,
                            e2e_p50_s=_mixture_quantile(service, w, 0.5, p1, cond_wait, 0.0, 0.0),
                            e2e_p95_s=_mixture_quantile(service, w, 0.95, p1, cond_wait, 0.0, 0.0),
                            max_rate_rps=max_rate, utilization=rho, stable=True, running=min(rho, 1.0))
