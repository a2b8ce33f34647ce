"""Serve a plan's cascade through the router, optionally starting bundled local engines for its stages first.

This is what `cascadia router` runs. With `local_engines`, every stage whose model is a bundled model (by Hugging
Face id or our short name) gets an xllamacpp engine on a free loopback port, served under the stage's
`served_model_name`; the router config is then plan + those endpoints (RouterConfig.from_plan).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from cascadia_sky.engines.process import EngineProcess, start_bundled
from cascadia_sky.errors import UserInputError


def _plan_stages(path: Path) -> list[dict]:
    try:
        plan = json.loads(path.read_text())
        return list(plan["stages"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{path}: cannot read a plan with stages ({exc}); write one with `cascadia plan`") \
            from None


def start_plan_engines(plan_path: Path, replicas: int = 1) -> tuple[dict[str, list[str]], list[EngineProcess]]:
    """Start `replicas` bundled engines per stage of the plan; return ({stage: [urls]}, engines)."""
    endpoints: dict[str, list[str]] = {}
    engines: list[EngineProcess] = []
    try:
        for st in _plan_stages(plan_path):
            for _ in range(replicas):
                e = start_bundled(st["model"], alias=st.get("served_model_name") or st["name"])
                engines.append(e)
                endpoints.setdefault(st["name"], []).append(e.url)
    except BaseException:
        for e in engines:
            e.stop()
        raise
    return endpoints, engines


def run_router(config_path: Path, endpoints: list[str], *, local_engines: bool = False, host: str = "127.0.0.1",
               port: int = 8800, api_keys_file: str | None = None, admin_key_file: str | None = None) -> None:
    """Load the router config (a router config file, or a plan plus endpoints), start engines if asked, serve."""
    from router import ConfigError, load_config, load_secrets
    from router.server import parse_endpoints, serve

    engines: list[EngineProcess] = []
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it under the handler that was installed before it
    # started: make that handler an exit (not the default instant death), so `finally` stops the engines.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        eps = parse_endpoints(endpoints)
        if local_engines:
            started, engines = start_plan_engines(config_path)
            eps = {**started, **eps}
        config = load_config(config_path, eps or None)
        serve(config, load_secrets(api_keys_file=api_keys_file, admin_key_file=admin_key_file), host, port,
              log_level="info")
    except ConfigError as exc:
        raise UserInputError(str(exc)) from None
    finally:
        for e in engines:
            e.stop()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
