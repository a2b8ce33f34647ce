"""Failure handling against real HTTP fake engines with injected faults: 500, hang past the timeout, refused
connections, death mid-stream; fallbacks, clean errors, cancellation on client disconnect."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import openai
import pytest

from cascadia_sky.engines import free_port
from router import create_app, parse_config
from tests.router.helpers import FakeEngine, serve_app, two_stage_config

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fakes() -> Iterator[dict[str, tuple[FakeEngine, str]]]:
    """Four fake engines: small-a, small-b (stage 1 replicas), big-a, big-b (stage 2 replicas)."""
    with ExitStack() as stack:
        out = {}
        for name in ("small-a", "small-b", "big-a", "big-b"):
            fe = FakeEngine(name, logprob=-0.1 if name.startswith("small") else -0.3)
            out[name] = (fe, stack.enter_context(serve_app(fe.app())))
        yield out


def _router(small: list[str], big: list[str], threshold: float = -0.5, timeout_s: float = 2.0, **extra: object):
    doc = two_stage_config(small, big, threshold, health_cooldown_s=30, **extra)
    for st in doc["stages"]:
        st["timeout_s"] = timeout_s
    return serve_app(create_app(parse_config(doc, "test")))


def _client(url: str, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=timeout)


def _urls(fakes, *names: str) -> list[str]:
    return [fakes[n][1] for n in names]


def test_500_is_retried_on_another_replica_then_skipped(fakes):
    a, b = fakes["small-a"][0], fakes["small-b"][0]
    a.mode = "error500"
    with _router(_urls(fakes, "small-a", "small-b"), _urls(fakes, "big-a")) as url:
        client = _client(url)
        for _ in range(4):
            resp = client.chat.completions.with_raw_response.create(model="cascade", messages=MSG)
            assert resp.headers["x-cascadia-stage"] == "small"
            assert resp.parse().choices[0].message.content == "".join(f" small-b{i}" for i in range(8))
        health = httpx.get(url + "/health").json()
    assert a.requests == 1 and b.requests == 4  # a failed once, then sat out its cooldown
    assert [e["healthy"] for e in health["stages"]["small"]] == [False, True]


def test_all_replicas_of_a_stage_failing_escalates(fakes):
    fakes["small-a"][0].mode = "error500"
    with _router(_urls(fakes, "small-a") + [f"http://127.0.0.1:{free_port()}"], _urls(fakes, "big-a")) as url:
        resp = _client(url).chat.completions.with_raw_response.create(model="cascade", messages=MSG)
    assert resp.headers["x-cascadia-stage"] == "big"
    assert resp.headers["x-cascadia-path"].startswith("small=failed,big=answered(")
    assert resp.headers["x-cascadia-retries"] == "2"


def test_hang_past_timeout_escalates(fakes):
    fakes["small-a"][0].mode = "hang"
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a"), timeout_s=0.5) as url:
        resp = _client(url).chat.completions.with_raw_response.create(model="cascade", messages=MSG)
    assert resp.headers["x-cascadia-stage"] == "big"
    assert "small=failed" in resp.headers["x-cascadia-path"]


def test_last_stage_failure_falls_back_to_best_answer(fakes):
    fakes["big-a"][0].mode = "error500"
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a"), threshold=0.0) as url:
        client = _client(url)
        resp = client.chat.completions.with_raw_response.create(model="cascade", messages=MSG)
        with client.chat.completions.with_streaming_response.create(model="cascade", messages=MSG,
                                                                    stream=True) as sresp:
            text = "".join(c.choices[0].delta.content or "" for c in sresp.parse() if c.choices)
            shdr = sresp.headers
    for h in (resp.headers, shdr):
        assert h["x-cascadia-fallback"] == "true" and h["x-cascadia-stage"] == "small"
    assert text == resp.parse().choices[0].message.content


def test_nothing_answers_gives_clean_openai_errors(fakes):
    dead = [f"http://127.0.0.1:{free_port()}"]
    with _router(dead, dead) as url:
        with pytest.raises(openai.APIStatusError) as ei:
            _client(url).chat.completions.create(model="cascade", messages=MSG)
        assert ei.value.status_code == 502
        assert ei.value.body["code"] == "upstream_unavailable"
        with pytest.raises(openai.APIStatusError) as ei:
            list(_client(url).chat.completions.create(model="cascade", messages=MSG, stream=True))
        assert ei.value.status_code == 502
    for name in ("small-a", "big-a"):
        fakes[name][0].mode = "hang"
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a"), timeout_s=0.3) as url:
        with pytest.raises(openai.APIStatusError) as ei:
            _client(url).completions.create(model="cascade", prompt="x")
        assert ei.value.status_code == 504


def test_engine_400_is_returned_as_client_error(fakes):
    fakes["small-a"][0].mode = "error400"
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a")) as url:
        with pytest.raises(openai.BadRequestError) as ei:
            _client(url).chat.completions.create(model="cascade", messages=MSG)
    assert "bad prompt" in ei.value.body["message"]
    assert fakes["big-a"][0].requests == 0


def test_non_final_stage_dying_mid_stream_is_retried(fakes):
    fakes["small-a"][0].mode = "die_mid_stream"
    with _router(_urls(fakes, "small-a", "small-b"), _urls(fakes, "big-a"), early_decision=None) as url:
        with _client(url).chat.completions.with_streaming_response.create(model="cascade", messages=MSG,
                                                                          stream=True) as resp:
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
            assert resp.headers["x-cascadia-stage"] == "small"
            assert resp.headers["x-cascadia-retries"] == "1"
    assert text == "".join(f" small-b{i}" for i in range(8))


def test_final_stage_dying_mid_stream_ends_with_error_event(fakes):
    fakes["big-a"][0].mode = "die_mid_stream"
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a"), threshold=0.0) as url:
        stream = _client(url).chat.completions.create(model="cascade", messages=MSG, stream=True)
        got = []
        with pytest.raises(openai.APIError, match="mid-stream"):
            for chunk in stream:
                got.append(chunk)
        stats = httpx.get(url + "/stats").json()["windows"]["60"]
    assert got  # the first half had reached the client
    assert stats["errors"] == 1 and stats["stages"]["big"]["failed"] == 1


def test_streamed_replayed_answer_matches_and_usage_only_when_asked(fakes):
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a")) as url:
        client = _client(url)
        chunks = list(client.chat.completions.create(model="cascade", messages=MSG, stream=True,
                                                     stream_options={"include_usage": True}))
        plain = list(client.chat.completions.create(model="cascade", messages=MSG, stream=True))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in plain)
    sent = fakes["small-a"][0].bodies[0]
    assert sent["model"] == "small" and sent["logprobs"] is True and sent["stream"] is True


def test_legacy_completions_layout_is_scored(fakes):
    small = fakes["small-a"][0]
    small.legacy = True
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a"), threshold=-0.2) as url:
        resp = _client(url).completions.with_raw_response.create(model="cascade", prompt="x", logprobs=1)
        small.logprob = -0.4
        resp2 = _client(url).completions.with_raw_response.create(model="cascade", prompt="x")
    assert resp.headers["x-cascadia-stage"] == "small" and resp.headers["x-cascadia-score"] == "-0.1000"
    assert all(len(t) == 1 for t in resp.parse().choices[0].logprobs.top_logprobs)
    assert resp2.headers["x-cascadia-stage"] == "big" and resp2.parse().choices[0].logprobs is None


def test_client_disconnect_cancels_upstream_work(fakes):
    small, big = fakes["small-a"][0], fakes["big-a"][0]
    small.mode = "hang"
    big.token_delay_s = 0.5
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a"), timeout_s=30) as url:
        with pytest.raises(openai.APITimeoutError):
            _client(url, timeout=0.5).chat.completions.create(model="cascade", messages=MSG)
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=30,
                          json={"model": "big", "messages": MSG, "stream": True}) as resp:
            next(resp.iter_lines())  # first chunk arrived; hang up
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            health = httpx.get(url + "/health").json()["stages"]
            if health["small"][0]["outstanding"] == 0 and health["big"][0]["outstanding"] == 0:
                break
            time.sleep(0.05)
        metrics = httpx.get(url + "/metrics").text
    assert health["small"][0]["outstanding"] == 0 and health["big"][0]["outstanding"] == 0
    assert 'result="cancelled"' in metrics
    assert big.finished == 0  # its 8 tokens at 0.5 s each never completed


def test_early_commit_streams_small_stage_live(fakes):
    small = fakes["small-a"][0]
    small.logprob, small.token_delay_s = -0.01, 0.05
    early = {"min_tokens": 2, "reject_margin": 0.5, "accept_margin": 0.1}
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a"), early_decision=early) as url:
        with _client(url).chat.completions.with_streaming_response.create(model="cascade", messages=MSG,
                                                                          stream=True) as resp:
            path = resp.headers["x-cascadia-path"]
            first = next(iter(resp.parse()))
            done_when_first_arrived = small.finished
    assert path == "small=committed" and first.choices
    assert done_when_first_arrived == 0  # the client had tokens before the small stage finished
    assert fakes["big-a"][0].requests == 0


def test_early_reject_aborts_small_stage(fakes):
    small = fakes["small-a"][0]
    small.logprob, small.token_delay_s = -2.0, 0.05
    early = {"min_tokens": 2, "reject_margin": 0.5, "accept_margin": None}
    with _router(_urls(fakes, "small-a"), _urls(fakes, "big-a"), early_decision=early) as url:
        with _client(url).chat.completions.with_streaming_response.create(model="cascade", messages=MSG,
                                                                          stream=True) as resp:
            path = resp.headers["x-cascadia-path"]
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert path.startswith("small=early_escalated(-2.0000),big=answered")
    assert text == "".join(f" big-a{i}" for i in range(8))
    assert small.finished == 0
