"""Registries whose *names* the spec validates against, kept free of imports so that the lowest floors can read
them: the launch backends (name -> "module:Class", imported only by `launch.backends.get_backend`). Tests register
their fakes into this same mapping (`launch.backends.register_backend`), so validation sees them too.

Scorer names come from `router/scorers.py` (dependency-free; the router's own definitions).
"""

from __future__ import annotations

from typing import Any

LAUNCH_BACKENDS: dict[str, Any] = {
    "local": "cascadia_sky.launch.backends.local:LocalBackend",
    "skyserve": "cascadia_sky.launch.backends.sky:SkyServeBackend",
    "clusters": "cascadia_sky.launch.backends.sky:ClustersBackend",
}


def backend_names() -> list[str]:
    """The names `infra.backend` accepts."""
    return sorted(LAUNCH_BACKENDS)


__all__ = ["LAUNCH_BACKENDS", "backend_names"]
