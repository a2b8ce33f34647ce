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
    # replicas only: a rolling update of that stage's service (SkyServe reuses the running replicas), then the
    # router is re-pointed
    scaled = _with_stage(plan, 1, replicas=plan.stages[1].replicas + 1)
    res = launcher.up(launcher.Target(scaled), store=store)
    assert [(a.op, a.stage) for a in res.actions] == [("scale_stage", "medium")]
    assert _updates(fake_sky, n) == [("deepseek-medium", "rolling"), ("deepseek-router", "rolling")]
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
