"""One error shape for every failure the router reports, OpenAI style:
`{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}`.
"""

from __future__ import annotations

import json


class RouterError(Exception):
    """An error that becomes an HTTP response with the OpenAI error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


class ConfigError(ValueError):
    """A router config (file, plan mapping or hot-swap body) is invalid; the message names the field and the fix."""
