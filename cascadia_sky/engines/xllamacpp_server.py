"""Child-process entry point: serve one GGUF model with llama.cpp's own HTTP server (xllamacpp).

xllamacpp ships llama.cpp's C++ server inside a prebuilt wheel but has no CLI; this module is that CLI.
It runs in its own process (`python -m cascadia_sky.engines.xllamacpp_server ...`) so that the parent can
stop it with SIGTERM and so that a crash of the engine never takes the caller down with it.
Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


ENGINE_API_KEY_ENV = "CASCADIA_ENGINE_API_KEY"   # = cascadia_sky.constants.ENGINE_API_KEY_ENV (this module runs on
#                                                 nodes with only the standard library and the engine wheel)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m cascadia_sky.engines.xllamacpp_server",
                                 description="Serve a GGUF model with llama.cpp's OpenAI-compatible server.")
    ap.add_argument("--model", required=True, help="path of the .gguf file")
    ap.add_argument("--alias", required=True, help="model name the server reports in /v1/models")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=2048, help="context length (tokens), shared by the slots")
    ap.add_argument("--parallel", type=int, default=1, help="request slots (continuous batching)")
    ap.add_argument("--n-predict", type=int, default=-1,
                    help="tokens per answer when a request gives no max_tokens (-1: until the context is full, "
                         "llama.cpp's default); a request's own max_tokens still wins")
    ap.add_argument("--chat-template", default="",
                    help="force one of llama.cpp's built-in templates (e.g. 'gemma' for a base model)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start the server and block until SIGTERM/SIGINT."""
    args = _parse(argv)
    import xllamacpp as xlc  # imported here: the wheel is only needed where an engine runs

    p = xlc.CommonParams()
    p.model.path = args.model
    p.model_alias = {args.alias}  # a set: a plain str would become a set of characters
    p.hostnames = [args.host]
    p.port = args.port
    p.n_ctx = args.ctx
    p.n_parallel = args.parallel
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.n_predict = args.n_predict
    key = os.environ.get(ENGINE_API_KEY_ENV, "").strip()
    if key:  # /v1 answers only requests bearing it (the router's); /health stays open for readiness probes
        p.api_keys = [key]
    p.warmup = True
    if args.chat_template:
        p.use_jinja = False
        p.chat_template = args.chat_template
    server = xlc.Server(p)
    print(f"listening on {server.listening_address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server
    sys.exit(0)


if __name__ == "__main__":
    main()
