"""Run the router with uvicorn: `python -m router --config router.yaml` or `cascadia router ...`."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from router.app import create_app
from router.config import RouterConfig, load_config
from router.errors import ConfigError
from router.security import Secrets, load_secrets

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8800


def serve(config: RouterConfig, secrets: Secrets, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log_level: str = "warning") -> None:
    """Serve until interrupted. Refuses a non-loopback bind without API keys (an open cascade on the network), and
    says loudly on stderr when it serves open on loopback."""
    import uvicorn

    if secrets.api_open:
        if not _is_loopback(host):
            raise ConfigError(f"refusing to bind {host} without API keys; set CASCADIA_ROUTER_API_KEYS (or a keys "
                              f"file), or bind 127.0.0.1")
        print(f"WARNING: cascadia router serving {_display(host)}:{port} without API keys: /v1, /metrics and "
              f"/stats are open to every local user of this machine; set CASCADIA_ROUTER_API_KEYS or "
              f"--api-keys-file to require a key", file=sys.stderr, flush=True)
    uvicorn.run(create_app(config, secrets), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=30)


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_endpoints(items: list[str]) -> dict[str, list[str]]:
    """`stage=url[,url...]` items (repeatable) into {stage: [urls]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, urls = item.partition("=")
        if not sep or not name or not urls:
            raise ConfigError(f"--endpoint {item!r}: expected STAGE=URL[,URL...]")
        out.setdefault(name, []).extend(u for u in urls.split(",") if u)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m router", description="Serve a model cascade (OpenAI API).")
    ap.add_argument("--config", required=True, help="router config (YAML/JSON) or plan.json")
    ap.add_argument("--endpoint", action="append", default=[], help="STAGE=URL[,URL...] (with a plan.json)")
    ap.add_argument("--host", default=DEFAULT_HOST)
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--api-keys-file")
    ap.add_argument("--admin-key-file")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.config, parse_endpoints(args.endpoint) or None)
        serve(config, load_secrets(api_keys_file=args.api_keys_file, admin_key_file=args.admin_key_file),
              args.host, args.port)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
