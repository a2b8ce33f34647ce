"""Standalone script (run by the vLLM venv's python, not imported): GGUF -> safetensors for vLLM on CPU.

vLLM 0.32 on CPU cannot load GGUF, so the bundled GGUF is dequantised with transformers' GGUF loader and saved as a
bf16 Hugging Face folder. For models whose GGUF adds BOS (gemma), the converted tokenizer is fixed to add it too
(the conversion loses that, and vLLM then produces garbage). Usage: hf_convert.py GGUF_PATH OUT_DIR
"""

import json
import os
import sys


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    import torch
    from tokenizers import Tokenizer, processors
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = os.path.dirname(os.path.abspath(src)), os.path.basename(src)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.bfloat16)
    model.hf_quantizer = None  # else save_pretrained refuses a "GGUF-quantised" model
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    tmp = out + ".tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    if model.config.model_type.startswith("gemma"):
        tk = Tokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
        bos = cfg["bos_token"]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tk.token_to_id(bos))])
        tk.save(os.path.join(tmp, "tokenizer.json"))
        cfg["add_bos_token"] = True
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
