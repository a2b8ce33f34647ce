"""The planner's predicted request-level p95 next to the simulator's, for Poisson and for the trace's arrivals.

`latency_check(spec, plan)` replays the plan twice on the same requests (lengths, prompts): once with the
workload's own arrival times (a trace, or the spec's Poisson arrivals), once with Poisson arrivals at the same mean
rate. `plan --explain` prints it; `benchmarks/latency_accuracy.py` runs it on every example and paper setting.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from cascadia_sky.constants import SIM_SEED
from cascadia_sky.planner.plan import Plan
from cascadia_sky.sim.simulate import load_spec_profile, make_requests, simulate, spec_workload
from cascadia_sky.spec import CascadeSpec


def latency_check(spec: CascadeSpec, plan: Plan) -> dict[str, Any]:
    """{"poisson": (predicted, simulated), "trace": (predicted, simulated) or None} request p95s in seconds, and
    each one's relative error."""
    workload = spec_workload(spec)
    profile = load_spec_profile(spec)
    rng = np.random.default_rng(SIM_SEED)
    t = np.cumsum(rng.exponential(1.0 / workload.rate_rps, workload.n))
    poisson = make_requests(dataclasses.replace(workload, arrival_s=t - t[0]), profile)
    p = plan.predicted
    out: dict[str, Any] = {}
    sim_poisson = float(simulate(spec, plan, requests=poisson).summary()["e2e_p95_s"])
    out["poisson"] = _pair(p.request_p95_latency_s, sim_poisson)
    if spec.workload.trace is not None:
        sim_trace = float(simulate(spec, plan, requests=make_requests(workload, profile)).summary()["e2e_p95_s"])
        out["trace"] = _pair(p.request_p95_latency_bursty_s, sim_trace)
    else:
        out["trace"] = None
    return out


def _pair(predicted: float | None, simulated: float) -> dict[str, float | None]:
    err = (predicted / simulated - 1.0) if predicted is not None and simulated > 0 and math.isfinite(simulated) \
        else None
    return {"predicted_s": predicted, "simulated_s": simulated, "error": err}
