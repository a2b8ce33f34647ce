"""Hostile and careless input (issue 14, items 3 and 5-8), through real uvicorn on 127.0.0.1: every bad request is a
4xx in the OpenAI error shape and leaves its keep-alive connection usable; an engine that answers garbage counts as
that stage failing; a hot swap cannot lock the admin API out nor silently drop fields; an empty keys file never
turns authentication off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from cascadia_sky.engines import free_port
from router import ConfigError, Secrets, create_app, load_secrets, parse_config
from tests.router.helpers import FakeEngine, RawConnection, serve_app, two_stage_config

MSG = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parents[1]
GOOD = json.dumps({"model": "cascade", "messages": MSG}).encode()
DEEP = 100_000


def _chat(extra: str) -> bytes:
    return b'{"messages": [{"role": "user", "content": "hi"}], ' + extra.encode() + b"}"


HOSTILE = {
    "model_list": _chat('"model": ["cascade"]'),
    "model_dict": _chat('"model": {"a": 1}'),
    "n_overflow": _chat('"model": "cascade", "n": 1e400'),
    "top_logprobs_infinity": _chat('"model": "cascade", "logprobs": true, "top_logprobs": Infinity'),
    "temperature_nan": _chat('"model": "cascade", "temperature": NaN'),
    "n_huge_int": _chat('"model": "cascade", "n": ' + "9" * 5000),
    "n_string": _chat('"model": "cascade", "n": "many"'),
    "messages_missing": b'{"model": "cascade"}',
    "messages_not_list": b'{"model": "cascade", "messages": "hi"}',
    "stream_options_list": _chat('"model": "cascade", "stream": true, "stream_options": [1]'),
    "deep_nesting": b'{"model": "cascade", "messages": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "deep_unknown_field": _chat('"model": "cascade", "x": ' + "{\"a\":" * 200 + "1" + "}" * 200),
    "not_utf8": b'{"model": "cascade", "messages": "\xff\xfe"}',
    "top_level_list": b"[1, 2]",
}


@pytest.fixture
def fakes() -> Iterator[dict[str, tuple[FakeEngine, str]]]:
    with ExitStack() as stack:
        out = {}
        for name in ("small-a", "small-b", "big-a"):
            fe = FakeEngine(name, logprob=-0.1 if name.startswith("small") else -0.3)
            out[name] = (fe, stack.enter_context(serve_app(fe.app())))
        yield out


def _router(fakes, small=("small-a",), threshold: float = -0.5, secrets: Secrets | None = None, **extra):
    doc = two_stage_config([fakes[n][1] for n in small], [fakes["big-a"][1]], threshold, health_cooldown_s=30,
                           **extra)
    return serve_app(create_app(parse_config(doc, "test"), secrets))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_body_is_a_4xx_and_the_connection_stays_usable(fakes, name):
    with _router(fakes) as url:
        conn = RawConnection(url)
        try:
            status, _, body = conn.request("POST", "/v1/chat/completions", HOSTILE[name])
            status2, _, body2 = conn.request("POST", "/v1/chat/completions", GOOD)  # same socket
        finally:
            conn.close()
    assert 400 <= status < 500, (status, body[:300])
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert status2 == 200 and json.loads(body2)["choices"]
    assert fakes["small-a"][0].requests == 1  # only the good request reached an engine


def test_admin_endpoint_refuses_deep_json_and_keeps_the_connection(fakes):
    admin = {"authorization": "Bearer adm"}
    with _router(fakes, secrets=Secrets(admin_key="adm")) as url:
        conn = RawConnection(url)
        try:
            status, _, body = conn.request("POST", "/admin/config", b"[" * DEEP + b"]" * DEEP, admin)
            status2, _, body2 = conn.request("GET", "/admin/config", headers=admin)
        finally:
            conn.close()
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    assert status2 == 200 and json.loads(body2)["version"] == 1


def test_an_unexpected_error_is_a_500_that_keeps_the_connection(fakes):
    """The last line of defence: a bug inside a handler answers 500 in the error shape and the client's keep-alive
    connection survives (Starlette's outermost handler would re-raise, and uvicorn then drops the socket)."""
    app = create_app(parse_config(two_stage_config([fakes["small-a"][1]], [fakes["big-a"][1]]), "test"))

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with serve_app(app) as url:
        conn = RawConnection(url)
        try:
            status, _, body = conn.request("GET", "/boom")
            status2, _, _ = conn.request("GET", "/health")
        finally:
            conn.close()
    assert status == 500 and json.loads(body)["error"]["type"] == "server_error"
    assert status2 == 200


# ---- engines that answer garbage (item 7) ---------------------------------------------------------------------

GARBAGE = pytest.mark.parametrize(("mode", "stream"), [("bad_logprobs", False), ("bad_logprobs", True),
                                                        ("bad_sse", True)])


@GARBAGE
def test_garbage_from_an_engine_is_retried_on_another_replica(fakes, mode, stream):
    fakes["small-a"][0].mode = mode
    with _router(fakes, small=("small-a", "small-b"), early_decision=None) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        for _ in range(2):  # whichever replica the balancer picks first
            if stream:
                with client.chat.completions.with_streaming_response.create(
                        model="cascade", messages=MSG, stream=True) as resp:
                    text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
                    headers = resp.headers
            else:
                resp = client.chat.completions.with_raw_response.create(model="cascade", messages=MSG)
                text, headers = resp.parse().choices[0].message.content, resp.headers
            assert headers["x-cascadia-stage"] == "small"
            assert text == "".join(f" small-b{i}" for i in range(8))
    assert fakes["small-a"][0].requests == 1  # failed once, then cooled down
    assert fakes["big-a"][0].requests == 0


@GARBAGE
def test_garbage_escalates_and_falls_back(fakes, mode, stream):
    fakes["small-a"][0].mode = mode
    with _router(fakes, early_decision=None) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        if stream:
            with client.chat.completions.with_streaming_response.create(model="cascade", messages=MSG,
                                                                        stream=True) as resp:
                list(resp.parse())
                headers = resp.headers
        else:
            headers = client.chat.completions.with_raw_response.create(model="cascade", messages=MSG).headers
        assert headers["x-cascadia-stage"] == "big"
        assert headers["x-cascadia-path"].startswith("small=failed,big=answered")
        # the last stage answering garbage: the small stage's answer comes back as the fallback
        fakes["small-a"][0].mode, fakes["big-a"][0].mode = "ok", mode
        fakes["small-a"][0].logprob = -2.0  # below the threshold: escalates, then serves as the fallback
        r = httpx.post(url + "/v1/chat/completions", timeout=30,
                       json={"model": "cascade", "messages": MSG, "stream": stream})
    assert r.status_code == 200 and r.headers["x-cascadia-fallback"] == "true"
    assert r.headers["x-cascadia-stage"] == "small"


# ---- hot swap bounds and restart-only fields (item 8) -----------------------------------------------------------

def test_hot_swap_cannot_lock_out_the_admin_api(fakes):
    admin = {"authorization": "Bearer adm"}
    with _router(fakes, secrets=Secrets(admin_key="adm")) as url:
        doc = two_stage_config([fakes["small-a"][1]], [fakes["big-a"][1]], max_request_bytes=1)
        r = httpx.post(url + "/admin/config", json=doc, headers=admin)
        assert r.status_code == 400 and "max_request_bytes" in r.json()["error"]["message"]
        doc["max_request_bytes"] = 65_536  # the smallest accepted
        assert httpx.post(url + "/admin/config", json=doc, headers=admin).status_code == 200
        big = two_stage_config([fakes["small-a"][1]], [fakes["big-a"][1]], max_request_bytes=65_536)
        big["padding"] = "x" * 100_000  # bigger than the live request limit: admin bodies have their own
        r = httpx.post(url + "/admin/config", json=big, headers=admin)
    assert r.status_code == 400 and "padding" in r.json()["error"]["message"]  # read, then refused for the key


@pytest.mark.parametrize(("field", "value"), [("stats_windows_s", [10]), ("max_connections", 5)])
def test_hot_swap_refuses_restart_only_fields_and_says_so(fakes, field, value):
    admin = {"authorization": "Bearer adm"}
    with _router(fakes, secrets=Secrets(admin_key="adm"), max_connections=77) as url:
        doc = two_stage_config([fakes["small-a"][1]], [fakes["big-a"][1]], **{field: value})
        r = httpx.post(url + "/admin/config", json=doc, headers=admin)
        live = httpx.get(url + "/admin/config", headers=admin).json()
        # leaving the field out keeps the live value, also for a plan swap
        plan = {"schema_version": 1, "name": "cascade", "scorer": "mean_logprob",
                "stages": [{"name": "small", "served_model_name": "small", "threshold": -0.4},
                           {"name": "big", "served_model_name": "big", "threshold": None}]}
        r2 = httpx.post(url + "/admin/config", headers=admin, json={
            "plan": plan, "endpoints": {"small": [fakes["small-a"][1]], "big": [fakes["big-a"][1]]}})
        after = httpx.get(url + "/admin/config", headers=admin).json()
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert field in msg and "restart" in msg
    assert live["version"] == 1
    assert r2.status_code == 200, r2.text
    assert after["config"]["max_connections"] == 77 and after["config"]["stats_windows_s"] == [60, 300, 3600]
    assert after["config"]["stages"][0]["threshold"] == -0.4


# ---- keys files (item 3) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", "\n\n", "# users\n# nobody yet\n", "   \n# x\n"])
def test_an_empty_keys_file_refuses_to_start(tmp_path, content):
    keys = tmp_path / "keys"
    keys.write_text(content)
    with pytest.raises(ConfigError, match="no API key"):
        load_secrets({}, api_keys_file=str(keys))
    with pytest.raises(ConfigError, match="no API key"):
        load_secrets({"CASCADIA_ROUTER_API_KEYS_FILE": str(keys)})
    with pytest.raises(ConfigError, match="no API key"):
        load_secrets({"CASCADIA_ROUTER_API_KEYS": " , ,"})


def _router_proc(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cfg = tmp_path / "router.json"
    cfg.write_text(json.dumps(two_stage_config(["http://127.0.0.1:1"], ["http://127.0.0.1:2"])))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CASCADIA_ROUTER_")}
    return subprocess.Popen([sys.executable, "-m", "router", "--config", str(cfg), *args], cwd=ROOT,
                            env={**clean, **(env or {}), "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_router_process_refuses_an_empty_keys_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# only a comment\n")
    port = free_port()
    proc = _router_proc(tmp_path, "--api-keys-file", str(keys), "--port", str(port))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # it started serving instead of refusing
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    assert "no API key" in out and str(keys) in out


def test_open_router_on_loopback_says_so_loudly(tmp_path):
    port = free_port()
    proc = _router_proc(tmp_path, "--port", str(port))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "WARNING" in out and "without API keys" in out and f"127.0.0.1:{port}" in out
