"""Shared by the launcher tests: CLI runs in an isolated state home, process scans, example plans, and the
recording SkyPilot API (the one boundary that needs a cloud) that the sky backends are registered with in tests."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cascadia_sky.planner.plan import Plan

REPO = Path(__file__).resolve().parents[2]
OFFLINE_ENV = {"SKYPILOT_DISABLE_USAGE_COLLECTION": "1", "SKYPILOT_DISABLE_LOCAL_API_SERVER": "1",
               "AWS_EC2_METADATA_DISABLED": "true"}


# What a core install (no extras) lacks: the router's web stack and SkyPilot.
EXTRAS_MODULES = ("fastapi", "uvicorn", "aiohttp", "starlette", "httpx", "prometheus_client", "sky", "boto3")
_BLOCKING_MAIN = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (made unimportable by the test)", name=name)
sys.meta_path.insert(0, _Absent())
sys.argv = ["cascadia", *sys.argv[1:]]
from cascadia_sky.cli import main
main()
"""


def cli(home: Path, *args: str, timeout: float = 120, absent: tuple[str, ...] = (),
        **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run `cascadia ARGS` with its state in `home` (and SkyPilot's HOME there too); the modules named in `absent`
    cannot be imported (as in an install without the extras that bring them)."""
    env = {**os.environ, **OFFLINE_ENV, "CASCADIA_HOME": str(home), "HOME": str(home / "user")}
    (home / "user").mkdir(parents=True, exist_ok=True)
    entry = ["-c", _BLOCKING_MAIN.format(blocked=set(absent))] if absent else ["-m", "cascadia_sky.cli"]
    return subprocess.run([sys.executable, *entry, *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False, **popen)


@pytest.fixture(name="home")
def leak_checked_home(tmp_path: Path) -> Iterator[Path]:
    """`home` for modules that start real processes (import it there): an isolated state home; whatever a test
    leaves running there is stopped and reported as a leak."""
    yield tmp_path
    leaked = processes_of(tmp_path)
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes left behind: {leaked}"


def processes_of(home: Path) -> list[int]:
    """Live processes started for this state home (they inherit CASCADIA_HOME=home), zombies excluded."""
    needle = f"CASCADIA_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2:][:1] != b"Z":
            found.append(int(entry.name))
    return found


@functools.cache
def example_plan(name: str) -> Plan:
    """The plan of examples/<name>.yaml (planned once per test session; plans are frozen, so sharing is safe)."""
    from cascadia_sky.planner.planner import make_plan
    from cascadia_sky.spec import load_spec

    return make_plan(load_spec(REPO / "examples" / f"{name}.yaml"))


class RecordingSkyApi:
    """Stands in for SkyPilot's SDK (implements cascadia_sky.launch.skypilot.SkyApiProtocol, as SkyApi does):
    records every call with the task it got, and answers like SkyServe / SkyPilot would. `ready_after` status polls a service turns READY;
    `fail` names services that go FAILED. Clusters are real local engines when `engines` is set; the clusters
    named in `fail_setup` start nothing and their job fails in setup (with `setup_log` as its log)."""

    def __init__(self, ready_after: int = 1, fail: tuple[str, ...] = (), engines: bool = False,
                 fail_setup: tuple[str, ...] = (), setup_log: str = "", routers: bool = False,
                 no_capacity: Any = (), preempted: tuple[str, ...] = ()) -> None:
        self.no_capacity = no_capacity   # offers (cloud/region/instance_type), or a predicate, with no capacity
        self.preempted = preempted       # services one of whose spot replicas SkyServe reports PREEMPTED
        self.calls: list[tuple[str, str, Any]] = []
        self.services: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, Any] = {}
        self.ready_after = ready_after
        self.fail = fail
        self.engines = engines
        self.fail_setup = fail_setup
        self.setup_log = setup_log
        self.routers = routers      # a router service is a real router process on loopback (its task's config)
        self.logs: dict[str, str] = {}   # job logs of clusters that run no engine (the re-schedule watcher)

    def check(self) -> None:
        self.calls.append(("check", "", None))

    def _endpoint(self, name: str, cfg: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
        """A service's endpoint on loopback: a real router process (`routers`), else a port held bound but not
        listening (connections are refused at once; nothing else can take it; nothing leaves the machine)."""
        import socket

        if self.routers and name.endswith("-router"):
            from cascadia_sky.engines.process import free_port, spawn

            port = free_port()
            argv = [sys.executable, "-m", "router", "--config", cfg["file_mounts"]["~/cascadia/router.json"],
                    "--host", "127.0.0.1", "--port", str(port)]
            proc = spawn("router", name, argv, port, Path(os.environ["CASCADIA_HOME"]) / "fake-sky-logs",
                         env={k: v for k, v in secrets.items() if v})
            return {"endpoint": proc.url, "proc": proc}
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return {"endpoint": f"http://127.0.0.1:{sock.getsockname()[1]}", "sock": sock}

    def provision(self, cfg: dict[str, Any]) -> tuple[str | None, list[Exception]]:
        """What SkyPilot's provisioner does with a task's offers: try them in order (`resources.ordered`, else the
        one pinned offer); an offer without capacity fails with SkyPilot's own ResourcesUnavailableError (as its
        cloud provisioners raise it) and the next is tried. Returns (the offer that came up or None, the failover
        history of real SkyPilot exceptions)."""
        from sky import exceptions

        res = cfg["resources"]
        entries = res.get("ordered") or [{"infra": res.get("infra", ""), "instance_type": res.get("instance_type", "")}]
        history: list[Exception] = []
        for entry in entries:
            key = f"{entry['infra']}/{entry['instance_type']}"
            short = self.no_capacity(key) if callable(self.no_capacity) else key in self.no_capacity
            if not short:
                return key, history
            history.append(exceptions.ResourcesUnavailableError(
                f"Failed to acquire resources in {entry['infra']} for {entry['instance_type']}: "
                "InsufficientInstanceCapacity (fake)"))
        return None, history

    def serve_up(self, cfg: dict[str, Any], service: str, secrets: dict[str, str]) -> str:
        assert service not in self.services, f"serve up of an existing service {service}"
        # what SkyServe's controller does for each replica (the router's CPU replica always finds room)
        offer, history = self.provision(cfg) if cfg.get("resources", {}).get("accelerators") else ("", [])
        self.calls.append(("serve_up", service, {"task": cfg, "secret_names": sorted(secrets), "offer": offer,
                                                 "failover_history": history}))
        self.services[service] = {"polls": 0, **self._endpoint(service, cfg, secrets), "offer": offer}
        return self.services[service]["endpoint"]

    def serve_update(self, cfg: dict[str, Any], service: str, secrets: dict[str, str],
                     mode: str = "rolling") -> None:
        self.calls.append(("serve_update", service, {"task": cfg, "secret_names": sorted(secrets), "mode": mode}))
        svc = self.services[service]
        svc["polls"] = 0
        if svc.get("proc") is not None:   # the router's new version: a new process with the new config
            svc["proc"].stop()
            svc.update({k: v for k, v in self._endpoint(service, cfg, secrets).items() if k != "endpoint"})
            svc["endpoint"] = svc["proc"].url

    def serve_status(self, services: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in services:
            svc = self.services.get(name)
            if svc is None:
                continue
            svc["polls"] += 1
            if svc.get("offer", "") is None:   # no replica could be provisioned on any offer (SkyServe's state)
                out[name] = {"status": "FAILED", "endpoint": svc["endpoint"], "replicas": ["FAILED_PROVISION"]}
                continue
            status = "FAILED" if name in self.fail else "READY" if svc["polls"] > self.ready_after else \
                "REPLICA_INIT"
            if status == "READY" and svc.get("proc") is not None:   # a real router: READY once it answers
                from cascadia_sky.launch.procs import http_get

                status = "READY" if http_get(svc["endpoint"] + "/health")[0] == 200 else "REPLICA_INIT"
                assert svc["proc"].alive(), svc["proc"].log_tail()
            replicas = [status, "PREEMPTED"] if name in self.preempted and status == "READY" else [status]
            out[name] = {"status": status, "endpoint": svc["endpoint"], "replicas": replicas}
        return out

    def serve_down(self, services: list[str]) -> None:
        self.calls.append(("serve_down", ",".join(services), None))
        for name in services:
            svc = self.services.pop(name, None) or {}
            if svc.get("proc") is not None:
                svc["proc"].stop()
            if svc.get("sock") is not None:
                svc["sock"].close()

    def cluster_launch(self, cfg: dict[str, Any], cluster: str, secrets: dict[str, str], port: int) -> str:
        from cascadia_sky.engines import start_bundled

        offer, history = self.provision(cfg) if cfg.get("resources", {}).get("accelerators") else ("", [])
        self.calls.append(("cluster_launch", cluster, {"task": cfg, "port": port, "secrets": dict(secrets),
                                                       "offer": offer, "failover_history": history}))
        if offer is None:   # SkyPilot's own error after its failover: every offer failed
            from sky import exceptions

            raise exceptions.ResourcesUnavailableError(
                f"Failed to provision all possible launchable resources ({len(history)} tried).",
                failover_history=history)
        if "DEPLOYMENT" in cfg["envs"]:   # the re-schedule watcher: no engine; its job log is `logs[cluster]`
            self.clusters[cluster] = None
            self.logs.setdefault(cluster, "")
            return f"http://127.0.0.1:{port}"
        if cluster in self.fail_setup:
            self.clusters[cluster] = None
            return f"http://127.0.0.1:{port}"
        envs = cfg["envs"]
        if "BUNDLED_MODEL" in envs:  # a CPU stage: the engine its task starts, on the port the launcher chose
            engine = start_bundled(envs["BUNDLED_MODEL"], alias=envs["SERVED_MODEL_NAME"], port=port,
                                   api_key=secrets.get("CASCADIA_ENGINE_API_KEY"))
        else:                        # a vLLM stage: a bundled model stands in
            model = {"HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct"}.get(envs["MODEL_ID"],
                                                                                           "gemma-3-270m")
            served = envs["VLLM_ARGS"].split("--served-model-name ")[1].split()[0]
            engine = start_bundled(model, alias=served)
        self.clusters[cluster] = engine
        return engine.url

    def job_status(self, cluster: str) -> str:
        self.calls.append(("job_status", cluster, None))
        engine = self.clusters[cluster]
        if cluster in self.logs:
            return "RUNNING"
        return "FAILED_SETUP" if engine is None else "RUNNING" if engine.alive() else "FAILED"

    def job_log_tail(self, cluster: str, lines: int) -> str:
        self.calls.append(("job_log_tail", cluster, None))
        if cluster in self.logs:
            return "\n".join(self.logs[cluster].splitlines()[-lines:])
        engine = self.clusters[cluster]
        return self.setup_log if engine is None else engine.log_tail()

    def cluster_status(self, clusters: list[str]) -> dict[str, str]:
        return {c: "UP" for c in clusters if c in self.clusters}

    def cluster_down(self, cluster: str) -> None:
        self.calls.append(("cluster_down", cluster, None))
        engine = self.clusters.pop(cluster)
        self.logs.pop(cluster, None)
        if engine is not None:
            engine.stop()

    def ops(self) -> list[tuple[str, str]]:
        return [(op, name) for op, name, _ in self.calls]
