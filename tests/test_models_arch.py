"""Model architectures: parameter counts, weight and KV bytes, lookup, config.json loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascadia_sky.errors import ModelError
from cascadia_sky.models import (
    PRECISIONS,
    expected_experts_touched,
    get_model,
    known_models,
    load_config_json,
    normalize_precision,
)

# (model, published total params, published active params or None); tolerance 1.5 %
PUBLISHED = [
    ("meta-llama/Llama-3.1-8B", 8.03e9, None),
    ("meta-llama/Llama-3.1-70B", 70.6e9, None),
    ("meta-llama/Llama-3.1-405B", 405.8e9, None),
    ("meta-llama/Llama-3.2-1B", 1.24e9, None),
    ("meta-llama/Llama-3.2-3B", 3.21e9, None),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 7.62e9, None),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", 14.8e9, None),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", 32.8e9, None),
    ("deepseek-ai/DeepSeek-V3", 671e9, 37e9),
    ("Qwen/Qwen2.5-0.5B", 0.494e9, None),
    ("Qwen/Qwen2.5-72B", 72.7e9, None),
    ("Qwen/Qwen3-32B", 32.8e9, None),
    ("Qwen/Qwen3-235B-A22B", 235e9, 22e9),
    ("HuggingFaceTB/SmolLM2-135M", 134.5e6, None),
    ("HuggingFaceTB/SmolLM2-360M", 361.8e6, None),
    ("HuggingFaceTB/SmolLM2-1.7B", 1.71e9, None),
    ("google/gemma-3-270m", 268e6, None),
    ("MiniMaxAI/MiniMax-M2.5", 229e9, 11e9),
    ("openai/gpt-oss-120b", 116.8e9, 5.7e9),  # card: 5.1 B active without the 0.58 B input embedding
]


@pytest.mark.parametrize(("name", "total", "active"), PUBLISHED)
def test_parameter_counts_match_published(name: str, total: float, active: float | None) -> None:
    m = get_model(name)
    assert m.params_total() == pytest.approx(total, rel=0.015)
    if active is not None:
        assert m.params_active() == pytest.approx(active, rel=0.03)
    else:
        assert m.params_active() == pytest.approx(m.params_total())


def test_llama_8b_kv_is_128_kib_per_token_in_bf16() -> None:
    m = get_model("meta-llama/Llama-3.1-8B")
    assert m.kv_bytes_per_token("bf16") == 128 * 1024
    assert m.kv_bytes_per_token("fp8") == 64 * 1024


def test_deepseek_v3_mla_caches_one_latent_per_layer() -> None:
    m = get_model("deepseek-v3")
    assert m.uses_mla and m.is_moe
    # (kv_lora_rank 512 + rope 64) x 61 layers x 2 bytes, far below 2 x 128 heads x 128 x 61 x 2 of plain MHA
    assert m.kv_bytes_per_token("bf16") == (512 + 64) * 61 * 2
    assert m.num_experts == 256 and m.experts_per_token == 8 and m.first_dense_layers == 3


def test_kimi_is_a_trillion_parameter_mla_moe() -> None:
    m = get_model("moonshotai/Kimi-K2.5")
    assert m.params_total() == pytest.approx(1.03e12, rel=0.02)
    assert m.params_active() == pytest.approx(32.9e9, rel=0.03)
    assert m.native_precision == "int4"


def test_weight_bytes_follow_precision() -> None:
    m = get_model("llama-3.1-8b")
    bf16, fp8, awq = (m.weight_bytes(p) for p in ("bf16", "fp8", "int4-awq"))
    assert bf16 == pytest.approx(2 * m.params_total())
    assert m.weight_bytes("fp16") == bf16
    assert awq < fp8 < bf16
    # embeddings and LM head stay bf16: fp8 is 1 byte per linear weight plus 2 x 0.525 B bf16 tables
    assert fp8 == pytest.approx(9.08e9, rel=0.01)


def test_native_checkpoint_sizes() -> None:
    # gpt-oss-120b ships MXFP4 experts (~60.8 GiB); Kimi-K2.5 INT4 experts (~595 GB); DeepSeek-V3 FP8 (~671 GB)
    assert get_model("openai/gpt-oss-120b").weight_bytes("mxfp4") == pytest.approx(60.8 * 2**30, rel=0.03)
    assert get_model("moonshotai/Kimi-K2.5").weight_bytes("int4") == pytest.approx(595e9, rel=0.03)
    assert get_model("deepseek-ai/DeepSeek-R1").weight_bytes("fp8") == pytest.approx(673e9, rel=0.01)


def test_sliding_window_layers_hold_only_the_window() -> None:
    m = get_model("openai/gpt-oss-120b")
    assert m.sliding_layers == 18 and m.sliding_window == 128
    full = m.kv_bytes_per_token("bf16")
    long_ctx = m.kv_bytes_per_token("bf16", context_tokens=8192)
    assert long_ctx < 0.52 * full  # half the layers are windowed
    assert m.kv_bytes_per_token("bf16", context_tokens=64) == full
    gemma = get_model("google/gemma-3-270m")
    assert gemma.sliding_layers == 15 and gemma.sliding_window == 512


@pytest.mark.parametrize("name", ["META-LLAMA/LLAMA-3.1-8B", "Llama-3.1-8B", "llama-3.1-8b",
                                  "meta-llama/Llama-3.1-8B-Instruct", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"])
def test_lookup_is_case_insensitive_with_aliases(name: str) -> None:
    assert get_model(name).num_layers == 32 and get_model(name).hidden_size == 4096


def test_quantised_reuploads_keep_the_shapes() -> None:
    awq = get_model("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4")
    assert awq.native_precision == "int4-awq" and awq.num_layers == 80
    fp8 = get_model("Qwen/Qwen3-32B-FP8")
    assert fp8.native_precision == "fp8" and fp8.name == "Qwen/Qwen3-32B-FP8"
    assert fp8.params_total() == get_model("Qwen/Qwen3-32B").params_total()


def test_unknown_model_suggests_the_closest() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'llama-3-7b' \(did you mean 'meta-llama/Llama-3\.1-8B'\?\)"):
        get_model("llama-3-7b")
    with pytest.raises(ModelError, match="did you mean 'deepseek-ai/DeepSeek-V3'"):
        get_model("deepsek-v3")


def test_every_builtin_model_resolves_and_is_consistent() -> None:
    names = known_models()
    assert len(names) >= 25
    for name in names:
        m = get_model(name)
        assert m.name == name
        assert m.params_active() <= m.params_total()
        for p in PRECISIONS:
            assert m.weight_bytes(p) > 0
        assert m.kv_bytes_per_token() > 0


LLAMA_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


def test_config_json_file_and_folder_load(tmp_path: Path) -> None:
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    by_file = get_model(str(folder / "config.json"))
    by_dir = get_model(str(folder))
    builtin = get_model("meta-llama/Llama-3.1-8B")
    for m in (by_file, by_dir):
        assert m.name == "my-llama"
        assert m.params_total() == pytest.approx(builtin.params_total())
        assert m.kv_bytes_per_token() == builtin.kv_bytes_per_token()


def test_config_json_mla_moe_quantised_and_nested(tmp_path: Path) -> None:
    text = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "hidden_size": 7168, "num_attention_heads": 128,
            "num_key_value_heads": 128, "intermediate_size": 18432, "moe_intermediate_size": 2048,
            "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
            "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
            "v_head_dim": 128, "vocab_size": 129280, "max_position_embeddings": 163840}
    cfg = {"model_type": "some_vlm", "text_config": text,
           "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    m = load_config_json(path)
    assert m.native_precision == "fp8"
    assert m.kv_bytes_per_token() == get_model("deepseek-v3").kv_bytes_per_token()
    assert m.params_total() == pytest.approx(get_model("deepseek-v3").params_total())


def test_bad_config_json_names_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="not a readable JSON file"):
        get_model(str(bad))
    bad.write_text(json.dumps({"hidden_size": 10}))
    with pytest.raises(ModelError, match="missing field 'num_hidden_layers'"):
        get_model(str(bad))
    with pytest.raises(ModelError, match="file not found"):
        get_model(str(tmp_path / "nope" / "config.json"))


def test_precision_names() -> None:
    gpt_oss, llama = get_model("gpt-oss-120b"), get_model("llama-3.1-8b")
    assert normalize_precision("fp4", gpt_oss) == "mxfp4"
    assert normalize_precision("fp4", llama) == "nvfp4"
    assert normalize_precision("", gpt_oss) == "mxfp4"
    assert normalize_precision("BF16") == "bf16" and normalize_precision("awq") == "int4-awq"
    with pytest.raises(ModelError, match="unknown precision 'fp3'"):
        normalize_precision("fp3")


def test_experts_touched_saturates() -> None:
    assert expected_experts_touched(256, 8, 1) == pytest.approx(8)
    assert expected_experts_touched(256, 8, 4096) == pytest.approx(256, rel=1e-6)
    assert expected_experts_touched(256, 8, 16) < expected_experts_touched(256, 8, 64) < 256
