"""Re-scheduling for real: a local cascade of llama.cpp engines under `cascadia up` with reschedule.enabled, a bounded
load on 127.0.0.1 from a thread pool. When the load steps up the supervisor's watcher detects it within the
configured windows, re-plans, swaps the router's thresholds (no router restart) and adds a replica to each stage
(the running replicas stay), and the load generator sees 0 failed requests. A constant load for the same time
changes nothing."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from cascadia_sky.launch.state import StateStore
from cascadia_sky.reschedule.history import History
from tests.launch.helpers import (
    REPO,
    cli,
    leak_checked_home,  # noqa: F401 (the `home` fixture: no process may leak)
)

pytestmark = [pytest.mark.e2e,   # minutes of real load: scripts/test.sh runs the e2e stage in CI
              pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="process checks read /proc (Linux)"),
              pytest.mark.skipif(__import__("importlib").util.find_spec("xllamacpp") is None,
                                 reason="needs the llama.cpp engines (xllamacpp)")]

INTERVAL_S = 6.0
WINDOWS = 2
SETTINGS = {"enabled": True, "interval_s": INTERVAL_S, "windows": WINDOWS, "windows_down": 4, "cooldown_s": 60,
            "min_requests": 4, "rate_band": 0.5,
            # the prompts below are ~20 tokens under the chat template, not the example's lognormal(80): lengths
            # are not what this test is about (their band is unit-tested in test_reschedule_detect.py)
            "length_band": 10}




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec(tmp: Path, rate_rps: float, **settings: float) -> Path:
    doc = yaml.safe_load((REPO / "examples" / "local.yaml").read_text())
    # the synthetic profile of the same models: its stage 2 is better, so thresholds and replicas both move (on the
    # measured one stage 1 answers everything and stage 2 gets no traffic)
    doc["quality"]["profile"] = str(REPO / "examples" / "profiles" / "local-synthetic.csv")
    doc["workload"]["rate_rps"] = rate_rps
    doc["resources"]["local"]["max_replicas"] = 2
    doc["reschedule"] = {**SETTINGS, **settings}
    path = tmp / "cascade.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Load:
    """Requests at a set rate (evenly spaced) from a bounded thread pool; counts answers and failures."""

    def __init__(self, port: int, key: str, rate_rps: float, workers: int = 6, model: str = "local") -> None:
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.model = model              # the cascade's name
        self.headers = {"Authorization": f"Bearer {key}"}
        self.rate_rps = rate_rps
        self.ok = 0
        self.failed: list[str] = []
        self.fallbacks = 0          # answered, but by an earlier stage because the later one failed
        self.sent = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._slots = threading.Semaphore(workers)   # bounded: never more than `workers` in flight
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, i: int) -> None:
        try:
            r = httpx.post(self.url, headers=self.headers, timeout=120, json={
                "model": self.model, "max_tokens": 8,
                "messages": [{"role": "user", "content": f"Name a colour ({i})."}]})
            with self._lock:
                if r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None:
                    self.ok += 1
                    self.fallbacks += r.headers.get("x-cascadia-fallback") == "true"
                else:
                    self.failed.append(f"{r.status_code}: {r.text[:200]}")
        except Exception as exc:  # noqa: BLE001 (every failure counts, whatever it is)
            with self._lock:
                self.failed.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._slots.release()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_t:
                self._slots.acquire()
                self.sent += 1
                self._pool.submit(self._one, self.sent)
                next_t += 1.0 / self.rate_rps
            time.sleep(0.01)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)


def _pids(store: StateStore) -> dict[str, int | None]:
    rec = store.get("local")
    assert rec is not None
    return {c.name: c.pid for c in rec.components}


def _up(home: Path, spec: Path, port: int) -> tuple[StateStore, str]:
    r = cli(home, "up", str(spec), "--port", str(port), timeout=600)
    assert r.returncode == 0, r.stderr + r.stdout
    os.environ["CASCADIA_HOME"] = str(home)
    return StateStore(home), (home / "deployments" / "local" / "api_key").read_text().strip()


def test_step_up_is_followed_without_a_failed_request(home: Path) -> None:
    port = _free_port()
    store, key = _up(home, _spec(home, 0.05), port)
    try:
        before = _pids(store)
        plan0 = store.get("local").plan
        assert [s.replicas for s in plan0.stages] == [1, 1]
        load = Load(port, key, 0.05).start()
        time.sleep(2 * INTERVAL_S)
        load.rate_rps = 0.7                      # the step
        t_step = time.time()
        history = History(store)
        deadline = time.monotonic() + 300
        applied = None
        while time.monotonic() < deadline:
            applied = next((e for e in history.events("local", 100) if e.step == "applied" and e.kind != "none"),
                           None)
            if applied is not None:
                break
            time.sleep(0.5)
        assert applied is not None, f"no change applied; events: {history.events('local', 100)}"
        applying = next(e for e in history.events("local", 100) if e.step == "applying")
        time.sleep(3 * INTERVAL_S)               # serve on the new deployment for a while
        load.stop()
        detect_s, apply_s = applying.t - t_step, applied.t - applying.t
        print(f"\nstep->decision {detect_s:.1f} s, apply {apply_s:.1f} s; requests ok {load.ok}, "
              f"failed {len(load.failed)}; {applied.kind}: {applied.actions}")
        assert load.failed == [], load.failed[:5]
        assert load.ok >= 20
        # detected within the documented windows: WINDOWS full windows after the step, plus one window of phase
        # overlap, one pass interval of lag and the re-plan
        assert detect_s <= (WINDOWS + 2) * INTERVAL_S + 10, detect_s
        plan1 = store.get("local").plan
        assert [s.replicas for s in plan1.stages] == [2, 2]
        # (the exact planner keeps stage 1's threshold at this step and scales both stages; the router gets its new
        # endpoints and the plan's threshold by a live swap, without a restart: checked below)
        assert "scale stage small" in applied.actions and "scale stage large" in applied.actions
        after = _pids(store)
        assert after["router"] == before["router"]              # thresholds swapped, router not restarted
        assert after["small/0"] == before["small/0"] and after["large/0"] == before["large/0"]  # kept running
        admin = (home / "deployments" / "local" / "admin_key").read_text().strip()
        live = httpx.get(f"http://127.0.0.1:{port}/admin/config", headers={"Authorization": f"Bearer {admin}"}).json()
        stages = live["config"]["stages"]
        assert [len(s["endpoints"]) for s in stages] == [2, 2]
        assert stages[0]["threshold"] == plan1.stages[0].threshold
        status = cli(home, "status", "local")
        assert status.returncode == 0 and "last change (scale)" in status.stdout, status.stdout + status.stderr
    finally:
        r = cli(home, "down", "local", timeout=120)
        assert r.returncode == 0, r.stderr


def test_constant_load_changes_nothing(home: Path) -> None:
    port = _free_port()
    store, key = _up(home, _spec(home, 0.7), port)
    try:
        before = _pids(store)
        plan0 = store.get("local").plan_json
        load = Load(port, key, 0.7).start()
        time.sleep((WINDOWS + 5) * INTERVAL_S)   # as long as the step test's detection and apply took, and more
        load.stop()
        events = History(store).events("local", 100)
        print(f"\nconstant load: ok {load.ok}, failed {len(load.failed)}, events {[(e.step, e.kind) for e in events]}")
        assert load.failed == []
        assert all(e.kind == "none" for e in events), events
        assert store.get("local").plan_json == plan0
        assert _pids(store) == before
        assert len(History(store).observations("local")) >= WINDOWS + 2   # the watcher did watch
    finally:
        r = cli(home, "down", "local", timeout=120)
        assert r.returncode == 0, r.stderr


def test_reschedule_cli_dry_run_prints_and_changes_nothing(home: Path) -> None:
    """`cascadia reschedule NAME` on a deployment with no traffic: one observation, no change."""
    port = _free_port()
    spec = _spec(home, 0.05)
    doc = yaml.safe_load(spec.read_text())
    doc["reschedule"]["enabled"] = False
    spec.write_text(yaml.safe_dump(doc))
    store, _ = _up(home, spec, port)
    try:
        r = cli(home, "reschedule", "local")
        assert r.returncode == 0, r.stderr
        assert "local: no_data" in r.stdout and "0 requests" in r.stdout, r.stdout
        assert json.loads(store.get("local").plan_json)["stages"][0]["replicas"] == 1
    finally:
        cli(home, "down", "local", timeout=120)


def test_step_down_drains_the_removed_replica(home: Path) -> None:
    """Planned for 0.7 req/s (two replicas per stage), the load falls to 0.05 req/s: after windows_down windows a
    smaller plan (sized for the peak x down_headroom) is applied; the surplus replica leaves the router first,
    drains and stops; the kept replicas and the router keep running; no request fails."""
    port = _free_port()
    # 15 s windows: one request in a window is 0.067 req/s, so a plan for peak x 1.25 can be a smaller one
    store, key = _up(home, _spec(home, 0.7, interval_s=15), port)
    try:
        before = _pids(store)
        load = Load(port, key, 0.05).start()
        history = History(store)
        deadline = time.monotonic() + 300
        applied = None
        while time.monotonic() < deadline and applied is None:
            applied = next((e for e in history.events("local", 100) if e.step == "applied" and e.kind != "none"),
                           None)
            time.sleep(0.5)
        assert applied is not None, f"no change applied; events: {history.events('local', 100)}"
        _wait_gone = time.monotonic() + 150
        while time.monotonic() < _wait_gone and len((store.get("local")).components) > 3:
            time.sleep(0.5)
        time.sleep(15)
        load.stop()
        print(f"\nstep down: ok {load.ok}, failed {len(load.failed)}; {applied.kind}: {applied.actions}")
        assert load.failed == [], load.failed[:5]
        plan1 = store.get("local").plan
        after = _pids(store)
        assert sum(s.replicas for s in plan1.stages) < 4
        assert len(after) == sum(s.replicas for s in plan1.stages) + 1, after
        assert after["router"] == before["router"] and after["small/0"] == before["small/0"]
        for name, pid in before.items():
            if name not in after:
                assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    finally:
        r = cli(home, "down", "local", timeout=120)
        assert r.returncode == 0, r.stderr


def _cmdline(pid: int | None) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_engine_change_is_blue_green_without_a_failed_request(home: Path) -> None:
    """Both stages' engines change (`up --plan` of the running plan with another max_context: llama.cpp's --ctx)
    under a bounded load: each new engine starts beside the old one on a port of its own, the router switches to
    the new ones in one swap once they answer, the old ones drain and stop, the new ones take the replicas' names.
    The router keeps running and no request fails (the last stage has no later stage to escalate to: a request it
    cannot serve fails)."""
    port = _free_port()
    store, key = _up(home, _spec(home, 0.05, enabled=False), port)
    try:
        before = store.get("local")
        old = {c.name: c for c in before.components}
        plan = json.loads(store.plan_path("local").read_text())
        for s in plan["stages"]:
            s["max_context"] = s["max_context"] // 2
        changed = home / "plan-ctx.json"
        changed.write_text(json.dumps(plan))
        seen: list[dict[str, tuple[str, str, int | None]]] = []   # the components while the change runs
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                rec = store.get("local")
                if rec is not None:
                    seen.append({c.name: (c.phase, c.desired, c.port) for c in rec.components})
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        load = Load(port, key, 0.7).start()
        time.sleep(5)
        watcher.start()
        t0 = time.monotonic()
        r = cli(home, "up", "--plan", str(changed), timeout=600)
        up_s = time.monotonic() - t0
        done.set()
        watcher.join()
        assert r.returncode == 0, r.stderr + r.stdout
        served_at_switch = load.ok
        time.sleep(8)                                  # served by the new engines
        load.stop()
        stats = httpx.get(f"http://127.0.0.1:{port}/stats", headers={"Authorization": f"Bearer {key}"}).json()
        window = max(stats["windows"].values(), key=lambda w: w["window_s"])     # the whole test
        attempts_failed = {n: s["failed"] for n, s in window["stages"].items()}
        print(f"\nblue/green: up {up_s:.1f} s; requests ok {load.ok}, failed {len(load.failed)}, fallbacks "
              f"{load.fallbacks}; failed engine attempts {attempts_failed} of {window['requests']} requests")
        assert load.failed == [], load.failed[:5]
        assert load.fallbacks == 0                     # never a stage without an engine
        assert attempts_failed == {"small": 0, "large": 0}   # no attempt on a stopped or not yet ready engine
        assert load.ok > served_at_switch
        after = {c.name: c for c in store.get("local").components}
        assert sorted(after) == ["large/0", "router", "small/0"]        # the successors took the replicas' names
        assert after["router"].pid == old["router"].pid                 # the router was not restarted
        admin = (home / "deployments" / "local" / "admin_key").read_text().strip()
        live = httpx.get(f"http://127.0.0.1:{port}/admin/config", headers={"Authorization": f"Bearer {admin}"}).json()
        for i, stage in enumerate(("small", "large")):
            new, was = after[f"{stage}/0"], old[f"{stage}/0"]
            assert new.pid != was.pid and new.port != was.port          # a new engine on a port of its own
            assert "--ctx 1024" in _cmdline(new.pid), _cmdline(new.pid)
            assert not Path(f"/proc/{was.pid}").exists() or b"zombie" in Path(
                f"/proc/{was.pid}/status").read_bytes().lower()          # the old one stopped
            assert live["config"]["stages"][i]["endpoints"] == [new.url]
            # beside: at some moment the old engine still served (ready, wanted) while its successor existed
            both = [s for s in seen if f"{stage}/0+next" in s and s.get(f"{stage}/0", ("",))[0] == "ready"]
            assert both, f"{stage}: never old and new side by side; seen {seen[:3]} ... {seen[-3:]}"
            assert all(s[f"{stage}/0+next"][2] != was.port for s in both if s[f"{stage}/0+next"][2])
    finally:
        r = cli(home, "down", "local", timeout=120)
        assert r.returncode == 0, r.stderr
