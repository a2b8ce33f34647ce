"""The local backend for real: `cascadia up examples/local.yaml` starts two llama.cpp engines and the router under a
supervisor; the openai client gets an answer; `status` shows it; `down` leaves no process behind. Also the failure
paths: an interrupted `up`, a killed supervisor, a crashed engine, `down` twice, an unknown name, a port in use, and
an engine that never becomes ready."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import openai
import pytest

from cascadia_sky.launch.procs import http_get, same_process
from cascadia_sky.launch.state import StateStore
from tests.launch.helpers import leak_checked_home  # noqa: F401 (the `home` fixture: no process may leak)
from tests.launch.helpers import REPO, cli, processes_of

pytestmark = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="process checks read /proc (Linux)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)




def _ask(home: Path, port: int) -> openai.types.chat.ChatCompletion:
    key = (home / "deployments" / "local" / "api_key").read_text().strip()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)
    return client.chat.completions.with_raw_response.create(
        model="local", messages=[{"role": "user", "content": "Name three primary colors."}], max_tokens=16)


def test_up_answer_status_down(home: Path) -> None:
    port = _free_port()
    r = cli(home, "up", "examples/local.yaml", "--port", str(port))
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"http://127.0.0.1:{port}/v1" in r.stdout and "api_key" in r.stdout and "curl" in r.stdout
    raw = _ask(home, port)
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert raw.headers["x-cascadia-stage"] in ("small", "large")
    key_file = home / "deployments" / "local" / "api_key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # Engines answer /v1 only to the router (each stage has its own key); /health stays open for readiness probes.
    keys = json.loads((home / "deployments" / "local" / "engine_keys.json").read_text())
    engines = [c for c in StateStore(home).get("local").components if c.kind == "engine"]   # type: ignore[union-attr]
    assert sorted(keys) == ["large", "small"] and len(set(keys.values())) == 2 and len(engines) == 2
    for c in engines:
        assert http_get(c.url + "/v1/models")[0] == 401 and http_get(c.url + "/health")[0] == 200
        assert http_get(c.url + "/v1/models", {"Authorization": f"Bearer {keys[c.stage]}"})[0] == 200
        other = next(k for s, k in keys.items() if s != c.stage)
        assert http_get(c.url + "/v1/models", {"Authorization": f"Bearer {other}"})[0] == 401
        assert not any(k in Path(f"/proc/{c.pid}/cmdline").read_bytes().decode(errors="ignore")
                       for k in keys.values())                                          # never on a command line
    text = "".join(p.read_text(errors="ignore") for p in (home / "deployments" / "local").rglob("*")
                   if p.is_file() and p.name != "engine_keys.json")
    assert not any(k in text for k in keys.values())                                    # nor in configs or logs

    st = cli(home, "status", "local")
    assert st.returncode == 0, st.stderr
    assert "local (local): ready" in st.stdout
    assert "small/0" in st.stdout and "large/0" in st.stdout and "router" in st.stdout
    assert "1 requests" in st.stdout  # the router's live figures

    again = cli(home, "up", "examples/local.yaml", "--port", str(port))  # idempotent: nothing to do
    assert again.returncode == 0 and "already up to date" in again.stdout

    rec = StateStore(home).get("local")
    assert rec is not None
    pids = [(rec.supervisor_pid, rec.supervisor_start)] + [(c.pid, c.pid_start) for c in rec.components]
    assert all(same_process(p, s) for p, s in pids)
    d = cli(home, "down", "local")
    assert d.returncode == 0 and "stopped local" in d.stdout
    assert not any(same_process(p, s) for p, s in pids)
    assert processes_of(home) == []
    d2 = cli(home, "down", "local")
    assert d2.returncode == 0 and "nothing to stop" in d2.stdout
    st2 = cli(home, "status", "local")
    assert st2.returncode == 2 and "no deployment named 'local'" in st2.stderr


def test_interrupted_up_then_status_and_down(home: Path) -> None:
    """`up` killed (SIGKILL) while engines start: the record explains it, `down` cleans everything."""
    port = _free_port()
    env = {**os.environ, "CASCADIA_HOME": str(home)}
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "cascadia_sky.cli", "up", "examples/local.yaml", "--port",
                             str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = StateStore(home)

    def supervisor_started() -> bool:
        rec = store.get("local")
        return rec is not None and rec.supervisor_pid is not None

    _wait(supervisor_started)
    proc.kill()
    proc.wait()
    rec = store.get("local")
    assert rec is not None and rec.phase in ("launching", "up")
    st = cli(home, "status", "local")
    assert st.returncode == 0
    assert any(f"local (local): {s}" in st.stdout for s in ("launching", "ready"))  # the supervisor carries on
    d = cli(home, "down", "local")
    assert d.returncode == 0 and "supervisor" in d.stdout
    assert processes_of(home) == []


def test_killed_supervisor_and_crashed_engine(home: Path) -> None:
    port = _free_port()
    assert cli(home, "up", "examples/local.yaml", "--port", str(port)).returncode == 0
    store = StateStore(home)
    rec = store.get("local")
    assert rec is not None
    small = rec.component("small/0")
    assert small is not None and small.pid is not None
    os.killpg(small.pid, signal.SIGKILL)  # an engine crash: the supervisor restarts it on the same port

    def restarted() -> bool:
        c = store.get("local").component("small/0")  # type: ignore[union-attr]
        return c is not None and c.restarts == 1 and c.phase == "ready"

    _wait(restarted)
    assert store.get("local").component("small/0").port == small.port  # type: ignore[union-attr]
    assert _ask(home, port).parse().choices[0].message.content
    assert "restarts" in cli(home, "status").stdout

    rec = store.get("local")
    assert rec is not None and rec.supervisor_pid is not None
    os.kill(rec.supervisor_pid, signal.SIGKILL)  # nobody supervises now; engines keep running
    _wait(lambda: not same_process(rec.supervisor_pid, rec.supervisor_start))
    st = cli(home, "status", "local")
    assert "local (local): ready" in st.stdout  # still answering
    d = cli(home, "down", "local")
    assert d.returncode == 0 and "small/0" in d.stdout and "router" in d.stdout
    assert processes_of(home) == []


def test_port_in_use_is_refused_before_anything_starts(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli(home, "up", "examples/local.yaml", "--port", str(port))
    assert r.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in r.stderr and "--port" in r.stderr
    assert StateStore(home).names() == []
    assert processes_of(home) == []


def test_engine_never_ready_times_out_with_its_log_and_cleans_up(home: Path) -> None:
    """A 0.05 s readiness limit no engine can meet (starting Python alone takes longer)."""
    r = cli(home, "up", "examples/local.yaml", "--port", str(_free_port()), "--timeout", "0.05")
    assert r.returncode == 1, r.stdout
    assert "not ready after 0.05 s" in r.stderr and "last lines of" in r.stderr
    assert "stopped everything it had started" in r.stderr
    assert StateStore(home).names() == []
    assert processes_of(home) == []
    assert list((home / "deployments" / "local" / "logs").glob("*.log"))  # logs stay for the post-mortem
