"""Per-stage engine keys (issue 14, item 4, router side): a stage's `upstream_api_key_env` names an environment
variable whose value goes to that stage's engines as `Authorization: Bearer ...`; the key itself never shows in the
config, /admin/config, /stats, /health, /metrics, logs or error messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import openai
import pytest

from router import ConfigError, Secrets, create_app, parse_config
from tests.router.helpers import FakeEngine, serve_app, two_stage_config

MSG = [{"role": "user", "content": "hi"}]
SMALL_KEY = "sk-small-0123456789abcdef"
BIG_KEY = "sk-big-fedcba9876543210"


@pytest.fixture
def engines() -> Iterator[tuple[FakeEngine, str, FakeEngine, str]]:
    with ExitStack() as stack:
        small = FakeEngine("small", logprob=-0.1, api_key=SMALL_KEY)
        big = FakeEngine("big", logprob=-0.3, api_key=BIG_KEY)
        yield small, stack.enter_context(serve_app(small.app())), big, stack.enter_context(serve_app(big.app()))


def _doc(small_url: str, big_url: str, threshold: float = -0.5) -> dict:
    doc = two_stage_config([small_url], [big_url], threshold)
    doc["stages"][0]["upstream_api_key_env"] = "TEST_CASCADIA_KEY_SMALL"
    doc["stages"][1]["upstream_api_key_env"] = "TEST_CASCADIA_KEY_BIG"
    return doc


def test_each_stage_sends_its_own_key_and_never_shows_it(engines, monkeypatch, caplog):
    small, small_url, big, big_url = engines
    monkeypatch.setenv("TEST_CASCADIA_KEY_SMALL", SMALL_KEY)
    monkeypatch.setenv("TEST_CASCADIA_KEY_BIG", BIG_KEY)
    admin = {"authorization": "Bearer adm"}
    with serve_app(create_app(parse_config(_doc(small_url, big_url, threshold=0.0), "t"),
                              Secrets(admin_key="adm"))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0, timeout=30)
        resp = client.chat.completions.with_raw_response.create(model="cascade", messages=MSG)
        streamed = list(client.chat.completions.create(model="cascade", messages=MSG, stream=True))
        pages = [httpx.get(url + p, headers=admin).text for p in ("/admin/config", "/stats", "/health", "/metrics")]
    assert resp.headers["x-cascadia-stage"] == "big" and streamed
    assert small.authorization == [f"Bearer {SMALL_KEY}"] * 2 and small.unauthorized == 0
    assert big.authorization == [f"Bearer {BIG_KEY}"] * 2 and big.unauthorized == 0
    assert "TEST_CASCADIA_KEY_SMALL" in pages[0]  # the variable's name is config, its value is not
    for text in [*pages, caplog.text, repr(resp.headers)]:
        assert SMALL_KEY not in text and BIG_KEY not in text


def test_a_stage_without_a_key_sends_no_authorization(engines):
    small, small_url, big, big_url = engines
    small.api_key = None
    doc = two_stage_config([small_url], [big_url])
    with serve_app(create_app(parse_config(doc, "t"))) as url:
        httpx.post(url + "/v1/chat/completions", json={"model": "small", "messages": MSG})
    assert small.authorization == [None]


def test_an_unset_key_variable_is_a_config_error_naming_it(engines, monkeypatch):
    _, small_url, _, big_url = engines
    monkeypatch.delenv("TEST_CASCADIA_KEY_SMALL", raising=False)
    monkeypatch.setenv("TEST_CASCADIA_KEY_BIG", BIG_KEY)
    with pytest.raises(ConfigError, match="TEST_CASCADIA_KEY_SMALL") as ei:
        create_app(parse_config(_doc(small_url, big_url), "t"))
    assert BIG_KEY not in str(ei.value)
    bad = _doc(small_url, big_url)
    bad["stages"][0]["upstream_api_key_env"] = "not a name; rm -rf"
    with pytest.raises(ConfigError, match="upstream_api_key_env"):
        parse_config(bad, "t")


def test_a_wrong_engine_key_fails_the_stage_not_the_client(engines, monkeypatch):
    """An engine refusing the router's key is the deployment's fault: the stage fails over (escalation), and the
    client never sees a 401 that would make it doubt its own key."""
    small, small_url, big, big_url = engines
    monkeypatch.setenv("TEST_CASCADIA_KEY_SMALL", "sk-wrong")
    monkeypatch.setenv("TEST_CASCADIA_KEY_BIG", BIG_KEY)
    with serve_app(create_app(parse_config(_doc(small_url, big_url), "t"))) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"model": "cascade", "messages": MSG})
        pinned = httpx.post(url + "/v1/chat/completions", json={"model": "small", "messages": MSG})
    assert r.status_code == 200 and r.headers["x-cascadia-path"].startswith("small=failed,big=answered")
    assert small.unauthorized == 2
    assert pinned.status_code == 502 and "sk-wrong" not in pinned.text
    assert "upstream_api_key_env" in pinned.json()["error"]["message"]


def test_hot_swap_reads_the_key_variable_again(engines, monkeypatch):
    small, small_url, big, big_url = engines
    monkeypatch.setenv("TEST_CASCADIA_KEY_SMALL", "sk-old")
    monkeypatch.setenv("TEST_CASCADIA_KEY_BIG", BIG_KEY)
    admin = {"authorization": "Bearer adm"}
    with serve_app(create_app(parse_config(_doc(small_url, big_url), "t"), Secrets(admin_key="adm"))) as url:
        monkeypatch.setenv("TEST_CASCADIA_KEY_SMALL", SMALL_KEY)  # rotated, then swapped in
        assert httpx.post(url + "/admin/config", json=_doc(small_url, big_url), headers=admin).status_code == 200
        r = httpx.post(url + "/v1/chat/completions", json={"model": "small", "messages": MSG})
        monkeypatch.delenv("TEST_CASCADIA_KEY_SMALL")
        refused = httpx.post(url + "/admin/config", json=_doc(small_url, big_url), headers=admin)
    assert r.status_code == 200 and small.authorization[-1] == f"Bearer {SMALL_KEY}"
    assert refused.status_code == 400 and "TEST_CASCADIA_KEY_SMALL" in refused.json()["error"]["message"]
