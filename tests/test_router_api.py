"""The router's HTTP surface: auth, admin hot swap (also under load), size limits, error shape, config loading,
and the scorers' exact statistics."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import numpy as np
import openai
import pytest

from router import ConfigError, RouterConfig, Secrets, create_app, load_config, load_secrets, make_scorer, parse_config
from router.scorers import TokenLogprob, parse_logprobs
from tests.router.helpers import FakeEngine, serve_app, two_stage_config

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fakes() -> Iterator[list[tuple[FakeEngine, str]]]:
    with ExitStack() as stack:
        out = []
        for name in ("small", "big", "small2"):
            fe = FakeEngine(name, logprob=-0.1)
            out.append((fe, stack.enter_context(serve_app(fe.app()))))
        yield out


def _doc(fakes, threshold: float = -0.5, **extra: object) -> dict:
    return two_stage_config([fakes[0][1]], [fakes[1][1]], threshold, **extra)


def test_api_keys_and_admin_key(fakes):
    secrets = Secrets(api_keys=["user-key-1", "user-key-2"], admin_key="admin-key")
    with serve_app(create_app(parse_config(_doc(fakes), "t"), secrets)) as url:
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as ei:
            bad.chat.completions.create(model="cascade", messages=MSG)
        assert ei.value.body["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/stats").status_code == 401
        good = openai.OpenAI(base_url=url + "/v1", api_key="user-key-2", max_retries=0)
        assert good.chat.completions.create(model="cascade", messages=MSG).choices
        assert httpx.get(url + "/health").status_code == 200  # liveness stays open
        user = {"authorization": "Bearer user-key-1"}
        assert httpx.get(url + "/admin/config", headers=user).status_code == 401
        cfg = httpx.get(url + "/admin/config", headers={"authorization": "Bearer admin-key"}).json()
        assert cfg["version"] == 1 and cfg["config"]["name"] == "cascade"
    assert "user-key" not in repr(secrets) and "admin-key" not in repr(secrets)


def test_admin_config_counts_requests_in_flight_per_version(fakes):
    """GET /admin/config says how many client requests are in flight on each config version: a slow stream (pinned
    to a stage: relayed as it comes) that started on version 1 is counted there after a swap to version 2 (a replica
    the swap took out may still get its escalation), and nowhere once it has finished."""
    (small, small_url), (big, big_url), _ = fakes
    small.token_delay_s = 0.1
    admin = {"authorization": "Bearer adm"}
    with serve_app(create_app(parse_config(_doc(fakes), "t"), Secrets(admin_key="adm"))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        idle = httpx.get(url + "/admin/config", headers=admin).json()
        with client.chat.completions.with_streaming_response.create(model="small", messages=MSG,
                                                                    stream=True) as slow:
            during = httpx.get(url + "/admin/config", headers=admin).json()
            assert httpx.post(url + "/admin/config", json=_doc(fakes, threshold=0.0), headers=admin).status_code == 200
            swapped = httpx.get(url + "/admin/config", headers=admin).json()
            text = "".join(c.choices[0].delta.content or "" for c in slow.parse() if c.choices)
        after = httpx.get(url + "/admin/config", headers=admin).json()
    assert idle["in_flight"] == {}
    assert during["version"] == 1 and during["in_flight"] == {"1": 1}
    assert swapped["version"] == 2 and swapped["in_flight"] == {"1": 1}
    assert text == "".join(f" small{i}" for i in range(8))
    assert after["version"] == 2 and after["in_flight"] == {}


def test_admin_disabled_without_key(fakes):
    with serve_app(create_app(parse_config(_doc(fakes), "t"))) as url:
        r = httpx.post(url + "/admin/config", json=_doc(fakes))
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_size_limits_and_error_shape(fakes):
    with serve_app(create_app(parse_config(_doc(fakes, max_request_bytes=65_536), "t"))) as url:
        big = {"model": "cascade", "messages": [{"role": "user", "content": "x" * 70_000}]}
        r = httpx.post(url + "/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            yield json.dumps(big).encode()

        r = httpx.post(url + "/v1/chat/completions", content=chunks())
        assert r.status_code == 413
        r = httpx.post(url + "/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4", "messages": MSG})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = httpx.get(url + "/nowhere")
        assert r.status_code == 404 and "error" in r.json()
        r = httpx.post(url + "/v1/completions", json={"model": "cascade", "prompt": "x", "echo": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
    assert fakes[0][0].requests == 0


def test_hot_swap_under_load_is_atomic(fakes):
    """Swap thresholds and endpoints while 8 threads send requests: nothing fails; a slow in-flight stream finishes
    on the config it started with; later requests use the new one."""
    (small, small_url), (big, big_url), (small2, small2_url) = fakes
    small.token_delay_s = 0.05
    admin = {"authorization": "Bearer adm"}
    with serve_app(create_app(parse_config(_doc(fakes), "t"), Secrets(admin_key="adm"))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        errors: list[BaseException] = []
        stages: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    r = client.chat.completions.with_raw_response.create(model="cascade", messages=MSG)
                    stages.append(r.headers["x-cascadia-stage"])
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)

        with client.chat.completions.with_streaming_response.create(model="small", messages=MSG,
                                                                    stream=True) as slow:
            threads = [threading.Thread(target=load) for _ in range(8)]
            for t in threads:
                t.start()
            versions = []
            for i in range(10):
                new = two_stage_config([small2_url if i % 2 == 0 else small_url], [big_url],
                                       threshold=0.0 if i % 2 == 0 else -0.5)
                r = httpx.post(url + "/admin/config", json=new, headers=admin)
                assert r.status_code == 200, r.text
                versions.append(r.json()["version"])
            slow_text = "".join(c.choices[0].delta.content or "" for c in slow.parse() if c.choices)
            stop.set()
            for t in threads:
                t.join()
        plan = {"schema_version": 1, "name": "cascade", "scorer": "margin",
                "stages": [{"name": "small", "model": "m1", "served_model_name": "s1", "threshold": 0.5},
                           {"name": "big", "model": "m2", "served_model_name": "s2", "threshold": None}]}
        r = httpx.post(url + "/admin/config", headers=admin,
                       json={"plan": plan, "endpoints": {"small": [small_url], "big": [big_url]}})
        assert r.status_code == 200
        cfg = httpx.get(url + "/admin/config", headers=admin).json()
        bad = httpx.post(url + "/admin/config", headers=admin, json={"name": "c", "stages": []})
    assert not errors
    assert versions == list(range(2, 12))
    assert slow_text == "".join(f" small{i}" for i in range(8))  # never touched by the swaps
    assert {"small", "big"} <= set(stages)
    assert small2.requests > 0
    assert cfg["version"] == 12 and cfg["config"]["stages"][0]["scorer"] == "margin"
    assert bad.status_code == 400 and "stages" in bad.json()["error"]["message"]


def test_from_plan_mapping_and_files(tmp_path):
    plan = {"schema_version": 1, "name": "demo", "scorer": "quantile_logprob",
            "stages": [{"name": "s", "model": "org/small", "served_model_name": "small-srv", "threshold": -0.7,
                        "share": 0.6, "replicas": 2, "gpu_type": "L4", "tp": 1, "pp": 1},
                       {"name": "l", "model": "org/large", "served_model_name": "large-srv", "threshold": None,
                        "share": 0.4, "replicas": 1, "gpu_type": "H100", "tp": 4, "pp": 1}]}
    cfg = RouterConfig.from_plan(plan, {"s": ["http://127.0.0.1:1/v1/", "http://127.0.0.1:2"],
                                        "l": ["http://127.0.0.1:3"]})
    assert [s.served_model_name for s in cfg.stages] == ["small-srv", "large-srv"]
    assert cfg.stages[0].endpoints == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert cfg.stages[0].threshold == -0.7 and cfg.stages[1].threshold is None
    assert {s.scorer for s in cfg.stages} == {"quantile_logprob"}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(ConfigError, match="give each stage's endpoints"):
        load_config(path)
    assert load_config(path, {"s": ["http://127.0.0.1:1"], "l": ["http://127.0.0.1:3"]}).name == "demo"
    yml = tmp_path / "router.yaml"
    yml.write_text("name: demo\nstages:\n  - {name: a, served_model_name: a, endpoints: [http://127.0.0.1:1], "
                   "threshold: -1}\n  - {name: b, served_model_name: b, endpoints: [http://127.0.0.1:2]}\n")
    assert [s.name for s in load_config(yml).stages] == ["a", "b"]
    yml.write_text("name: demo\nstages:\n  - {name: a, served_model_name: a, endpoints: [ftp://x], threshold: -1}\n")
    with pytest.raises(ConfigError, match=r"router.yaml: stages.0.endpoints"):
        load_config(yml)
    with pytest.raises(ConfigError, match="last stage always answers"):
        parse_config({"name": "c", "stages": [{"name": "a", "served_model_name": "a",
                                                "endpoints": ["http://h:1"], "threshold": 1}]}, "x")
    with pytest.raises(ConfigError, match="unknown scorer"):
        parse_config({"name": "c", "stages": [{"name": "a", "served_model_name": "a", "scorer": "judge",
                                                "endpoints": ["http://h:1"]}]}, "x")


def test_secrets_from_env_and_files(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# users\nk-file\n\n")
    admin = tmp_path / "admin"
    admin.write_text("adm-file\n")
    s = load_secrets({"CASCADIA_ROUTER_API_KEYS": "k1, k2", "CASCADIA_ROUTER_API_KEYS_FILE": str(keys),
                      "CASCADIA_ROUTER_ADMIN_KEY_FILE": str(admin)})
    assert all(s.check_api(f"Bearer {k}") for k in ("k1", "k2", "k-file", "adm-file"))
    assert not s.check_api("Bearer k3") and not s.check_api(None) and not s.check_api("Basic k1")
    assert s.check_admin("Bearer adm-file") and not s.check_admin("Bearer k1")
    assert load_secrets({}).api_open and not load_secrets({}).admin_enabled


def test_scorers_match_their_documented_statistics():
    rng = np.random.default_rng(0)
    lps = -rng.exponential(0.8, size=37)
    tops = [sorted([lp, lp - rng.exponential(1.0), lp - 3.0], reverse=True) for lp in lps]
    toks = [TokenLogprob(float(lp), tuple(float(x) for x in t)) for lp, t in zip(lps, tops, strict=True)]
    assert math.isclose(make_scorer("mean_logprob").score(toks), float(np.mean(lps)))
    for q in (0.0, 0.1, 0.25, 0.5):
        assert math.isclose(make_scorer("quantile_logprob", {"q": q}).score(toks), float(np.quantile(lps, q)))
    assert math.isclose(make_scorer("margin").score(toks), float(np.mean([t[0] - t[1] for t in tops])))
    assert make_scorer("mean_logprob").score([]) == -math.inf
    # Both wire layouts give the same tokens.
    content = {"content": [{"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "b", "logprob": -1.0},
                                                                             {"token": "a", "logprob": -0.5}]}]}
    legacy = {"tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [{"a": -0.5, "b": -1.0}],
              "text_offset": [0]}
    assert parse_logprobs(content) == parse_logprobs(legacy) == [TokenLogprob(-0.5, (-0.5, -1.0))]
    assert parse_logprobs(None) == [] and parse_logprobs({"content": None}) == []
