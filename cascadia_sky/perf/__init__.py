"""The performance model: how fast a vLLM replica serves a workload (the planner's eyes).

`step.py` prices one engine step (roofline per component with per-GPU-type efficiency factors, `hardware.py`) and
sizes the KV cache; `serving.py` turns steps into TTFT/TPOT under closed-loop benchmarks and open-loop traffic with
queueing; `validate.py` compares predictions with measured vLLM rows.
"""

from cascadia_sky.perf.serving import (
    ClosedLoopEstimate,
    LengthDist,
    OpenLoopEstimate,
    closed_loop,
    open_loop,
)
from cascadia_sky.perf.step import Deployment, MemoryFit, memory_fit, step_model

__all__ = [
    "ClosedLoopEstimate", "Deployment", "LengthDist", "MemoryFit", "OpenLoopEstimate", "closed_loop",
    "memory_fit", "open_loop", "step_model",
]
