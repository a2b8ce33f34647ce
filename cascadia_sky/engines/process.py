"""Start, watch and stop one local engine process serving an OpenAI-compatible API on loopback.

The launcher's local backend and the tests use this: `start_bundled("smollm2-135m-instruct", alias="small")` gives a
running llama.cpp server (xllamacpp) on a free 127.0.0.1 port; `EngineProcess.stop()` ends it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cascadia_sky.bundled import bundled_model, gguf_path
from cascadia_sky.constants import ENGINE_API_KEY_ENV, LOCAL_ENGINE_MAX_TOKENS
from cascadia_sky.errors import CascadiaError

ENGINE_READY_TIMEOUT_SECONDS = 120.0   # xllamacpp is ready in ~1 s; vLLM on CPU in 25-80 s
ENGINE_STOP_TIMEOUT_SECONDS = 10.0
ENGINE_POLL_INTERVAL_SECONDS = 0.1


class EngineError(CascadiaError):
    """A local engine failed to start or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EngineProcess:
    """A running engine: its process, where it listens and where its log goes."""

    name: str
    served_model_name: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    host: str = "127.0.0.1"
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        """Base URL of the server (the OpenAI API lives under /v1)."""
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n_chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = ENGINE_READY_TIMEOUT_SECONDS) -> float:
        """Poll GET /health (no key needed: engines may require one for /v1) until it answers 200; return seconds
        since start. Raise if the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise EngineError(f"engine {self.name} exited with code {self.proc.returncode} before it was ready; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started_at
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(ENGINE_POLL_INTERVAL_SECONDS)
        self.stop()
        raise EngineError(f"engine {self.name} not ready after {timeout_s:.0f} s; log {self.log_path}:\n"
                          f"{self.log_tail()}")

    def stop(self, timeout_s: float = ENGINE_STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM the engine's process group, then SIGKILL if it lingers."""
        if not self.alive():
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout_s)


def spawn(name: str, served_model_name: str, argv: list[str], port: int, log_dir: Path,
          env: dict[str, str] | None = None) -> EngineProcess:
    """Start `argv` in a new process group (so stop() also ends its children), output to a log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    return EngineProcess(name=name, served_model_name=served_model_name, port=port, proc=proc, log_path=log_path)


def start_xllamacpp(model_path: Path, alias: str, *, port: int | None = None, threads: int = 1, ctx: int = 2048,
                    parallel: int = 1, chat_template: str = "", log_dir: Path | None = None,
                    python: str = sys.executable, wait: bool = True,
                    max_tokens: int = LOCAL_ENGINE_MAX_TOKENS, api_key: str | None = None) -> EngineProcess:
    """Serve a GGUF file with llama.cpp (xllamacpp) on 127.0.0.1; wait until it answers unless wait=False.

    `max_tokens` is the engine's answer length when a request sets none (llama.cpp `n_predict`; a request's own
    max_tokens still wins): without it a base model writes until the context is full, minutes on a CPU. -1 lifts
    it. With `api_key` the engine answers /v1 only to requests bearing it (passed in the environment, never on the
    command line, which other users can read)."""
    port = port or free_port()
    argv = [python, "-m", "cascadia_sky.engines.xllamacpp_server", "--model", str(model_path), "--alias", alias,
            "--port", str(port), "--threads", str(threads), "--ctx", str(ctx), "--parallel", str(parallel),
            "--n-predict", str(max_tokens)]
    if chat_template:
        argv += ["--chat-template", chat_template]
    engine = spawn(alias, alias, argv, port, log_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "cascadia-engines",
                   env={ENGINE_API_KEY_ENV: api_key} if api_key else None)
    if wait:
        engine.wait_ready()
    return engine


def start_bundled(name: str, alias: str | None = None, **kwargs: object) -> EngineProcess:
    """Serve a bundled model (see bundled.py) with xllamacpp, with its chat template forced if it needs one."""
    model = bundled_model(name)
    return start_xllamacpp(gguf_path(model.name), alias or model.name, chat_template=model.chat_template,
                           **kwargs)  # type: ignore[arg-type]
