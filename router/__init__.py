"""cascadia router: the OpenAI-compatible cascade endpoint. Self-contained: imports nothing from the planner,
SkyPilot or PuLP (a router machine installs only the `router` extra). See README.md.

Importing this package imports nothing heavy: the names below resolve on first use (PEP 562), so a core install
(no FastAPI) can still read `router.scorers` (plain functions, the one definition of every score).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "router.app",
    "RouterConfig": "router.config", "load_config": "router.config", "parse_config": "router.config",
    "ConfigError": "router.errors", "RouterError": "router.errors",
    "SCORERS": "router.scorers", "make_scorer": "router.scorers", "parse_logprobs": "router.scorers",
    "Secrets": "router.security", "load_secrets": "router.security",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
