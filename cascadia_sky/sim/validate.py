"""The simulator against measured vLLM closed-loop benchmarks (the rows `cascadia perf validate` reads).

Each row is replayed as the benchmark ran it: `concurrency` clients start together and each sends its next prompt as
soon as the previous answer is complete, `BENCHMARK_PROMPTS_PER_CLIENT` prompts per client, fixed input and output
lengths, on one replica. TTFT and TPOT are the benchmark's means over requests (TPOT of a request = (latency - TTFT)
/ (output tokens - 1)). The row parsing and the error summary are `perf/validate.py`'s, so the simulator's errors
and the analytical model's errors are measured on exactly the same rows.

One liberty: in a simulation, clients that start together stay in lockstep (every round's prompts collide in the
same iterations), which the measured TTFTs do not show; so before its second prompt each client waits a uniform
random share of one request's duration once (`engine.run_closed_loop`, `desync_s`), and later rounds arrive at
independent phases. On the shipped rows (`tests/test_sim_closed_loop.py`) the median TTFT error is about 120 %
without it and 24 % with it; TPOT is unaffected (about 8 %).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cascadia_sky.constants import (
    BENCHMARK_PROMPTS_PER_CLIENT,
    SIM_SEED,
    VLLM_REQUEST_OVERHEAD_MS,
)
from cascadia_sky.errors import PerfError
from cascadia_sky.perf.step import Deployment, step_model
from cascadia_sky.perf.validate import ValidationReport, validate_csv
from cascadia_sky.sim.engine import kv_capacity_tokens, run_closed_loop


def simulated_closed_loop(dep: Deployment, concurrency: int, isl: int, osl: int,
                          prompts_per_client: int = BENCHMARK_PROMPTS_PER_CLIENT) -> tuple[float, float]:
    """(mean TTFT, mean TPOT) in seconds of a simulated closed-loop benchmark."""
    sm = step_model(dep)
    if sm.invalid:
        raise PerfError(sm.invalid)
    if kv_capacity_tokens(sm) < isl + osl:
        raise PerfError(f"one {isl}+{osl}-token request does not fit the KV cache of {dep.model.name} on "
                        f"{dep.gpus} x {dep.gpu.name}")
    overhead = VLLM_REQUEST_OVERHEAD_MS * 1e-3
    pp = dep.pp
    duration = float(sm.step_time(0.0, min(isl, sm.budget_tokens) / pp, 0.0, isl / 2.0, 1.0 / pp)) \
        + (osl - 1) * float(sm.step_time(concurrency / pp, 0.0, isl + osl / 2.0, 0.0, concurrency / pp))
    req = run_closed_loop(sm, concurrency, concurrency * prompts_per_client, isl, osl, overhead,
                          desync_s=duration, seed=SIM_SEED)
    sent = np.asarray(req.t_arrive) - overhead
    first = np.asarray(req.t_first)
    ttft = first - sent
    tpot = (np.asarray(req.t_done) - first) / max(osl - 1, 1)
    return float(ttft.mean()), float(tpot.mean())


def validate_simulator(path: str | Path) -> ValidationReport:
    """Every modellable row of a measured CSV, predicted by the simulator (same report as `perf validate`)."""
    return validate_csv(path, estimator=simulated_closed_loop)
