"""End to end: the router in front of two REAL llama.cpp engines (xllamacpp) serving bundled models on loopback,
used through the official openai client, streaming and not."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from cascadia_sky.engines import EngineProcess, start_bundled
from router import create_app, parse_config
from tests.router.helpers import engine_pair, serve_app, two_stage_config

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[EngineProcess, EngineProcess]]:
    with engine_pair(lambda: start_bundled("smollm2-135m-instruct", alias="small"),
                     lambda: start_bundled("gemma-3-270m", alias="big")) as pair:
        yield pair


def _router(engines: tuple[EngineProcess, EngineProcess], threshold: float, **extra: object):
    small, big = engines
    return serve_app(create_app(parse_config(two_stage_config([small.url], [big.url], threshold, **extra), "t")))


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_low_threshold_accepts_small_stage(engines):
    with _router(engines, threshold=-1e9) as url:
        resp = _client(url).chat.completions.with_raw_response.create(
            model="cascade", messages=PROMPT, max_tokens=12, temperature=0)
        out = resp.parse()
    assert resp.headers["x-cascadia-stage"] == "small"
    assert resp.headers["x-cascadia-escalations"] == "0"
    assert float(resp.headers["x-cascadia-score"]) < 0
    assert out.choices[0].message.content
    assert out.choices[0].logprobs is None  # the router asked for logprobs; the client did not
    assert out.model == "cascade"


def test_high_threshold_escalates_to_big_stage(engines):
    with _router(engines, threshold=-1e-6) as url:
        resp = _client(url).chat.completions.with_raw_response.create(
            model="cascade", messages=PROMPT, max_tokens=12, temperature=0)
        out = resp.parse()
        stats = httpx.get(url + "/stats").json()
        metrics = httpx.get(url + "/metrics").text
    assert resp.headers["x-cascadia-stage"] == "big"
    assert resp.headers["x-cascadia-escalations"] == "1"
    assert resp.headers["x-cascadia-path"].startswith("small=escalated(")
    assert set(dict(kv.split("=") for kv in resp.headers["x-cascadia-stage-seconds"].split(","))) == {"small", "big"}
    assert out.choices[0].message.content is not None
    win = stats["windows"]["60"]
    assert win["requests"] == 1 and win["stages"]["big"]["answered"] == 1
    assert win["stages"]["small"]["escalated_share"] == 1.0
    assert win["input_tokens"]["count"] == 1
    assert 'cascadia_router_stage_outcomes_total{outcome="escalated",stage="small"} 1.0' in metrics


def test_streaming_escalated_request_streams_from_big(engines):
    with _router(engines, threshold=-1e-6, early_decision=None) as url:
        stream = _client(url).chat.completions.create(model="cascade", messages=PROMPT, max_tokens=12,
                                                      temperature=0, stream=True)
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.model == "cascade" for c in chunks)
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)


def test_streaming_accepted_small_answer_is_replayed_with_user_logprobs(engines):
    with _router(engines, threshold=-1e9) as url:
        client = _client(url)
        with client.chat.completions.with_streaming_response.create(
                model="cascade", messages=PROMPT, max_tokens=10, temperature=0, stream=True, logprobs=True,
                top_logprobs=1) as resp:
            assert resp.headers["x-cascadia-stage"] == "small"
            chunks = list(resp.parse())
        direct = client.chat.completions.create(model="small", messages=PROMPT, max_tokens=10, temperature=0)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.choices[0].message.content  # greedy: the same answer streamed and not
    toks = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert toks and all(len(t.top_logprobs) == 1 for t in toks)


def test_completions_endpoint_and_pinned_stage(engines):
    with _router(engines, threshold=-1e-6) as url:
        client = _client(url)
        resp = client.completions.with_raw_response.create(model="big", prompt="The capital of France is",
                                                           max_tokens=6, temperature=0, logprobs=2)
        out = resp.parse()
        models = [m.id for m in client.models.list()]
    direct = _client(engines[1].url).completions.create(model="big", prompt="The capital of France is", max_tokens=6,
                                                         temperature=0, logprobs=2)
    assert resp.headers["x-cascadia-stage"] == "big" and resp.headers["x-cascadia-escalations"] == "0"
    # Greedy decoding: the pinned stage's answer through the router is the engine's own answer, token for token
    # (a broken engine or a router that garbles or truncates the text fails here).
    assert out.choices[0].text.strip() and out.choices[0].text == direct.choices[0].text
    assert out.usage.completion_tokens == direct.usage.completion_tokens == 6
    assert models == ["cascade", "small", "big"]


def test_early_escalation_aborts_small_stage(engines):
    # Running mean logprob of a sampled answer is far below -1e-6 + 0 after 2 tokens: escalate without finishing.
    early = {"min_tokens": 2, "reject_margin": 0.0, "accept_margin": None}
    with _router(engines, threshold=-1e-6, early_decision=early) as url:
        with _client(url).chat.completions.with_streaming_response.create(
                model="cascade", messages=PROMPT, max_tokens=40, temperature=1.0, stream=True) as resp:
            path = resp.headers["x-cascadia-path"]
            list(resp.parse())
    assert path.startswith("small=early_escalated(")
