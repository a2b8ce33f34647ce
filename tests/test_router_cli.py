"""`cascadia router --plan plan.json --local-engines`: the documented command serves a two-stage cascade of real
local engines that the official openai client uses, streamed and not; Ctrl-C or SIGTERM stops router and engines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from cascadia_sky.engines import free_port

PLAN = Path(__file__).resolve().parents[1] / "router" / "examples" / "plan-local.json"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cascadia_router_command_serves_local_cascade(tmp_path, stop_signal):
    port = free_port()
    env = {**os.environ, "CASCADIA_HOME": str(tmp_path), "CASCADIA_ROUTER_API_KEYS": "k1"}
    cmd = [sys.executable, "-m", "cascadia_sky.cli", "router", "--plan", str(PLAN), "--local-engines",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health").json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0, timeout=60)
        msg = [{"role": "user", "content": "Say hello."}]
        out = client.chat.completions.with_raw_response.create(model="local-cascade", messages=msg, max_tokens=8)
        chunks = list(client.chat.completions.create(model="local-cascade", messages=msg, max_tokens=8,
                                                     stream=True))
        engine_urls = [e["url"] for st in health["stages"].values() for e in st]
    finally:
        proc.send_signal(stop_signal)
        proc.wait(timeout=30)
    assert health["cascade"] == "local-cascade" and list(health["stages"]) == ["small", "large"]
    assert out.headers["x-cascadia-stage"] in ("small", "large")
    assert out.parse().choices[0].message.content is not None
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    for url in engine_urls:  # the engines went down with the router
        try:
            httpx.get(url + "/v1/models", timeout=2)
            raise AssertionError(f"engine {url} still up")
        except httpx.TransportError:
            pass
