"""Model architectures: the shapes the performance model needs (layers, widths, heads, experts, MLA ranks).

A model is named by its Hugging Face id (case-insensitive, with or without the organisation, `-Instruct` optional),
by a short alias (`llama-3.1-8b`, `deepseek-v3`), or by the path of a local HF `config.json` (or its folder).

The built-in table holds the published `config.json` values of each repository (the fields below, in HF spelling,
so the same parser reads the table and a user's file). Sources: the Hugging Face model repositories' config.json
(meta-llama, deepseek-ai, Qwen, HuggingFaceTB, google, MiniMaxAI, openai, moonshotai), cross-checked against the
parameter counts their model cards publish (Llama-3.1-8B 8.03 B, DeepSeek-V3 671 B / 37 B active, Qwen3-235B-A22B
235 B / 22 B, MiniMax-M2 230 B / 10 B, gpt-oss-120b 116.8 B, Kimi-K2 1.04 T / 32 B); tests pin these numbers.

Weight precisions (`PRECISIONS`) and what each stores, in bytes per parameter (scales included; embeddings, norms
and routers always stay bf16):

    bf16, fp16   2 everywhere
    fp8          1 (+ a 4-byte scale per 128x128 block) for every linear layer
    int4-awq     0.5 + (2-byte scale + 4-bit zero) per 128-group, every linear layer
    int4         0.5 + 2-byte scale per 32-group; MoE models quantise only the routed experts (Kimi-K2's native
                 W4A16 checkpoint), dense models every linear layer
    mxfp4        0.5 + 1-byte E8M0 scale per 32-group; MoE: routed experts only (gpt-oss's checkpoint)
    nvfp4        0.5 + 1-byte FP8 scale per 16-group, every linear layer
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascadia_sky.errors import ModelError

PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp8", "int4-awq", "int4", "mxfp4", "nvfp4")
KV_PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp8")

# bytes per parameter: (routed experts, other linear layers) for MoE models; dense models use the second figure
# for every linear layer unless the scheme quantises all linear layers (then both figures match).
_LINEAR_BYTES: dict[str, tuple[float, float]] = {
    "bf16": (2.0, 2.0),
    "fp16": (2.0, 2.0),
    "fp8": (1.0 + 4 / (128 * 128), 1.0 + 4 / (128 * 128)),
    "int4-awq": (0.5 + 2.5 / 128, 0.5 + 2.5 / 128),
    "int4": (0.5 + 2.0 / 32, 2.0),
    "mxfp4": (0.5 + 1.0 / 32, 2.0),
    "nvfp4": (0.5 + 1.0 / 16, 0.5 + 1.0 / 16),
}
_EXPERT_ONLY = {"int4", "mxfp4"}   # on a MoE model these schemes leave non-expert layers in bf16
_PRECISION_ALIASES = {
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float8": "fp8", "fp8_e4m3": "fp8", "w8a8": "fp8",
    "awq": "int4-awq", "int4_awq": "int4-awq", "w4a16": "int4", "int4_wo": "int4", "int4-wo": "int4",
    "mxfp4": "mxfp4", "nvfp4": "nvfp4", "auto": "bf16", "": "bf16",
}
_KV_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "auto": 2.0}


def normalize_precision(precision: str, arch: ModelArch | None = None) -> str:
    """A precision name from a user or a data file as one of PRECISIONS.

    `fp4` is ambiguous: with a model whose checkpoint is 4-bit it means that checkpoint (mxfp4 for gpt-oss),
    otherwise nvfp4. An empty name means the model's native checkpoint precision.
    """
    p = precision.strip().lower()
    if p == "" and arch is not None:
        return arch.native_precision
    if p == "fp4":
        return arch.native_precision if arch is not None and arch.native_precision in ("mxfp4", "nvfp4") \
            else "nvfp4"
    if p == "int4" and arch is not None and arch.native_precision == "int4-awq":
        return "int4-awq"
    p = _PRECISION_ALIASES.get(p, p)
    if p not in PRECISIONS:
        raise ModelError(f"unknown precision '{precision}'; use one of: {', '.join(PRECISIONS)}")
    return p


@dataclass(frozen=True)
class ModelArch:
    """One decoder-only transformer (dense or MoE, GQA or MLA attention), as its config.json describes it."""

    name: str                          # Hugging Face id
    family: str                        # config.json model_type
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int             # dense MLP width (dense layers of a MoE model too)
    vocab_size: int
    max_context: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    native_precision: str = "bf16"     # precision of the published checkpoint
    # mixture of experts (num_experts == 0: dense)
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0   # all shared experts together
    first_dense_layers: int = 0        # leading layers with a dense MLP (DeepSeek first_k_dense_replace)
    expert_bias: bool = False          # gpt-oss experts carry biases
    # multi-head latent attention (kv_lora_rank == 0: plain GQA/MHA)
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # sliding-window attention: `sliding_layers` of the layers only keep the last `sliding_window` tokens
    sliding_window: int = 0
    sliding_layers: int = 0
    aliases: tuple[str, ...] = field(default=(), compare=False)
    notes: str = field(default="", compare=False)

    # --- shape ---------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    def attention_params_per_layer(self) -> float:
        """Attention projection weights (and biases, norms) of one layer."""
        h, nh = self.hidden_size, self.num_attention_heads
        if self.uses_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * nh * qk) if self.q_lora_rank \
                else h * nh * qk
            kv = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank \
                + self.kv_lora_rank * nh * (self.qk_nope_head_dim + self.v_head_dim)
            return float(q + kv + nh * self.v_head_dim * h)
        q_out, kv_out = nh * self.head_dim, self.num_kv_heads * self.head_dim
        p = h * q_out + 2 * h * kv_out + q_out * h
        if self.qkv_bias:
            p += q_out + 2 * kv_out
        if self.o_bias:
            p += h + nh           # output bias; gpt-oss also learns one attention sink per head
        if self.qk_norm:
            p += 2 * self.head_dim
        return float(p)

    def expert_params(self) -> float:
        """One routed expert of one layer (gated MLP: gate, up, down)."""
        p = 3 * self.hidden_size * self.moe_intermediate_size
        if self.expert_bias:
            p += 2 * self.moe_intermediate_size + self.hidden_size
        return float(p)

    def _dense_mlp_params(self) -> float:
        return 3.0 * self.hidden_size * self.intermediate_size

    def _moe_fixed_params_per_layer(self) -> float:
        """The parts of a MoE layer every token uses: router (+ bias) and shared experts."""
        router = self.hidden_size * self.num_experts + self.num_experts
        return float(router + 3 * self.hidden_size * self.shared_expert_intermediate_size)

    def _embedding_params(self) -> tuple[float, float]:
        emb = float(self.vocab_size * self.hidden_size)
        return emb, (0.0 if self.tie_word_embeddings else emb)

    def _norm_params(self) -> float:
        return float(self.num_layers * 2 * self.hidden_size + self.hidden_size)

    def params_total(self) -> float:
        """All parameters of the language model (vision towers and MTP heads excluded)."""
        return self.params_active() + self.moe_layers * (self.num_experts - self.experts_per_token) \
            * self.expert_params()

    def params_active(self) -> float:
        """Parameters one token touches: everything but the routed experts it is not sent to."""
        emb, head = self._embedding_params()
        dense_layers = self.num_layers - self.moe_layers
        p = self.num_layers * self.attention_params_per_layer() + dense_layers * self._dense_mlp_params()
        p += self.moe_layers * (self._moe_fixed_params_per_layer() + self.experts_per_token * self.expert_params())
        return p + emb + head + self._norm_params()

    # --- bytes ---------------------------------------------------------------------------------
    def weight_breakdown(self, precision: str) -> WeightBreakdown:
        """Bytes of each kind of weight at `precision`: what the step-time model reads per step."""
        p = normalize_precision(precision, self)
        expert_b, other_b = _LINEAR_BYTES[p]
        if not self.is_moe and p in _EXPERT_ONLY:
            other_b = expert_b
        emb, head = self._embedding_params()
        dense_layers = self.num_layers - self.moe_layers
        linear = self.num_layers * self.attention_params_per_layer() + dense_layers * self._dense_mlp_params() \
            + self.moe_layers * 3.0 * self.hidden_size * self.shared_expert_intermediate_size
        small = self._norm_params() + self.moe_layers * (self.hidden_size + 1) * self.num_experts
        return WeightBreakdown(
            dense_bytes=linear * other_b + small * 2.0,
            expert_bytes=self.expert_params() * expert_b,
            moe_layers=self.moe_layers,
            num_experts=self.num_experts,
            embed_bytes=emb * 2.0,
            lm_head_bytes=(head if head else emb) * 2.0,
            tied=self.tie_word_embeddings,
        )

    def weight_bytes(self, precision: str) -> float:
        """Bytes of all weights at `precision` (what must sit in GPU memory)."""
        return self.weight_breakdown(precision).total_bytes

    def kv_bytes_per_token(self, kv_precision: str = "bf16", context_tokens: int | None = None) -> float:
        """KV-cache bytes one token adds, over all layers.

        MLA caches one compressed latent (kv_lora_rank + rope dims) per layer instead of K and V per head.
        With sliding-window layers the figure depends on the sequence: pass `context_tokens` for the average over
        a sequence of that length (window layers hold at most `sliding_window` tokens); without it every layer is
        counted as full attention (the upper bound).
        """
        key = kv_precision.strip().lower()
        if key not in _KV_BYTES:
            raise ModelError(f"unknown KV-cache precision '{kv_precision}'; use one of: {', '.join(KV_PRECISIONS)}")
        per_layer = self.kv_elems_per_token_layer() * _KV_BYTES[key]
        full = self.num_layers - self.sliding_layers
        if context_tokens is None or not self.sliding_layers:
            return per_layer * self.num_layers
        share = min(1.0, self.sliding_window / max(1, context_tokens))
        return per_layer * (full + self.sliding_layers * share)

    def kv_elems_per_token_layer(self) -> float:
        """Cached elements per token per layer: 2 x KV heads x head_dim, or the MLA latent."""
        if self.uses_mla:
            return float(self.kv_lora_rank + self.qk_rope_head_dim)
        return float(2 * self.num_kv_heads * self.head_dim)

    def attention_flops_per_token_ctx(self) -> float:
        """FLOPs of score and value products per (token, context token) pair over all layers."""
        if self.uses_mla:  # absorbed MLA for decode: scores over latent+rope, values over the latent
            d = self.kv_lora_rank * 2 + self.qk_rope_head_dim
        else:
            d = 2 * self.head_dim
        return 2.0 * self.num_attention_heads * d * self.num_layers


@dataclass(frozen=True)
class WeightBreakdown:
    """Weight bytes split by how a step reads them."""

    dense_bytes: float      # attention, dense MLPs, shared experts, routers, norms: read by every step
    expert_bytes: float     # one routed expert of one layer
    moe_layers: int
    num_experts: int
    embed_bytes: float      # input embedding table (a lookup: hardly read per step)
    lm_head_bytes: float    # output projection (read once per step that samples)
    tied: bool

    @property
    def total_bytes(self) -> float:
        head = 0.0 if self.tied else self.lm_head_bytes
        return self.dense_bytes + self.expert_bytes * self.num_experts * self.moe_layers + self.embed_bytes + head


# --- the built-in table ----------------------------------------------------------------------------
# Values as in each repository's config.json (HF field names). Aliases after the id.

def _llama(layers: int, hidden: int, heads: int, inter: int, ctx: int = 131072, kv: int = 8, head_dim: int = 0,
           tied: bool = False) -> dict[str, Any]:
    return {"model_type": "llama", "num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": 128256,
            "max_position_embeddings": ctx, "tie_word_embeddings": tied, **({"head_dim": head_dim} if head_dim else {})}


def _qwen2(layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int = 152064, ctx: int = 131072,
           tied: bool = False) -> dict[str, Any]:
    return {"model_type": "qwen2", "num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": vocab,
            "max_position_embeddings": ctx, "tie_word_embeddings": tied}


def _smollm(layers: int, hidden: int, heads: int, kv: int, inter: int) -> dict[str, Any]:
    return {"model_type": "llama", "num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": 49152,
            "max_position_embeddings": 8192, "tie_word_embeddings": True}


def _deepseek_v3(native: str = "fp8", **over: Any) -> dict[str, Any]:
    cfg = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "hidden_size": 7168, "num_attention_heads": 128,
           "num_key_value_heads": 128, "intermediate_size": 18432, "moe_intermediate_size": 2048,
           "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
           "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
           "v_head_dim": 128, "vocab_size": 129280, "max_position_embeddings": 163840,
           "tie_word_embeddings": False, "_native": native}
    cfg.update(over)
    return cfg


_LLAMA_8B = _llama(32, 4096, 32, 14336)
_LLAMA_70B = _llama(80, 8192, 64, 28672)

_BUILTIN: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "meta-llama/Llama-3.1-8B": (_LLAMA_8B, ("llama-3.1-8b", "llama3-8b", "llama-3-8b")),
    "meta-llama/Llama-3.1-70B": (_LLAMA_70B, ("llama-3.1-70b", "llama3-70b", "llama-3-70b", "llama-3.3-70b")),
    "meta-llama/Llama-3.1-405B": (_llama(126, 16384, 128, 53248), ("llama-3.1-405b", "llama3-405b")),
    "meta-llama/Llama-3.2-1B": (_llama(16, 2048, 32, 8192, head_dim=64, tied=True), ("llama-3.2-1b",)),
    "meta-llama/Llama-3.2-3B": (_llama(28, 3072, 24, 8192, tied=True), ("llama-3.2-3b",)),
    "nvidia/Llama-3.1-8B-Instruct-FP8": ({**_LLAMA_8B, "_native": "fp8"}, ("llama-3.1-8b-fp8",)),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": (_qwen2(28, 3584, 28, 4, 18944), ("r1-distill-qwen-7b",)),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": (_qwen2(48, 5120, 40, 8, 13824), ("r1-distill-qwen-14b",)),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": (_qwen2(64, 5120, 40, 8, 27648), ("r1-distill-qwen-32b",)),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": (_LLAMA_8B, ("r1-distill-llama-8b",)),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": (_LLAMA_70B, ("r1-distill-llama-70b",)),
    "deepseek-ai/DeepSeek-V3": (_deepseek_v3(), ("deepseek-v3", "deepseek-671b")),
    "deepseek-ai/DeepSeek-R1": (_deepseek_v3(), ("deepseek-r1",)),
    "Qwen/Qwen2.5-0.5B": (_qwen2(24, 896, 14, 2, 4864, vocab=151936, ctx=32768, tied=True), ("qwen2.5-0.5b",)),
    "Qwen/Qwen2.5-7B": (_qwen2(28, 3584, 28, 4, 18944, ctx=32768), ("qwen2.5-7b",)),
    "Qwen/Qwen2.5-72B": (_qwen2(80, 8192, 64, 8, 29568, ctx=32768), ("qwen2.5-72b",)),
    "Qwen/Qwen3-32B": ({"model_type": "qwen3", "num_hidden_layers": 64, "hidden_size": 5120,
                        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
                        "intermediate_size": 25600, "vocab_size": 151936, "max_position_embeddings": 40960,
                        "tie_word_embeddings": False}, ("qwen3-32b",)),
    "Qwen/Qwen3-235B-A22B": ({"model_type": "qwen3_moe", "num_hidden_layers": 94, "hidden_size": 4096,
                              "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 128,
                              "intermediate_size": 12288, "moe_intermediate_size": 1536, "num_experts": 128,
                              "num_experts_per_tok": 8, "vocab_size": 151936, "max_position_embeddings": 40960,
                              "tie_word_embeddings": False}, ("qwen3-235b-a22b", "qwen3-235b")),
    "HuggingFaceTB/SmolLM2-135M": (_smollm(30, 576, 9, 3, 1536), ("smollm2-135m",)),
    "HuggingFaceTB/SmolLM2-360M": (_smollm(32, 960, 15, 5, 2560), ("smollm2-360m",)),
    "HuggingFaceTB/SmolLM2-1.7B": (_smollm(24, 2048, 32, 32, 8192), ("smollm2-1.7b",)),
    "google/gemma-3-270m": ({"model_type": "gemma3_text", "num_hidden_layers": 18, "hidden_size": 640,
                             "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                             "intermediate_size": 2048, "vocab_size": 262144, "max_position_embeddings": 32768,
                             "sliding_window": 512, "sliding_window_pattern": 6, "tie_word_embeddings": True},
                            ("gemma-3-270m",)),
    "MiniMaxAI/MiniMax-M2.5": ({"model_type": "minimax_m2", "num_hidden_layers": 62, "hidden_size": 3072,
                                "num_attention_heads": 48, "num_key_value_heads": 8, "head_dim": 128,
                                "intermediate_size": 1536, "num_local_experts": 256, "num_experts_per_tok": 8,
                                "vocab_size": 200064, "max_position_embeddings": 196608, "use_qk_norm": True,
                                "tie_word_embeddings": False, "_native": "fp8"}, ("minimax-m2.5", "minimax-m2")),
    "openai/gpt-oss-120b": ({"model_type": "gpt_oss", "num_hidden_layers": 36, "hidden_size": 2880,
                             "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
                             "intermediate_size": 2880, "num_local_experts": 128, "num_experts_per_tok": 4,
                             "vocab_size": 201088, "max_position_embeddings": 131072, "sliding_window": 128,
                             "layer_types": ["sliding_attention", "full_attention"] * 18, "attention_bias": True,
                             "tie_word_embeddings": False, "_native": "mxfp4"}, ("gpt-oss-120b",)),
    "moonshotai/Kimi-K2.5": (_deepseek_v3("int4", model_type="kimi_k2", num_attention_heads=64,
                                          num_key_value_heads=64, n_routed_experts=384, first_k_dense_replace=1,
                                          vocab_size=163840, max_position_embeddings=262144),
                             ("kimi-k2.5",)),
}
_BUILTIN["Qwen/Qwen3-235B-A22B-FP8"] = ({**_BUILTIN["Qwen/Qwen3-235B-A22B"][0], "_native": "fp8"},
                                        ("qwen3-235b-a22b-fp8",))
_NOTES = {
    "moonshotai/Kimi-K2.5": "language model only; the MoonViT vision tower (~0.4 B) is not counted",
    "openai/gpt-oss-120b": "alternating 128-token sliding-window and full attention layers; attention sinks",
    "google/gemma-3-270m": "5 of every 6 layers use a 512-token sliding window",
    "MiniMaxAI/MiniMax-M2.5": "MTP modules not counted (vLLM serves without them by default)",
}


# --- parsing -------------------------------------------------------------------------------------

def _need(cfg: dict[str, Any], where: str, *keys: str) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    raise ModelError(f"{where}: missing field '{keys[0]}'; a decoder-only HF config.json needs it")


def _native_precision(cfg: dict[str, Any]) -> str:
    if "_native" in cfg:
        return str(cfg["_native"])
    q = cfg.get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8" or "fp8" in method:
        return "fp8"
    if method == "mxfp4":
        return "mxfp4"
    if method == "awq":
        return "int4-awq"
    if method in ("gptq", "compressed-tensors"):
        bits = q.get("bits") or q.get("num_bits")
        groups = q.get("config_groups") or {}
        for g in groups.values() if isinstance(groups, dict) else []:
            w = (g or {}).get("weights") or {}
            bits = bits or w.get("num_bits")
            if w.get("type") == "float" and w.get("num_bits") == 8:
                return "fp8"
        return "int4" if bits == 4 else "fp8" if bits == 8 else "bf16"
    dtype = str(cfg.get("torch_dtype", cfg.get("dtype", "bfloat16"))).lower()
    return "fp16" if dtype in ("float16", "fp16", "half") else "bf16"


def arch_from_config(cfg: dict[str, Any], name: str, where: str = "config.json",
                     aliases: tuple[str, ...] = ()) -> ModelArch:
    """A ModelArch from a Hugging Face config.json dictionary (multimodal configs: their text_config)."""
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    family = str(cfg.get("model_type", "unknown"))
    layers = int(_need(cfg, where, "num_hidden_layers", "n_layer", "num_layers"))
    hidden = int(_need(cfg, where, "hidden_size", "n_embd", "d_model"))
    heads = int(_need(cfg, where, "num_attention_heads", "n_head"))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    inter = int(_need(cfg, where, "intermediate_size", "ffn_dim", "n_inner"))
    moe_inter = int(cfg.get("moe_intermediate_size") or (inter if experts else 0))
    shared = int(cfg.get("shared_expert_intermediate_size") or 0) \
        or int(cfg.get("n_shared_experts") or 0) * moe_inter
    first_dense = int(cfg.get("first_k_dense_replace") or 0) if experts else 0
    layer_types = cfg.get("layer_types") or []
    window = int(cfg.get("sliding_window") or 0)
    if layer_types:
        sliding = sum(1 for t in layer_types if "sliding" in str(t))
    elif window and family.startswith("gemma3"):
        pattern = int(cfg.get("sliding_window_pattern") or 6)
        sliding = layers - layers // pattern
    elif window and cfg.get("use_sliding_window"):
        sliding = layers - int(cfg.get("max_window_layers") or 0)
    else:
        sliding = 0
    tied_default = family.startswith("gemma")
    return ModelArch(
        name=name, family=family, num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=inter,
        vocab_size=int(_need(cfg, where, "vocab_size")),
        max_context=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 4096),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", tied_default)),
        qkv_bias=bool(cfg.get("attention_bias") or cfg.get("qkv_bias") or family == "qwen2"),
        o_bias=bool(cfg.get("attention_bias")) and family == "gpt_oss",
        qk_norm=family in ("qwen3", "qwen3_moe", "gemma3_text", "gemma3") or bool(cfg.get("use_qk_norm")),
        native_precision=_native_precision(cfg),
        num_experts=experts, experts_per_token=int(cfg.get("num_experts_per_tok") or cfg.get("experts_per_token")
                                                   or (2 if experts else 0)),
        moe_intermediate_size=moe_inter, shared_expert_intermediate_size=shared, first_dense_layers=first_dense,
        expert_bias=family == "gpt_oss",
        kv_lora_rank=int(cfg.get("kv_lora_rank") or 0), q_lora_rank=int(cfg.get("q_lora_rank") or 0),
        qk_nope_head_dim=int(cfg.get("qk_nope_head_dim") or 0), qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0),
        v_head_dim=int(cfg.get("v_head_dim") or 0),
        sliding_window=window if sliding else 0, sliding_layers=sliding,
        aliases=aliases, notes=_NOTES.get(name, ""),
    )


def load_config_json(path: str | Path) -> ModelArch:
    """Read a local HF config.json (or the folder holding one); the model is named after its folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{p}: file not found; pass a Hugging Face config.json or a known model id") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{p}: not a readable JSON file ({exc}); download the model's config.json again") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{p}: expected a JSON object; pass a Hugging Face config.json")
    return arch_from_config(cfg, name=p.parent.name or p.stem, where=str(p))


# --- lookup --------------------------------------------------------------------------------------

def _norm(name: str) -> str:
    return name.strip().lower()


def _index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for hf_id, (_, aliases) in _BUILTIN.items():
        idx[_norm(hf_id)] = hf_id
        idx.setdefault(_norm(hf_id.split("/", 1)[1]), hf_id)
        for a in aliases:
            idx.setdefault(_norm(a), hf_id)
    return idx


_INDEX = _index()
_CACHE: dict[str, ModelArch] = {}
_VARIANT_SUFFIXES = ("-instruct", "-chat", "-it", "-base", "-0324", "-0528", "-2503")
# quantised re-uploads of a known model: the same shapes, another checkpoint precision
_QUANT_SUFFIXES = {"-awq-int4": "int4-awq", "-fp8-dynamic": "fp8", "-fp8": "fp8", "-awq": "int4-awq", "-gptq-int4": "int4", "-int4": "int4",
                   "-w4a16": "int4", "-nvfp4": "nvfp4", "-mxfp4": "mxfp4"}


def _resolve(name: str) -> tuple[str, str | None] | None:
    """(built-in id, checkpoint precision of a quantised variant or None), or None when unknown."""
    key = _norm(name)
    if key in _INDEX:
        return _INDEX[key], None
    short = key.split("/", 1)[-1]
    quant = None
    for suffix, precision in _QUANT_SUFFIXES.items():
        if short.endswith(suffix):
            short, quant = short.removesuffix(suffix), precision
            break
    for base in (short, short.removeprefix("meta-")):
        for cand in (base, *(base.removesuffix(s) for s in _VARIANT_SUFFIXES if base.endswith(s))):
            if cand in _INDEX:
                return _INDEX[cand], quant
    return None


_SIZE = re.compile(r"(\d+(?:\.\d+)?)([bm])\b")


def _size_b(text: str) -> float | None:
    m = _SIZE.search(text)
    return None if m is None else float(m.group(1)) / (1000.0 if m.group(2) == "m" else 1.0)


def _did_you_mean(query: str) -> str | None:
    """The closest known name; among similar names, the one whose size (7b, 70b) is nearest the query's."""
    close = difflib.get_close_matches(query, list(_INDEX), n=6, cutoff=0.5)
    if not close:
        return None
    want = _size_b(query)
    if want is not None:
        sized = [c for c in close if _size_b(c) is not None]
        if sized:
            close = sorted(sized, key=lambda c: abs(math.log(_size_b(c) / want)))  # type: ignore[operator]
    return _INDEX[close[0]]


def get_model(name_or_path: str) -> ModelArch:
    """The architecture of a built-in model (HF id or alias, case-insensitive) or of a local config.json."""
    if name_or_path.endswith(".json") or Path(name_or_path).expanduser().is_dir() \
            and (Path(name_or_path).expanduser() / "config.json").is_file():
        return load_config_json(name_or_path)
    found = _resolve(name_or_path)
    if found is None:
        close = _did_you_mean(_norm(name_or_path).split("/", 1)[-1])
        hint = f"did you mean '{close}'?" if close else f"known: {', '.join(known_models())}"
        raise ModelError(f"unknown model '{name_or_path}' ({hint}); or pass the path of a local HF config.json")
    hf_id, quant = found
    if hf_id not in _CACHE:
        cfg, aliases = _BUILTIN[hf_id]
        _CACHE[hf_id] = arch_from_config(cfg, name=hf_id, where=f"built-in table ({hf_id})", aliases=aliases)
    arch = _CACHE[hf_id]
    if quant is not None:
        arch = dataclasses.replace(arch, name=name_or_path.strip(), native_precision=quant, aliases=())
    return arch


def known_models() -> list[str]:
    """The Hugging Face ids of the built-in table."""
    return sorted(_BUILTIN, key=str.lower)


def expected_experts_touched(num_experts: int, experts_per_token: int, tokens: float) -> float:
    """Distinct experts a batch of `tokens` tokens activates in one layer, with uniform routing."""
    if num_experts <= 0 or tokens <= 0:
        return 0.0
    return num_experts * (1.0 - math.pow(1.0 - experts_per_token / num_experts, tokens))
