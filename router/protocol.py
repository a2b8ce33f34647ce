"""The request boundary: parse a body with bounds, then validate it with a typed model (as vLLM's protocol.py does).

Why here and not deeper: anything a client can send must become a 4xx in the OpenAI error shape, never a 500 from a
TypeError, OverflowError or RecursionError somewhere inside the cascade. So a body is parsed once, with
- a size limit (the caller's), a nesting-depth limit (`MAX_JSON_DEPTH`), and no non-finite numbers (`NaN`,
  `Infinity`, or `1e400`, which Python would read as inf and json.dumps would write back as invalid JSON);
and then the fields the router itself reads (`model`, `n`, `logprobs`, `top_logprobs`, `stream`,
`stream_options`, `echo`, `messages` / `prompt`) are checked by a pydantic model. Unknown fields pass through to the
engines untouched (the engine validates what only it understands).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.errors import RouterError

MAX_JSON_DEPTH = 64         # nesting levels of arrays/objects in any body the router parses (tool schemas fit)
MAX_CHOICES = 128           # `n`: more choices than this is a mistake or an attack
MAX_TOP_LOGPROBS = 20       # OpenAI's and vLLM's default ceiling for top alternatives per token

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_FOLD = bytes.maketrans(b"{}", b"[]")


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """True when `raw` nests arrays/objects deeper than `limit` (or its brackets do not balance).

    Runs at C speed without recursion: strings are blanked, everything but brackets dropped, and one level of
    innermost `[]` pairs is peeled per round; a body of depth <= limit is empty after `limit` rounds.
    """
    brackets = _STRING.sub(b"", raw).translate(_FOLD, _NOT_BRACKET)
    if b"[" * (limit + 1) in brackets:
        return True
    for _ in range(limit):
        if not brackets:
            return False
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):
            return True  # unbalanced: json.loads would refuse it too, but say so here
        brackets = peeled
    return bool(brackets)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:40]} is out of range")
    return x


def _finite_int(text: str) -> int:
    if len(text) > 40:  # Python refuses >4300 digits with a ValueError anyway; engines take 64-bit integers
        raise ValueError(f"integer {text[:40]}... is out of range")
    return int(text)


def parse_json(raw: bytes, what: str = "request body") -> Any:
    """Parse JSON with the depth limit and finite numbers only; RouterError(400) otherwise."""
    if json_depth_exceeds(raw, MAX_JSON_DEPTH):
        raise RouterError(400, f"{what} nests deeper than {MAX_JSON_DEPTH} levels (or its brackets do not "
                               f"balance)", code="invalid_json")
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_finite_int)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RouterError(400, f"{what} is not valid JSON: {str(exc)[:200]}", code="invalid_json") from None


@dataclass
class Wants:
    """What the client asked for that the router adds or removes: logprobs and usage in streams."""

    logprobs: bool
    top: int
    usage: bool
    n: int


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class _Request(BaseModel):
    """Fields both endpoints share. `extra="allow"`: unknown fields go to the engine as sent."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str | None = Field(None, max_length=512)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def wants(self) -> Wants:
        return Wants(bool(self.logprobs), self.top_logprobs or 0, self._usage(), self.n or 1)

    def _usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Request):
    prompt: str | list[Any]
    logprobs: bool | Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = None

    def wants(self) -> Wants:
        lp = self.logprobs
        return Wants(lp is not None and lp is not False, int(lp or 0),
                     bool(self.stream_options and self.stream_options.include_usage), self.n or 1)


REQUEST_MODELS: dict[str, type[_Request]] = {"chat": ChatRequest, "completions": CompletionRequest}


def validate_request(kind: str, body: Any) -> ChatRequest | CompletionRequest:
    """The typed view of a parsed body; RouterError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise RouterError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return REQUEST_MODELS[kind].model_validate(body)  # type: ignore[return-value]
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise RouterError(400, f"{loc}: {err['msg']}", param=str(err["loc"][0]) if err["loc"] else None,
                          code="invalid_value") from None
