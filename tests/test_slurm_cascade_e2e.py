"""`cascadia up` of a two-stage CPU cascade with the `clusters` backend on the local Slurm cluster, through SkyPilot.

examples/local-slurm.yaml: the stages' engines are real llama.cpp servers (xllamacpp; SmolLM2-135M-Instruct and
gemma-3-270m from PyPI) started by SkyPilot tasks as Slurm jobs; the router runs here. The test sends requests
through the router with the openai client, checks that one is answered by stage 1 and one escalates to stage 2, runs
`cascadia status`, then re-schedules once under a bounded load: two `cascadia reschedule NAME --apply` passes, one
window apart, see the rate leave the plan's band, re-plan and launch one more replica cluster per stage while the
load runs (0 failed requests; the router balances over the new clusters; `status` says what changed and why). Then
`cascadia down`, and checks that SkyPilot, Slurm and this machine are left clean, the added clusters included. It
prints the wall times (up, first answer, re-schedule, down) as one JSON line.

Four 1-CPU clusters on one node: scripts/test.sh starts the local cluster with CASCADIA_SLURM_CPUS=4.

Marked `slurm`: scripts/test.sh runs it between `scripts/local-slurm.sh up` and `down` when CI=true or
CASCADIA_TEST_SLURM=1. Without a running cluster it fails in CI (with the reason) and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml

from cascadia_sky.engines.process import free_port
from cascadia_sky.launch.state import StateStore
from cascadia_sky.reschedule.history import History
from tests.launch.helpers import processes_of
from tests.test_reschedule_local import Load
from tests.test_slurm_smoke import _queue, _slurm_config_value, local_slurm  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
NAME = "local-slurm"                 # the cascade's name in examples/local-slurm.yaml
CLUSTERS = (f"{NAME}-small-0", f"{NAME}-large-0")
ADDED = (f"{NAME}-small-1", f"{NAME}-large-1")   # the replicas the re-schedule adds
ENGINE_MODULE = "cascadia_sky.engines.xllamacpp_server"
UP_TIMEOUT_SECONDS = 1200            # two parallel launches: SkyPilot runtime + engine packages and models from PyPI
CLI_TIMEOUT_SECONDS = 300            # status / down / SkyPilot calls
DRAIN_SECONDS = 60                   # Slurm's queue and the node's processes after down; the API server's stop
# Prompts whose stage-1 confidence (mean token logprob, greedy) is far from the plan's threshold (about -0.89 on the
# synthetic local profile): SmolLM2 continues a count at about -0.07 (accepted) and nonsense at about -2.0
# (escalated to gemma).
CONFIDENT_PROMPT = "1, 2, 3, 4, 5, 6,"
DOUBTFUL_PROMPT = "Zorblax quibbled the vexing"
# The re-schedule: windows of WINDOW_S seconds, WINDOWS of them out of band before a change. The plan is made for
# 0.02 req/s (one replica per stage); LOAD_RPS, evenly spaced, is 15x that (4-5 requests a window: 0.27-0.33
# req/s seen), and a re-plan anywhere in 0.17-0.45 req/s gives two replicas per stage on the synthetic profile.
WINDOW_S = 15
WINDOWS = 2
LOAD_RPS = 0.3
RESCHEDULE = {"enabled": False,     # the test runs the passes itself (`cascadia reschedule --apply`), one a window
              "interval_s": WINDOW_S, "windows": WINDOWS, "windows_down": 4, "cooldown_s": 60,
              "min_requests": 2, "rate_band": 0.5,
              "length_band": 10}     # the load's prompts are ~30 tokens, not the spec's lognormal(80)
SERVE_AFTER_S = 20                   # load on the grown deployment before it stops


def _environment(tmp_path: Path, state_dir: Path) -> dict[str, str]:
    """The CLI's environment: cascadia's state and SkyPilot's client (HOME, runtime dir, its own API server on a
    free port) in the test's temp dir, with the cluster's ssh config; the user's ~/.sky is never touched."""
    home = tmp_path / "home"
    (home / ".slurm").mkdir(parents=True)
    (home / "tmp").mkdir()  # the API server's workers leave sky-tmp* dirs behind when stopped
    shutil.copy(state_dir / "client" / "slurm-config", home / ".slurm" / "config")
    return {**os.environ, "HOME": str(home), "SKY_RUNTIME_DIR": str(home), "TMPDIR": str(home / "tmp"),
            "SKYPILOT_DISABLE_USAGE_COLLECTION": "1", "SKYPILOT_API_SERVER_LOCAL_PORT": str(free_port()),
            "CASCADIA_HOME": str(tmp_path / "cascadia")}


def _spec(tmp_path: Path, alias: str) -> Path:
    """examples/local-slurm.yaml, aimed at this Slurm cluster's alias. Its measured profile says the base gemma model
    is no better than SmolLM2, so its plan sends nothing to stage 2; this test is about escalation through SkyPilot
    clusters, so it plans on the synthetic profile of the same models, where stage 2 is better (threshold about
    -0.89)."""
    data = yaml.safe_load((REPO / "examples" / "local-slurm.yaml").read_text())
    data["infra"]["targets"] = [f"slurm/{alias}"]
    data["quality"]["profile"] = str(REPO / "examples" / "profiles" / "local-synthetic.csv")
    data["resources"]["local"]["max_replicas"] = 2   # the re-schedule may add a replica per stage
    data["reschedule"] = RESCHEDULE
    path = tmp_path / "local-slurm.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(env: dict[str, str], *args: str, timeout: float = CLI_TIMEOUT_SECONDS) -> tuple[subprocess.CompletedProcess[str],
                                                                                          float]:
    """`cascadia ARGS` and its wall time."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cascadia_sky.cli", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)
    return proc, time.monotonic() - t0


def _sky(env: dict[str, str], code: str) -> str:
    """Run SkyPilot SDK code in the test's SkyPilot home (a child process: SkyPilot reads HOME when imported);
    returns the last line it printed."""
    proc = subprocess.run([sys.executable, "-c", "import sky, json\n" + code], env=env, text=True,
                          capture_output=True, timeout=CLI_TIMEOUT_SECONDS, check=False)
    assert proc.returncode == 0, f"SkyPilot call failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _sky_clusters(env: dict[str, str]) -> dict[str, str]:
    return json.loads(_sky(env, "print(json.dumps({r.name: str(r.status.value) for r in sky.get(sky.status())}))"))


def _job_names(state_dir: Path, user: str) -> list[str]:
    """The user's Slurm job names (SkyPilot names a cluster's job <cluster>-<user hash>)."""
    env = {**os.environ, "SLURM_CONF": str(state_dir / "slurm" / "slurm.conf")}
    return subprocess.run(["squeue", "-h", "-u", user, "-o", "%j"], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def _listener(port: int) -> psutil.Process | None:
    """The process listening on `port`, if any."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def _accepts(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port (a closed server's TIME_WAIT sockets do not)."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _cluster_processes(user: str, clusters: tuple[str, ...] = CLUSTERS + ADDED) -> list[str]:
    """Processes of the Slurm user that belong to this cascade's clusters: its engines, SkyPilot's skylet, job
    processes and subprocess daemons (their command lines name the cluster; the daemons exit by themselves about
    30 s after `sky down`, so callers wait for them)."""
    found = []
    for proc in psutil.process_iter(["username", "cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["username"] == user and proc.info["status"] != psutil.STATUS_ZOMBIE and (
                ENGINE_MODULE in cmd or any(c in cmd for c in clusters)):
            found.append(f"{proc.pid}: {cmd[:200]}")
    return found


def _our_processes(home: Path) -> list[str]:
    """Processes started for this test's cascadia home (they inherit CASCADIA_HOME): the supervisor, the router,
    SkyPilot's API server and its workers. Two kinds of SkyPilot's own helpers are left out: its ssh ControlMasters
    to the cluster (ControlPersist; `local-slurm.sh down` closes them) and its subprocess daemons, which wait 30 s
    after terminating a finished request's children and then exit by themselves."""
    left = []
    for pid in processes_of(home):
        try:
            proc = psutil.Process(pid)
            cmd = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        if proc.name() != "ssh" and "sky/skylet/subprocess_daemon.py" not in cmd:
            left.append(f"{pid}: {cmd[:200]}")
    return left


def _eventually(check: Any, wait_s: float = DRAIN_SECONDS) -> Any:
    """`check()` once it is falsy (empty), or its last value after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while (value := check()) and time.monotonic() < deadline:
        time.sleep(1)
    return value


def _ask(client: openai.OpenAI, prompt: str) -> dict[str, Any]:
    """One completion through the router: which stage answered, how many escalations, the text."""
    raw = client.completions.with_raw_response.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    out = raw.parse()
    return {"stage": raw.headers.get("x-cascadia-stage"), "escalations": raw.headers.get("x-cascadia-escalations"),
            "path": raw.headers.get("x-cascadia-path") or "", "text": out.choices[0].text}


def _admin_config(record: Any) -> dict[str, list[str]]:
    """{stage: endpoints} of the running router's live config (its admin API, the deployment's admin key)."""
    admin = (Path(record.api_key_file).parent / "admin_key").read_text().strip()
    base = record.endpoint.removesuffix("/v1")
    body = httpx.get(base + "/admin/config", headers={"Authorization": f"Bearer {admin}"}, timeout=30).json()
    return {s["name"]: sorted(s["endpoints"]) for s in body["config"]["stages"]}


def _reschedule_under_load(env: dict[str, str], home: Path, router_port: int, user: str, state_dir: Path,
                           figures: dict[str, float]) -> list[str]:
    """A bounded load steps up to LOAD_RPS; one `cascadia reschedule --apply` pass per window: the first sees the
    rate out of band (watching), the second (WINDOWS-th) re-plans and adds replica clusters while the load runs.
    Checks 0 failed requests, the kept clusters untouched, the router balancing over the new ones, `status`
    naming the change and its reason. Returns every cluster the deployment has afterwards."""
    store = StateStore(home)
    before = {c.name: (c.handle, c.url) for c in store.get(NAME).components if c.kind == "cluster"}
    record = store.get(NAME)
    load = Load(router_port, Path(record.api_key_file).read_text().strip(), LOAD_RPS, model=NAME).start()
    try:
        t_load = time.monotonic()
        passes = []
        for i in range(WINDOWS):   # pass i reads the window that ends (i + 1) windows after the load started
            time.sleep(max(0.0, t_load + (i + 1) * WINDOW_S + 1 - time.monotonic()))
            run, wall = _cli(env, "reschedule", NAME, "--apply", timeout=UP_TIMEOUT_SECONDS)
            assert run.returncode == 0, f"reschedule pass {i + 1} failed:\n{run.stdout[-4000:]}\n{run.stderr[-6000:]}"
            passes.append(run.stdout)
            assert load.failed == [], load.failed[:5]
            figures[f"pass{i + 1}_s"] = wall
        assert f"watching (1/{WINDOWS} windows)" in passes[0], passes[0]
        assert f"drift_up ({WINDOWS}/{WINDOWS} windows)" in passes[-1] and "applied (scale)" in passes[-1], passes[-1]
        events = History(store).events(NAME, 100)
        applying = next(e for e in events if e.step == "applying")
        applied = next(e for e in events if e.step == "applied" and e.kind == "scale")
        figures["apply_s"] = applied.t - applying.t

        # --- what runs now: the kept clusters untouched, one more per stage, the router over all of them --------
        rec = store.get(NAME)
        plan = rec.plan
        assert [s.replicas for s in plan.stages] == [2, 2], plan.stages
        clusters = {c.name: c for c in rec.components if c.kind == "cluster"}
        assert {c.handle for c in clusters.values()} == set(CLUSTERS + ADDED), clusters
        assert {n: (c.handle, c.url) for n, c in clusters.items() if n in before} == before   # kept as they were
        assert all(c.phase == "ready" for c in clusters.values()), clusters
        assert _sky_clusters(env) == {c: "UP" for c in CLUSTERS + ADDED}
        jobs = _job_names(state_dir, user)
        assert all(any(j.startswith(f"{c}-") for j in jobs) for c in ADDED), jobs
        live = _admin_config(rec)
        wanted = {s.name: sorted(c.url for c in clusters.values() if c.stage == s.name) for s in plan.stages}
        assert live == wanted, (live, wanted)
        served_before = load.ok
        time.sleep(SERVE_AFTER_S)            # served by the grown deployment
    finally:
        load.stop()
    figures["load_requests"] = load.sent
    assert load.failed == [], load.failed[:5]
    assert load.ok >= LOAD_RPS * (WINDOWS * WINDOW_S + SERVE_AFTER_S) * 0.8, (load.ok, load.sent)
    assert load.ok > served_before, "no request answered after the new replicas joined"

    status, _ = _cli(env, "status", NAME)
    assert status.returncode == 0, status.stderr
    text = " ".join(status.stdout.split())
    assert f"{NAME} (clusters): ready" in text, status.stdout
    assert all(f"{c} " in text for c in ("small/1", "large/1")), status.stdout
    assert "last change (scale): drift_up" in text and "rate" in text, status.stdout
    return sorted(c.handle for c in clusters.values())


def test_cascade_up_answers_escalates_reschedules_and_down_leaves_nothing(local_slurm: Path, tmp_path: Path,  # noqa: F811
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    user = _slurm_config_value("User")
    env = _environment(tmp_path, local_slurm)
    home = Path(env["CASCADIA_HOME"])
    router_port = free_port()
    spec = _spec(tmp_path, _slurm_config_value("Host"))
    figures: dict[str, float] = {}
    engine_ports: list[int] = []
    launched = False
    try:
        # --- up: two SkyPilot clusters on Slurm, launched in parallel, then the router here ------------------------
        t0 = time.monotonic()
        launched = True
        up, figures["up_s"] = _cli(env, "up", str(spec), "--yes", "--port", str(router_port),
                                   timeout=UP_TIMEOUT_SECONDS)
        assert up.returncode == 0, f"cascadia up failed:\n{up.stdout[-4000:]}\n{up.stderr[-6000:]}"
        assert f"deployment '{NAME}' is ready (backend clusters)" in up.stdout, up.stdout
        record = StateStore(home).get(NAME)
        assert record is not None and record.phase == "up"
        clusters = [c for c in record.components if c.kind == "cluster"]
        assert sorted(c.handle for c in clusters) == sorted(CLUSTERS)
        assert _sky_clusters(env) == {c: "UP" for c in CLUSTERS}
        jobs = _job_names(local_slurm, user)
        for comp in clusters:
            # At the cluster's head IP, on the port the launcher picked, served by a Slurm job of the cluster's
            # user (started by the SkyPilot task, not by anything on this side).
            assert comp.url == f"http://127.0.0.1:{comp.port}", comp.url
            engine_ports.append(int(comp.port or 0))
            owner = _listener(engine_ports[-1])
            assert owner is not None and owner.username() == user, (comp.name, owner)
            assert ENGINE_MODULE in " ".join(owner.cmdline())
            assert any(j.startswith(f"{comp.handle}-") for j in jobs), f"no Slurm job for {comp.handle}: {jobs}"
        assert len(set(engine_ports)) == 2

        # --- requests through the router: one stays at stage 1, one escalates to stage 2 ---------------------------
        key = Path(record.api_key_file).read_text().strip()
        client = openai.OpenAI(base_url=record.endpoint, api_key=key, max_retries=0, timeout=120)
        t1 = time.monotonic()
        confident = _ask(client, CONFIDENT_PROMPT)
        figures["first_answer_s"] = time.monotonic() - t1
        figures["up_to_first_answer_s"] = time.monotonic() - t0
        doubtful = _ask(client, DOUBTFUL_PROMPT)
        assert confident["text"].strip() and doubtful["text"].strip()
        assert (confident["stage"], confident["escalations"]) == ("small", "0"), confident
        assert (doubtful["stage"], doubtful["escalations"]) == ("large", "1"), doubtful
        assert doubtful["path"].startswith("small=escalated(") and "large=answered" in doubtful["path"], doubtful

        # --- status ------------------------------------------------------------------------------------------------
        status, figures["status_s"] = _cli(env, "status", NAME)
        assert status.returncode == 0, status.stderr
        text = " ".join(status.stdout.split())
        assert f"{NAME} (clusters): ready" in text, status.stdout
        assert all(f"{c} " in text for c in ("small/0", "large/0", "router")), status.stdout
        assert "2 requests" in text and "answered by small 50%, large 50%" in text, status.stdout

        # --- re-schedule under load: one more replica cluster per stage ----------------------------------------------
        t3 = time.monotonic()
        clusters_now = _reschedule_under_load(env, home, router_port, user, local_slurm, figures)
        figures["reschedule_s"] = time.monotonic() - t3
        engine_ports = [int(c.port or 0) for c in StateStore(home).get(NAME).components if c.kind == "cluster"]

        # --- down --------------------------------------------------------------------------------------------------
        down, figures["down_s"] = _cli(env, "down", NAME)
        assert down.returncode == 0, f"cascadia down failed:\n{down.stdout}\n{down.stderr}"
        launched = False
        assert all(c in down.stdout for c in clusters_now), down.stdout

        # --- clean: SkyPilot, Slurm, the node's files and processes, the ports, cascadia's state --------------------
        t2 = time.monotonic()
        assert _sky_clusters(env) == {}
        assert _eventually(lambda: _queue(user)) == "", f"Slurm jobs of {user} left after cascadia down"
        assert _eventually(lambda: _cluster_processes(user)) == []
        slurm_home = local_slurm / "home" / ".sky_clusters"   # runtime dirs: /tmp/<cluster>-<hash> on the node
        left_dirs = [p for c in clusters_now for p in (*slurm_home.glob(f"{c}-*"), *Path("/tmp").glob(f"{c}-*"))]
        assert left_dirs == [], "SkyPilot's per-cluster home or runtime dir is left"
        assert [p for p in (router_port, *engine_ports) if _accepts(p)] == [], "a server still listens"
        assert StateStore(home).get(NAME) is None
        after, _ = _cli(env, "status")
        assert after.returncode == 0 and "no deployments" in after.stdout, after.stdout
        figures["clean_checks_s"] = time.monotonic() - t2
    finally:
        if launched:  # a failure above: take everything down (the failed assertion is what gets reported)
            _cli(env, "down", NAME)
        _sky(env, "sky.api_stop()")
        figures["total_s"] = time.monotonic() - t0
        with capsys.disabled():
            print(f"\n[slurm cascade e2e] {json.dumps({k: round(v, 1) for k, v in figures.items()})}")
    assert not _accepts(int(env["SKYPILOT_API_SERVER_LOCAL_PORT"])), "SkyPilot's API server still listens"
    assert _eventually(lambda: _our_processes(home)) == []
