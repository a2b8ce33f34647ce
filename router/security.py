"""API keys: Bearer keys for /v1 (and /stats, /metrics), a separate admin key for /admin.

Keys come from the environment or from secret files, never from the config file, and are never logged: the
`Secrets` object keeps only SHA-256 digests and its repr shows counts. Comparison is constant-time
(`hmac.compare_digest` on digests, every key checked, no early exit).

- CASCADIA_ROUTER_API_KEYS: comma-separated keys; CASCADIA_ROUTER_API_KEYS_FILE: a file, one key per line.
- CASCADIA_ROUTER_ADMIN_KEY / CASCADIA_ROUTER_ADMIN_KEY_FILE: the admin key.
No key source at all: /v1 is open, which the server allows only on a loopback bind and announces with a WARNING
line. A key source that is given but holds no key (an empty or comments-only keys file, `CASCADIA_ROUTER_API_KEYS=","`)
is a ConfigError, never a silently open endpoint: it usually means a secret failed to arrive. No admin key: /admin is
disabled.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from router.errors import ConfigError

API_KEYS_ENV = "CASCADIA_ROUTER_API_KEYS"
API_KEYS_FILE_ENV = "CASCADIA_ROUTER_API_KEYS_FILE"
ADMIN_KEY_ENV = "CASCADIA_ROUTER_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "CASCADIA_ROUTER_ADMIN_KEY_FILE"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Secrets:
    """Digests of the accepted keys."""

    def __init__(self, api_keys: list[str] | None = None, admin_key: str | None = None) -> None:
        self._api = [_digest(k) for k in (api_keys or []) if k]
        self._admin = _digest(admin_key) if admin_key else None

    def __repr__(self) -> str:
        return f"Secrets(api_keys={len(self._api)}, admin_key={'set' if self._admin else 'unset'})"

    @property
    def api_open(self) -> bool:
        return not self._api

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    def check_api(self, authorization: str | None) -> bool:
        """True when the request may use /v1: no keys configured, or a matching Bearer key (or the admin key)."""
        if self.api_open:
            return True
        given = _bearer(authorization)
        if given is None:
            return False
        d = _digest(given)
        ok = False
        for k in self._api:
            ok |= hmac.compare_digest(d, k)
        if self._admin is not None:
            ok |= hmac.compare_digest(d, self._admin)
        return ok

    def check_admin(self, authorization: str | None) -> bool:
        given = _bearer(authorization)
        if self._admin is None or given is None:
            return False
        return hmac.compare_digest(_digest(given), self._admin)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def _read_keys(path: str, what: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} file: {exc.strerror}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def load_secrets(env: Mapping[str, str] | None = None, api_keys_file: str | None = None,
                 admin_key_file: str | None = None) -> Secrets:
    """Collect keys from the environment and the given (or env-named) files; a given source without a key is an
    error (see the module docstring)."""
    env = os.environ if env is None else env
    raw = env.get(API_KEYS_ENV, "")
    api = [k.strip() for k in raw.split(",") if k.strip()]
    if raw.strip() and not api:
        raise ConfigError(f"{API_KEYS_ENV} is set but holds no API key (only commas and spaces); authentication "
                          f"would be off. Set it to comma-separated keys, or unset it to run open on 127.0.0.1")
    api_file = api_keys_file or env.get(API_KEYS_FILE_ENV)
    if api_file:
        from_file = _read_keys(api_file, "API keys")
        if not from_file:
            raise ConfigError(f"{api_file}: the API keys file holds no API key (only blank lines or # comments); "
                              f"authentication would be off. Add one key per line, or drop the keys file to run "
                              f"open on 127.0.0.1")
        api += from_file
    admin = env.get(ADMIN_KEY_ENV, "").strip() or None
    admin_file = admin_key_file or env.get(ADMIN_KEY_FILE_ENV)
    if admin_file:
        keys = _read_keys(admin_file, "admin key")
        if len(keys) != 1:
            raise ConfigError(f"{admin_file}: the admin key file must hold exactly one key")
        admin = keys[0]
    return Secrets(api, admin)
