"""Re-scheduling on SkyServe: each kind of change reaches SkyPilot as the right call (recording fake behind the real
skyserve backend), and the real SDK adapter's calls are checked against SkyPilot's own function signatures
(autospecs of the real `sky.serve` functions) and SkyPilot's own service validation."""

from __future__ import annotations

from unittest import mock

import pytest

from cascadia_sky.launch import launcher
from cascadia_sky.launch.state import StateStore
from cascadia_sky.planner.plan import Plan
from tests.launch.helpers import RecordingSkyApi, example_plan


def _with_stage(plan: Plan, i: int, **changes) -> Plan:
    stages = list(plan.stages)
    stages[i] = stages[i].model_copy(update=changes)
    return plan.model_copy(update={"stages": stages})


def _updates(api: RecordingSkyApi, since: int) -> list[tuple[str, str]]:
    return [(name, info["mode"]) for op, name, info in api.calls[since:] if op == "serve_update"]


def test_update_mode_per_kind_of_change(fake_sky: RecordingSkyApi, tmp_path) -> None:
    store = StateStore(tmp_path)
    plan = example_plan("deepseek").with_launch(backend="skyserve", ready_timeout_s=30)
    launcher.up(launcher.Target(plan), store=store)
    n = len(fake_sky.calls)
    # replicas only: a rolling update of that stage's service (SkyServe reuses the running replicas); the router
    # is left alone (it reaches the stage through the service's load balancer, whose endpoint stays)
    scaled = _with_stage(plan, 1, replicas=plan.stages[1].replicas + 1)
    res = launcher.up(launcher.Target(scaled), store=store)
    assert [(a.op, a.stage) for a in res.actions] == [("scale_stage", "medium")]
    assert _updates(fake_sky, n) == [("deepseek-medium", "rolling")]
    task = next(info["task"] for op, name, info in fake_sky.calls[n:] if op == "serve_update")
    assert task["service"]["replicas"] == plan.stages[1].replicas + 1
    # new engines (TP): blue/green, so old and new versions never share traffic and thresholds
    n = len(fake_sky.calls)
    wider = _with_stage(scaled, 0, tp=scaled.stages[0].tp * 2)
    res = launcher.up(launcher.Target(wider), store=store)
    assert [(a.op, a.stage) for a in res.actions] == [("update_stage", "small")]
    assert _updates(fake_sky, n)[0] == ("deepseek-small", "blue_green")
    # the same plan again: nothing
    n = len(fake_sky.calls)
    assert launcher.up(launcher.Target(wider), store=store).actions == ()
    assert _updates(fake_sky, n) == []


def test_sdk_adapter_update_matches_skypilots_signatures(tmp_path) -> None:
    """SkyApi.serve_update as it runs for real, with SkyPilot's network calls replaced by autospecs of the real
    functions (a wrong argument name, count or mode type fails here) and the task validated by SkyPilot itself."""
    sky = pytest.importorskip("sky")
    from sky.serve import serve_utils

    from cascadia_sky.launch.skypilot import SkyApi
    from cascadia_sky.launch.tasks import stage_task

    plan = example_plan("deepseek")
    cfg = stage_task(plan, plan.stages[0], service=True)
    update = mock.create_autospec(sky.serve.update)
    stream = mock.create_autospec(sky.stream_and_get)
    with mock.patch.object(sky.serve, "update", update), mock.patch.object(sky, "stream_and_get", stream):
        for mode in ("rolling", "blue_green"):
            SkyApi().serve_update(cfg, "deepseek-small", {}, mode)
    assert [c.kwargs["mode"] for c in update.call_args_list] == [serve_utils.UpdateMode.ROLLING,
                                                                 serve_utils.UpdateMode.BLUE_GREEN]
    task, service = update.call_args_list[0].args
    assert isinstance(task, sky.Task) and service == "deepseek-small"
    assert stream.call_count == 2
    with pytest.raises(ValueError):
        SkyApi().serve_update(cfg, "deepseek-small", {}, "canary")   # not a SkyServe update mode


@pytest.mark.e2e   # 10-16 s (SkyPilot's optimizer in child processes, or a long replay): CI's e2e stage
def test_clusters_scale_up_then_drain_down_under_load(tmp_path, monkeypatch) -> None:
    """Clusters backend (real local engines behind the fake SkyPilot, the real supervised router): a replica added
    by `scale_stage` joins the router once it serves; removed again, it leaves the router first, drains, and only
    then is its cluster downed. A light load throughout sees no failed request; the kept replica never restarts."""
    import threading
    import time

    import httpx

    from cascadia_sky.engines.process import free_port
    from cascadia_sky.launch.backends import register_backend, unregister_backend
    from cascadia_sky.launch.backends.sky import ClustersBackend
    from tests.launch.helpers import processes_of

    monkeypatch.setenv("CASCADIA_HOME", str(tmp_path))
    api = RecordingSkyApi(engines=True)
    previous = register_backend("clusters", lambda: ClustersBackend(api=api, poll_s=0.01))
    store = StateStore(tmp_path)
    port = free_port()
    plan = example_plan("local").with_launch(backend="clusters", router_port=port, ready_timeout_s=300)
    failures: list[str] = []
    ok = [0]
    stop = threading.Event()

    def load() -> None:
        key = (tmp_path / "deployments" / "local" / "api_key").read_text().strip()
        while not stop.is_set():
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                               headers={"Authorization": f"Bearer {key}"},
                               json={"model": "local", "prompt": "The capital of France is", "max_tokens": 6})
                if r.status_code == 200:
                    ok[0] += 1
                else:
                    failures.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            time.sleep(0.2)

    worker = threading.Thread(target=load)
    try:
        launcher.up(launcher.Target(plan), store=store)
        small0 = store.get("local").component("small/0").url
        worker.start()
        two = _with_stage(plan, 0, replicas=2)
        res = launcher.up(launcher.Target(two), store=store)
        assert [(a.op, a.stage) for a in res.actions] == [("scale_stage", "small")]
        assert [n for op, n in api.ops() if op == "cluster_launch"][-1] == "local-small-1"
        admin = (tmp_path / "deployments" / "local" / "admin_key").read_text().strip()

        def live() -> list[list[str]]:
            body = httpx.get(f"http://127.0.0.1:{port}/admin/config",
                             headers={"Authorization": f"Bearer {admin}"}).json()
            return [s["endpoints"] for s in body["config"]["stages"]]

        deadline = time.monotonic() + 30
        while len(live()[0]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(live()[0]) == 2
        time.sleep(2)
        res = launcher.up(launcher.Target(plan), store=store)           # back to one replica
        assert [(a.op, a.stage) for a in res.actions] == [("scale_stage", "small")]
        assert ("cluster_down", "local-small-1") in api.ops()
        assert live()[0] == [small0]
        assert [c.name for c in store.get("local").components if c.stage == "small"] == ["small/0"]
        time.sleep(2)
    finally:
        stop.set()
        if worker.is_alive():
            worker.join()
        launcher.down("local", store=store)
        unregister_backend("clusters", previous)
    assert failures == [], failures[:5]
    assert ok[0] >= 5
    assert api.clusters == {} and processes_of(tmp_path) == []


def _router_doc(store: StateStore, name: str) -> dict:
    import httpx

    admin = (store.deployment_dir(name) / "admin_key").read_text().strip()
    base = store.get(name).endpoint.removesuffix("/v1")
    return httpx.get(base + "/admin/config", headers={"Authorization": f"Bearer {admin}"}).json()["config"]


def test_skyserve_thresholds_only_are_swapped_into_the_running_router(tmp_path, monkeypatch) -> None:
    """A threshold change on SkyServe reaches the router service's running replica through its authenticated admin
    API (a real router process behind the recording fake): no `sky serve update`, no restart, the new threshold
    live. A router that refuses the swap (here: its admin key changed under it) is rolled out instead."""
    from cascadia_sky.launch.backends import register_backend, unregister_backend
    from cascadia_sky.launch.backends.sky import SkyServeBackend
    from tests.launch.helpers import processes_of

    monkeypatch.setenv("CASCADIA_HOME", str(tmp_path))
    api = RecordingSkyApi(routers=True)
    previous = register_backend("skyserve", lambda: SkyServeBackend(api=api, poll_s=0.05))
    store = StateStore(tmp_path)
    plan = example_plan("deepseek").with_launch(backend="skyserve", ready_timeout_s=60)
    try:
        launcher.up(launcher.Target(plan), store=store)
        router = api.services["deepseek-router"]["proc"]
        before = _router_doc(store, "deepseek")
        n = len(api.calls)
        lower = round(plan.stages[0].threshold - 0.25, 4)
        swapped = _with_stage(plan, 0, threshold=lower)
        res = launcher.up(launcher.Target(swapped), store=store)
        assert [a.op for a in res.actions] == ["update_router"]
        assert not any(op in ("serve_up", "serve_update") for op, _ in api.ops()[n:]), api.ops()[n:]
        assert api.services["deepseek-router"]["proc"] is router and router.alive()   # the same process
        after = _router_doc(store, "deepseek")
        assert after["stages"][0]["threshold"] == lower != before["stages"][0]["threshold"]
        assert launcher.up(launcher.Target(swapped), store=store).actions == ()           # recorded as done
        # a router that refuses the swap: rolled out with the new config (and the new admin key) instead
        (store.deployment_dir("deepseek") / "admin_key").unlink()
        again = _with_stage(swapped, 0, threshold=round(lower - 0.25, 4))
        n = len(api.calls)
        launcher.up(launcher.Target(again), store=store)
        assert [(name, info["mode"]) for op, name, info in api.calls[n:] if op == "serve_update"] == [
            ("deepseek-router", "rolling")]
        assert _router_doc(store, "deepseek")["stages"][0]["threshold"] == round(lower - 0.25, 4)
    finally:
        launcher.down("deepseek", store=store)
        unregister_backend("skyserve", previous)
    assert api.services == {} and processes_of(tmp_path) == []


def _watched_spec(tmp_path) -> str:
    """examples/deepseek.yaml on SkyServe with reschedule.enabled (its data files by absolute path)."""
    import yaml

    from tests.launch.helpers import REPO

    data = yaml.safe_load((REPO / "examples" / "deepseek.yaml").read_text())
    data["quality"]["profile"] = str(REPO / "examples" / data["quality"]["profile"])
    data["workload"]["trace"] = str(REPO / "examples" / data["workload"]["trace"])
    data["infra"] = {**(data.get("infra") or {}), "backend": "skyserve"}
    data["reschedule"] = {"enabled": True}
    path = tmp_path / "spec" / "deepseek.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_skyserve_watcher_launch_apply_read_back_and_down(fake_sky: RecordingSkyApi, tmp_path, monkeypatch) -> None:
    """reschedule.enabled on SkyServe: `up` launches the watcher as a CPU cluster beside the router (SkyPilot's own
    parser accepts its task; keys only as secrets), the watcher's loop (run here on its bundle, as its task runs it)
    re-plans and applies through the same backend and prints its state; `status` reads that back (plan, history),
    `up` of the same plan then does nothing, a change from here relaunches the watcher, `down` removes it."""
    import io

    import sky

    from cascadia_sky.errors import UserInputError
    from cascadia_sky.launch.skypilot import SkyApi
    from cascadia_sky.launch.tasks import to_yaml
    from cascadia_sky.planner.planner import make_plan
    from cascadia_sky.reschedule.history import History, history_lines
    from cascadia_sky.reschedule.loop import reschedule_pass
    from cascadia_sky.reschedule.remote import StateReporter, prepare, pull
    from cascadia_sky.spec import load_spec
    from tests.test_reschedule_loop import _stats

    monkeypatch.setenv("HOME", str(tmp_path / "user"))        # no ~/.sky/config.yaml naming an API server
    monkeypatch.delenv("SKYPILOT_API_SERVER_ENDPOINT", raising=False)
    store = StateStore(tmp_path / "laptop")
    spec = _watched_spec(tmp_path)
    plan = make_plan(load_spec(spec)).with_launch(ready_timeout_s=30)
    assert plan.launch.backend == "skyserve" and plan.launch.reschedule.enabled
    with pytest.raises(UserInputError, match="local one .*sky api login"):    # it could not act from a cluster
        launcher.up(launcher.Target(plan, spec), store=store)
    assert fake_sky.services == {} and fake_sky.clusters == {}

    monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", "https://sky-api.example.invalid")
    res = launcher.up(launcher.Target(plan, spec), store=store)
    assert [a.op for a in res.actions][-1] == "launch_watcher"
    launch = [info for op, name, info in fake_sky.calls if op == "cluster_launch" and name == "deepseek-watch"]
    assert len(launch) == 1
    task, secrets = launch[0]["task"], launch[0]["secrets"]
    assert set(secrets) >= {"CASCADIA_ROUTER_API_KEYS", "CASCADIA_ROUTER_ADMIN_KEY", "CASCADIA_ENGINE_KEYS",
                            "SKYPILOT_API_SERVER_ENDPOINT"}
    text = to_yaml(task)
    assert not any(v in text for k, v in secrets.items() if k != "SKYPILOT_API_SERVER_ENDPOINT")
    assert "accelerators" not in text and task["resources"]["cpus"]
    parsed = SkyApi()._task(task, secrets)                       # SkyPilot's own parser, as the real launch does
    assert isinstance(parsed, sky.Task) and parsed.envs["DEPLOYMENT"] == "deepseek"
    bundle = tmp_path / "laptop" / "deployments" / "deepseek" / "watch-bundle"
    assert StateStore(bundle / "home").names() == ["deepseek"]
    assert load_spec(bundle / "spec" / "deepseek.yaml").reschedule.enabled        # the copies load
    view = launcher.status("deepseek", store=store)[0]
    assert view.components["watch"].value == "ready" and view.status.value == "ready"
    assert launcher.up(launcher.Target(plan, spec), store=store).actions == ()

    # --- on the watcher: its bundle, its keys from the secrets, the loop applying a change -------------------------
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CASCADIA_HOME", str(tmp_path / "watch-state"))   # restored after the test
    monkeypatch.setenv("CASCADIA_IN_WATCHER", "")
    wstore = prepare(bundle, "deepseek", tmp_path / "watch-state")
    out = io.StringIO()
    reporter = StateReporter(wstore, "deepseek", out)
    rate, t, n = plan.workload_rate_rps, 1_000_000.0, len(fake_sky.calls)
    for k in range(plan.launch.reschedule.windows):
        r = reschedule_pass("deepseek", apply=True, store=wstore, stats=_stats(rate * 2.5, plan), now=t + 60 * k)
        reporter(r)
    assert r.applied and r.kind in ("scale", "relaunch")
    assert any(op == "serve_update" for op, _ in fake_sky.ops()[n:])
    assert ("cluster_launch", "deepseek-watch") not in fake_sky.ops()[n:]      # the watcher never relaunches itself
    assert out.getvalue().count("cascadia-watch-state ") == 1
    fake_sky.logs["deepseek-watch"] = "setup ...\n" + out.getvalue()

    # --- back here: status reads the watcher's state; `up` of what runs changes nothing ------------------------------
    monkeypatch.setenv("CASCADIA_HOME", str(tmp_path / "laptop"))
    monkeypatch.delenv("CASCADIA_IN_WATCHER")
    assert pull("deepseek", store) == 2                                         # applying, applied
    new = wstore.get("deepseek").plan
    assert store.get("deepseek").plan_json == new.to_json() != plan.to_json()
    lines = history_lines("deepseek", store)
    assert any(line.startswith(f"last change ({r.kind})") for line in lines), lines
    assert pull("deepseek", store) == 0 and len(History(store).events("deepseek")) == 2
    assert launcher.up(launcher.Target(new, spec), store=store).actions == ()
    # a change made here relaunches the watcher with a bundle holding it (the old one's lines no longer count)
    bigger = _with_stage(new, 0, replicas=new.stages[0].replicas + 1)
    n = len(fake_sky.calls)
    launcher.up(launcher.Target(bigger, spec), store=store)
    assert [(op, name) for op, name in fake_sky.ops()[n:] if name == "deepseek-watch" and "cluster" in op] == [
        ("cluster_down", "deepseek-watch"), ("cluster_launch", "deepseek-watch")]
    assert StateStore(bundle / "home").get("deepseek").plan_json == bigger.to_json()

    msg = launcher.down("deepseek", store=store)
    assert "deepseek-watch" in msg and fake_sky.clusters == {} and fake_sky.services == {}


def test_dry_run_checks_the_watcher_task_with_skypilot(tmp_path, monkeypatch) -> None:
    """`up --dryrun` of a SkyServe cascade with reschedule.enabled: the watcher's task is one of the tasks SkyPilot's
    own parser and optimizer check (CPU only: not priced from the GPU catalogs)."""
    pytest.importorskip("sky")
    from cascadia_sky.planner.planner import make_plan
    from cascadia_sky.spec import load_spec

    spec = _watched_spec(tmp_path)
    plan = make_plan(load_spec(spec))
    res = launcher.up(launcher.Target(plan, spec), store=StateStore(tmp_path / "home"), dryrun=True)
    items = {i["name"]: i for i in res.dryrun.items}
    watch = items["deepseek-watch"]
    assert "re-schedule watcher" in watch["kind"] and "python -m cascadia_sky.reschedule.remote" in watch["task"]
    assert watch["choice"].startswith("not priced")
    assert [a.op for a in res.actions][-1] == "launch_watcher"
