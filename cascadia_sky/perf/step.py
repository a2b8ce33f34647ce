"""One vLLM engine step (a forward pass over a batch of decode and prefill tokens) and the KV-cache memory.

A replica is TP x PP GPUs. Per GPU and per step, for `n = n_dec + n_pf` tokens (decode tokens with mean context
`c_dec`, prefill tokens with mean attention span `c_pf`), summed over the PP stages one microbatch passes through:

    t_step = step_ms + L * layer_us                                           fixed costs
           + max(W_dense / (B_hbm * e_hbm),  2 * P_dense * n / (F * e_c))     dense linear layers (roofline)
           + max(W_exp(n) / (B_hbm * e_moe), 2 * P_exp * n / (F * e_c))       routed experts, W_exp(n) = bytes of
                                                                              the E * (1 - (1 - k/E)^n) experts a
                                                                              batch of n tokens touches
           + max(W_head / (B_hbm * e_hbm),   2 * V * h * n_out / (F16 * e_c)) LM head for the n_out sampled tokens
           + max(KV(c_dec) * n_dec / (B_hbm * e_attn), A * (n_dec * c_dec + n_pf * c_pf) / (F16 * e_attn_c))
                                                                              attention: KV reads vs. score math
           + 2 * L * (a_ar + 2 (tp-1)/tp * n * h * 2 B / (B_link/2 * e_link))  TP all-reduce, two per layer
           + (pp - 1) * (a_ar + n * h * 2 B / (B_link/2 * e_link))             PP hand-offs

with W the weight bytes per GPU (split by TP and PP), F the dense tensor peak of the compute precision (FP8 for
fp8, BF16 for bf16/fp16 and for 4-bit weight-only schemes), B_hbm the HBM bandwidth, B_link the datasheet
(bidirectional) interconnect figure, and the e_* efficiency factors of `hardware.py`. With PP, a token passes all
stages in turn, so this is also its per-token time; each stage does 1/pp of the work while pp microbatches are in
flight, which is where PP's extra throughput comes from (see `serving.py`).

KV-cache memory follows vLLM: of `gpu_memory_utilization` x memory, what the weights, a fixed runtime reserve and
the activation peak of a `max_num_batched_tokens` profiling step leave. KV heads are split across TP up to the
number of KV heads (replicated beyond); MLA latents are replicated on every TP rank.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from cascadia_sky.catalog import GpuSpec
from cascadia_sky.constants import (
    VLLM_GPU_MEMORY_UTILIZATION,
    VLLM_LARGE_GPU_MIN_GIB,
    VLLM_MAX_BATCHED_TOKENS_LARGE_GPU,
    VLLM_MAX_BATCHED_TOKENS_SMALL_GPU,
    VLLM_MAX_NUM_SEQS_LARGE_GPU,
    VLLM_MAX_NUM_SEQS_SMALL_GPU,
    VLLM_RUNTIME_RESERVE_GIB,
)
from cascadia_sky.errors import PerfError
from cascadia_sky.models import ModelArch, normalize_precision
from cascadia_sky.perf.hardware import GpuEfficiency, efficiency, memory_bytes

GIB = float(1 << 30)
_ACT_BYTES = 2.0          # activations travel in bf16


@dataclass(frozen=True)
class Deployment:
    """One replica: a model served at a precision on TP x PP GPUs of one type."""

    model: ModelArch
    gpu: GpuSpec
    tp: int = 1
    pp: int = 1
    precision: str = "bf16"
    kv_precision: str = "bf16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", normalize_precision(self.precision, self.model))
        if self.tp < 1 or self.pp < 1:
            raise PerfError(f"tp and pp must be >= 1 (got tp={self.tp}, pp={self.pp})")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    def invalid_reason(self) -> str:
        """Why vLLM cannot run this layout ('' when it can)."""
        m = self.model
        if m.num_attention_heads % self.tp:
            return f"TP {self.tp} does not divide the {m.num_attention_heads} attention heads of {m.name}"
        if self.pp > m.num_layers:
            return f"PP {self.pp} exceeds the {m.num_layers} layers of {m.name}"
        if self.tp > self.gpu.gpus_per_node:
            return f"TP {self.tp} exceeds the {self.gpu.gpus_per_node} GPUs of one {self.gpu.name} node"
        return ""


@dataclass(frozen=True)
class MemoryFit:
    """Whether a deployment fits its GPUs, and the KV-cache room it leaves."""

    fits: bool
    weights_gb_per_gpu: float
    kv_gb_per_gpu: float
    kv_capacity_tokens: int          # tokens of context the replica can cache (full-attention equivalent)
    reason: str = ""


@dataclass(frozen=True)
class StepModel:
    """Per-deployment coefficients of the step-time equation (computed once; see the module docstring)."""

    dep: Deployment
    eff: GpuEfficiency
    fixed_s: float
    dense_mem_s: float               # streaming dense weights once
    dense_flop_s: float              # dense linear math per token
    expert_mem_s: float              # streaming one expert in every MoE layer
    expert_flop_s: float             # routed-expert math per token (k experts)
    num_experts: int
    experts_per_token: int
    head_mem_s: float
    head_flop_s: float               # per sampled token
    kv_full_s: float                 # reading one cached token of a full-attention context, all layers
    kv_window_s: float               # ... of the sliding-window layers
    window: int
    attn_flop_s: float               # per (token, context token) pair
    comm_fixed_s: float
    comm_per_token_s: float
    kv_bytes_full: float             # KV bytes per token per GPU, full-attention layers
    kv_bytes_window: float           # ... sliding-window layers
    kv_avail_bytes: float            # KV-cache bytes per GPU
    weights_per_gpu: float
    budget_tokens: int               # max_num_batched_tokens
    max_seqs: int
    invalid: str = field(default="")

    def step_time(self, n_dec: np.ndarray | float, n_pf: np.ndarray | float, c_dec: np.ndarray | float,
                  c_pf: np.ndarray | float, n_out: np.ndarray | float | None = None) -> np.ndarray | float:
        """Seconds for one pass of a microbatch through all stages (vectorised over numpy arguments)."""
        n = n_dec + n_pf
        out = n_dec if n_out is None else n_out
        t = self.fixed_s + np.maximum(self.dense_mem_s, self.dense_flop_s * n)
        if self.num_experts:
            e, k = self.num_experts, self.experts_per_token
            touched = e * (1.0 - np.power(1.0 - k / e, n))
            t = t + np.maximum(self.expert_mem_s * touched, self.expert_flop_s * n)
        t = t + np.maximum(self.head_mem_s * (out > 0), self.head_flop_s * out)
        kv_read = n_dec * (self.kv_full_s * c_dec + self.kv_window_s * np.minimum(c_dec, self.window))
        t = t + np.maximum(kv_read, self.attn_flop_s * (n_dec * c_dec + n_pf * c_pf))
        return t + self.comm_fixed_s + self.comm_per_token_s * n

    def request_kv_bytes(self, tokens: np.ndarray | float) -> np.ndarray | float:
        """KV bytes per GPU that one request of `tokens` tokens holds."""
        return self.kv_bytes_full * tokens + self.kv_bytes_window * np.minimum(tokens, self.window)


def _budgets(gpu: GpuSpec) -> tuple[int, int]:
    """vLLM's online-serving defaults: larger token budget and sequence cap on >= 70 GiB GPUs (not A100)."""
    if memory_bytes(gpu) >= VLLM_LARGE_GPU_MIN_GIB * GIB and not gpu.name.upper().startswith("A100"):
        return VLLM_MAX_BATCHED_TOKENS_LARGE_GPU, VLLM_MAX_NUM_SEQS_LARGE_GPU
    return VLLM_MAX_BATCHED_TOKENS_SMALL_GPU, VLLM_MAX_NUM_SEQS_SMALL_GPU


def _compute_peak(gpu: GpuSpec, precision: str, eff: GpuEfficiency) -> float:
    """Achieved FLOP/s of the linear layers at a weight precision."""
    if precision == "fp8" and gpu.fp8_tflops:
        return gpu.fp8_tflops * 1e12 * eff.fp8_compute
    if precision in ("int4-awq", "int4", "mxfp4", "nvfp4"):
        return gpu.bf16_tflops * 1e12 * eff.w4_compute
    return gpu.bf16_tflops * 1e12 * eff.compute


@functools.lru_cache(maxsize=4096)
def step_model(dep: Deployment) -> StepModel:
    """The step-time coefficients of a deployment (cached: the planner asks for the same ones many times)."""
    m, gpu, tp, pp = dep.model, dep.gpu, dep.tp, dep.pp
    eff = efficiency(gpu)
    wb = m.weight_breakdown(dep.precision)
    hbm = gpu.hbm_tb_s * 1e12
    link = gpu.interconnect_gb_s * 1e9 / 2 * eff.link          # one direction
    flops = _compute_peak(gpu, dep.precision, eff)
    flops16 = gpu.bf16_tflops * 1e12 * eff.compute
    attn_flops = gpu.bf16_tflops * 1e12 * eff.attn_compute
    head_params = float(m.vocab_size * m.hidden_size)
    dense_active = m.params_active() - head_params * (1 if m.tie_word_embeddings else 2) \
        - m.moe_layers * m.experts_per_token * m.expert_params()
    kv_shards = 1 if m.uses_mla else min(tp, m.num_kv_heads)
    kv_elem_bytes = 1.0 if dep.kv_precision.lower() == "fp8" else 2.0
    per_layer_kv = m.kv_elems_per_token_layer() * kv_elem_bytes / kv_shards
    full_layers = m.num_layers - m.sliding_layers
    kv_full = per_layer_kv * full_layers / pp
    kv_window = per_layer_kv * m.sliding_layers / pp
    # memory: the fullest stage holds its share of the body plus the embedding or the LM head
    head_bytes = 0.0 if wb.tied else wb.lm_head_bytes
    body = wb.total_bytes - wb.embed_bytes - head_bytes
    ends = wb.embed_bytes + head_bytes if pp == 1 else max(wb.embed_bytes, head_bytes)
    weights_gpu = body / (tp * pp) + ends / tp
    budget, seqs = _budgets(gpu)
    inter = max(m.intermediate_size if m.moe_layers < m.num_layers else 0,
                m.moe_intermediate_size * m.experts_per_token)
    activation = budget * _ACT_BYTES * (4 * m.hidden_size + 3 * inter / tp) + 2 * seqs * m.vocab_size * 4 / tp
    avail = memory_bytes(gpu) * VLLM_GPU_MEMORY_UTILIZATION - weights_gpu - VLLM_RUNTIME_RESERVE_GIB * GIB \
        - activation
    ar = 2 * m.num_layers if tp > 1 else 0
    ar_bytes = _ACT_BYTES * m.hidden_size * (2 * (tp - 1) / tp if tp > 1 else 0.0)
    return StepModel(
        dep=dep, eff=eff,
        fixed_s=eff.step_ms * 1e-3 + m.num_layers * eff.layer_us * 1e-6,
        dense_mem_s=wb.dense_bytes / tp / (hbm * eff.hbm),
        dense_flop_s=2.0 * dense_active / tp / flops,
        expert_mem_s=wb.expert_bytes * wb.moe_layers / tp / (hbm * eff.moe_hbm),
        expert_flop_s=2.0 * m.expert_params() * m.experts_per_token * m.moe_layers / tp / (flops * eff.moe_compute),
        num_experts=m.num_experts, experts_per_token=m.experts_per_token,
        head_mem_s=wb.lm_head_bytes / tp / (hbm * eff.hbm),
        head_flop_s=2.0 * head_params / tp / flops16,
        kv_full_s=kv_full * pp / (hbm * eff.attn_hbm),
        kv_window_s=kv_window * pp / (hbm * eff.attn_hbm),
        window=m.sliding_window or 1 << 30,
        attn_flop_s=m.attention_flops_per_token_ctx() / tp / attn_flops,
        comm_fixed_s=(ar + (pp - 1)) * eff.allreduce_us * 1e-6,
        comm_per_token_s=(ar * ar_bytes + (pp - 1) * _ACT_BYTES * m.hidden_size) / link,
        kv_bytes_full=kv_full, kv_bytes_window=kv_window,
        kv_avail_bytes=avail, weights_per_gpu=weights_gpu, budget_tokens=budget, max_seqs=seqs,
        invalid=dep.invalid_reason(),
    )


def memory_fit(dep: Deployment, max_context: int) -> MemoryFit:
    """Do the weights fit, and does the KV cache hold at least one request of `max_context` tokens?"""
    sm = step_model(dep)
    per_token = sm.kv_bytes_full + sm.kv_bytes_window
    capacity = int(max(sm.kv_avail_bytes, 0.0) / per_token) if per_token else 0
    weights_gb, kv_gb = sm.weights_per_gpu / 1e9, max(sm.kv_avail_bytes, 0.0) / 1e9
    if sm.invalid:
        return MemoryFit(False, weights_gb, kv_gb, capacity, sm.invalid)
    if sm.kv_avail_bytes <= 0:
        need = (sm.weights_per_gpu - sm.kv_avail_bytes) / 1e9
        return MemoryFit(False, weights_gb, 0.0, 0,
                         f"weights need {weights_gb:.1f} GB per GPU and leave no KV cache within "
                         f"{VLLM_GPU_MEMORY_UTILIZATION:.0%} of {dep.gpu.memory_gb:g} GB (about {need:.1f} GB "
                         f"needed); use more GPUs or a lower precision")
    if sm.request_kv_bytes(max_context) > sm.kv_avail_bytes:
        return MemoryFit(False, weights_gb, kv_gb, capacity,
                         f"the KV cache holds {capacity} tokens per replica, less than one {max_context}-token "
                         f"context; use more GPUs, a lower precision or a shorter max_context")
    return MemoryFit(True, weights_gb, kv_gb, capacity)


def max_running(sm: StepModel, footprint_tokens: float) -> float:
    """How many requests of the given mean KV footprint run at once: KV room and vLLM's sequence cap."""
    per_request = float(sm.request_kv_bytes(max(footprint_tokens, 1.0)))
    return max(0.0, min(float(sm.max_seqs), sm.kv_avail_bytes / per_request if per_request else math.inf))
