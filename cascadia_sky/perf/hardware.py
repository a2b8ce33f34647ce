"""How much of a GPU's datasheet peak a vLLM engine achieves: efficiency factors per GPU type.

The step-time model multiplies datasheet figures (catalog) by these factors. They are properties of the hardware
and of the kernels vLLM runs on it, the same for every model and every configuration. Each was chosen inside the
range published kernel benchmarks show for that kind of kernel, and the Hopper values were then tuned once against
all measured rows in ../shared/data/perf/ together (one set per GPU type; never per row, never per model; see
benchmarks/perf_accuracy.py). The other generations carry no measurements here: their factors follow the same
kernels on that hardware (lower shares on PCIe all-reduce and on ROCm), and unknown GPUs use the vendor default.

Fields:
    hbm            share of HBM bandwidth that weight-streaming GEMMs reach (small-batch decode)
    moe_hbm        the same for grouped MoE GEMMs (experts are small, scattered matrices: lower)
    attn_hbm       share reached by paged decode attention reading the KV cache
    compute        share of the dense BF16/FP16 tensor peak that large prefill GEMMs reach
    fp8_compute    share of the FP8 peak reached by FP8 GEMMs (activation quantisation and scaling included)
    w4_compute     share of the BF16 peak reached by 4-bit weight-only GEMMs (dequantise then BF16 math)
    moe_compute    factor on the above for grouped MoE GEMMs in prefill (routing, permutation, many small GEMMs)
    attn_compute   share of the BF16 peak reached by flash attention in prefill
    link           share of the unidirectional interconnect bandwidth an all-reduce reaches
    allreduce_us   fixed latency of one all-reduce (one-shot custom all-reduce on NVLink; NCCL on PCIe)
    layer_us       per layer per step: gaps between kernels, norms, rotary, activation kernels (CUDA graphs on)
    step_ms        per engine step: scheduling, input preparation, sampling and output processing not hidden
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cascadia_sky.catalog import GpuSpec


@dataclass(frozen=True)
class GpuEfficiency:
    """Achieved fractions of datasheet peaks, plus fixed costs, for one GPU type (see the module docstring)."""

    hbm: float
    moe_hbm: float
    attn_hbm: float
    compute: float
    fp8_compute: float
    w4_compute: float
    moe_compute: float
    attn_compute: float
    link: float
    allreduce_us: float
    layer_us: float
    step_ms: float


# Hopper: the same SMs in H100 and H200, so the compute factors match; the H200's faster HBM3e is reached to a
# lower fraction by latency-bound kernels (grouped MoE GEMMs, paged attention), as its measured rows show.
_H100 = GpuEfficiency(hbm=0.90, moe_hbm=0.70, attn_hbm=0.78, compute=0.52, fp8_compute=0.55, w4_compute=0.37,
                      moe_compute=0.47, attn_compute=0.70, link=0.57, allreduce_us=17.0, layer_us=32.0, step_ms=0.8)
_H200 = dataclasses.replace(_H100, hbm=0.86, moe_hbm=0.55, attn_hbm=0.68)
_AMPERE = GpuEfficiency(hbm=0.88, moe_hbm=0.65, attn_hbm=0.78, compute=0.60, fp8_compute=0.60, w4_compute=0.45,
                        moe_compute=0.47, attn_compute=0.60, link=0.60, allreduce_us=20.0, layer_us=35.0, step_ms=0.9)
# PCIe parts: NCCL all-reduce over PCIe (custom all-reduce needs NVLink beyond 2 GPUs)
_PCIE = GpuEfficiency(hbm=0.85, moe_hbm=0.60, attn_hbm=0.75, compute=0.55, fp8_compute=0.50, w4_compute=0.40,
                      moe_compute=0.47, attn_compute=0.55, link=0.50, allreduce_us=40.0, layer_us=32.0, step_ms=0.9)
_BLACKWELL = GpuEfficiency(hbm=0.80, moe_hbm=0.50, attn_hbm=0.65, compute=0.50, fp8_compute=0.50, w4_compute=0.35,
                           moe_compute=0.47, attn_compute=0.60, link=0.57, allreduce_us=15.0, layer_us=28.0,
                           step_ms=0.7)
# ROCm kernels reach a lower share of MI300X's peaks than CUDA kernels do of NVIDIA's
_CDNA3 = GpuEfficiency(hbm=0.65, moe_hbm=0.45, attn_hbm=0.55, compute=0.40, fp8_compute=0.35, w4_compute=0.30,
                       moe_compute=0.45, attn_compute=0.45, link=0.50, allreduce_us=25.0, layer_us=40.0, step_ms=1.0)

_BY_NAME: dict[str, GpuEfficiency] = {
    "H100": _H100, "H100-MEGA": _H100, "GH200": _H100, "H200": _H200,
    "A100": _AMPERE, "A100-80GB": _AMPERE,
    "A10G": _PCIE, "A10": _PCIE, "L4": _PCIE, "L40": _PCIE, "L40S": _PCIE,
    "B200": _BLACKWELL,
    "MI300X": _CDNA3,
}
_BY_VENDOR: dict[str, GpuEfficiency] = {"NVIDIA": _AMPERE, "AMD": _CDNA3}
# GDDR cards' datasheets count decimal GB (an L4 shows 22.5 GiB); HBM parts' "80 GB" are binary GiB (79.6 GiB usable)
_DECIMAL_GB = {"A10G", "A10", "L4", "L40", "L40S"}


def efficiency(gpu: GpuSpec) -> GpuEfficiency:
    """The efficiency factors of a GPU type (vendor default for types without their own entry)."""
    return _BY_NAME.get(gpu.name) or _BY_VENDOR.get(gpu.vendor.upper(), _AMPERE)


def memory_bytes(gpu: GpuSpec) -> float:
    """Device memory in bytes, reading the datasheet figure the way that part's datasheet means it."""
    return gpu.memory_gb * (1e9 if gpu.name in _DECIMAL_GB else float(1 << 30))
