"""A minimal OpenAI-compatible chat client (stdlib only, so calibrate runs from a core install).

One call = one POST /v1/chat/completions with logprobs and top_logprobs on, exactly like the router asks a stage
(router/serving.py `stage_payload`); the answer's logprobs are parsed by the router's own `parse_logprobs`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cascadia_sky.constants import (CALIBRATE_REQUEST_RETRIES, CALIBRATE_REQUEST_TIMEOUT_SECONDS,
                                    CALIBRATE_RETRY_BACKOFF_SECONDS)
from cascadia_sky.errors import CascadiaError


class EndpointError(CascadiaError):
    """An endpoint refused, timed out or answered with an error (after retries)."""


@dataclass(frozen=True)
class ChatAnswer:
    """What one stage answered to one prompt, with what the scorers and the profile need."""

    text: str
    logprobs: dict[str, Any] | None   # the choice's `logprobs` object as the engine sent it
    input_tokens: int
    output_tokens: int
    latency_s: float
    finish_reason: str


def chat_url(base_url: str) -> str:
    """Accept http://host:port, .../v1 or the full .../v1/chat/completions."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def chat(base_url: str, model: str, messages: list[dict[str, str]], *, temperature: float, max_tokens: int,
         top_logprobs: int = 0, api_key: str = "", timeout_s: float = CALIBRATE_REQUEST_TIMEOUT_SECONDS,
         retries: int = CALIBRATE_REQUEST_RETRIES) -> ChatAnswer:
    """POST one chat completion; retry connection errors and 5xx; raise EndpointError with the cause."""
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature,
                            "max_tokens": max_tokens, "stream": False}
    if top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = top_logprobs
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = chat_url(base_url)
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(CALIBRATE_RETRY_BACKOFF_SECONDS * attempt)
        t0 = time.perf_counter()
        try:
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                payload = json.loads(resp.read())
            latency = time.perf_counter() - t0
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            last = f"HTTP {exc.code} from {url}: {detail}"
            if exc.code < 500:
                break  # a bad request does not get better by retrying
            continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            last = f"{url}: {reason}"
            continue
        return _answer(payload, latency, url)
    raise EndpointError(last)


def _answer(payload: Any, latency_s: float, url: str) -> ChatAnswer:
    try:
        choice = payload["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise EndpointError(f"{url}: not an OpenAI chat completion: {str(payload)[:200]}") from None
    usage = payload.get("usage") or {}
    lp = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
    n_out = usage.get("completion_tokens")
    if not isinstance(n_out, int):
        n_out = len((lp or {}).get("content") or [])
    n_in = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    return ChatAnswer(text=text, logprobs=lp, input_tokens=n_in, output_tokens=n_out, latency_s=latency_s,
                      finish_reason=str(choice.get("finish_reason") or ""))
