"""Everything that calls SkyPilot. Imported only by the sky backends and the dry run; SkyPilot is imported lazily.

Two parts:
- `SkyApi`: the thin adapter over SkyPilot's client SDK (`sky.serve.up/update/status/down`, `sky.launch`,
  `sky.status`, `sky.down`, `sky.stream_and_get`) that the skyserve and clusters backends act through. A test
  replaces it with a recording fake (the only boundary that cannot run without a cloud).
- The dry run: `check_tasks(tasks, clouds)` runs SkyPilot's own parser (`sky.Task.from_yaml_config`), SkyServe's
  check (`sky.serve.validate_service_task`) and the in-process optimizer (`sky.optimizer.Optimizer.optimize`) on
  every rendered task, in a child process whose HOME is a temporary directory seeded with the shipped catalogs
  (`cascadia_sky.catalog.write_skypilot_catalog`) and with those clouds marked enabled. The user's ~/.sky is never
  touched and nothing reaches the network: the seeded catalog files have no `.meta` checksums, so SkyPilot never
  refreshes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cascadia_sky.catalog import user_catalog_dir
from cascadia_sky.constants import HOME_ENV_VAR
from cascadia_sky.errors import CapacityError, LaunchError, UserInputError

SKY_INSTALL_HINT = "pip install 'cascadia-sky[sky]'"
DRYRUN_TIMEOUT_SECONDS = 300.0
OFFLINE_ENV = {"SKYPILOT_DISABLE_USAGE_COLLECTION": "1", "SKYPILOT_DISABLE_LOCAL_API_SERVER": "1",
               "AWS_EC2_METADATA_DISABLED": "true"}


def import_sky() -> Any:
    """`import sky`, or one clear line saying how to install it."""
    try:
        import sky
    except ImportError:
        raise UserInputError(f"this backend needs SkyPilot; install it: {SKY_INSTALL_HINT}") from None
    return sky


# --- acting: the SDK adapter -------------------------------------------------------------------

@runtime_checkable
class SkyApiProtocol(Protocol):
    """What the sky backends call. `SkyApi` implements it over SkyPilot's SDK; tests register a recording fake that
    implements the same Protocol (a test checks that every method matches, argument for argument)."""

    def check(self) -> None:
        """Preflight: SkyPilot is usable here (raise a CascadiaError saying how to fix it)."""

    def serve_up(self, cfg: dict[str, Any], service: str, secrets: dict[str, str]) -> str: ...

    def serve_update(self, cfg: dict[str, Any], service: str, secrets: dict[str, str],
                     mode: str = "rolling") -> None: ...

    def serve_status(self, services: list[str]) -> dict[str, dict[str, Any]]: ...

    def serve_down(self, services: list[str]) -> None: ...

    def cluster_launch(self, cfg: dict[str, Any], cluster: str, secrets: dict[str, str], port: int) -> str: ...

    def cluster_status(self, clusters: list[str]) -> dict[str, str]: ...

    def cluster_down(self, cluster: str) -> None: ...

    def job_status(self, cluster: str) -> str: ...

    def job_log_tail(self, cluster: str, lines: int) -> str: ...


class SkyApi:
    """SkyPilot's client SDK, reduced to what the backends need. Secrets are attached to the task object only."""

    def check(self) -> None:
        import_sky()

    def _task(self, cfg: dict[str, Any], secrets: dict[str, str]) -> Any:
        """The SkyPilot task with its secrets' values attached to the task object only. The rendered task lists
        its secrets with null values (documentation, and what the dry run shows); SkyPilot 0.14 reads a null secret
        as a reference that a managed secrets provider must resolve at launch and refuses the launch without one,
        so the nulls are dropped here and the values given through `update_secrets` (never in the task's YAML)."""
        import copy

        sky = import_sky()
        cfg = copy.deepcopy(cfg)                                 # SkyPilot pops keys (e.g. `service`) from its input
        declared = cfg.pop("secrets", None) or {}
        inline = {k: v for k, v in declared.items() if v is not None}
        if inline:
            cfg["secrets"] = inline
        task = sky.Task.from_yaml_config(cfg)
        present = {k: v for k, v in secrets.items() if v}
        if present:
            task.update_secrets(present)
        return task

    def serve_up(self, cfg: dict[str, Any], service: str, secrets: dict[str, str]) -> str:
        """Start a SkyServe service; return its endpoint URL."""
        sky = import_sky()
        task = self._task(cfg, secrets)
        sky.serve.validate_service_task(task, pool=False)
        _, endpoint = sky.stream_and_get(sky.serve.up(task, service))
        return _url(endpoint)

    def serve_update(self, cfg: dict[str, Any], service: str, secrets: dict[str, str],
                     mode: str = "rolling") -> None:
        """Roll a changed stage out (`sky serve update`): `rolling` (replica count: replicas reused) or
        `blue_green` (new engines: traffic switches when the new version is ready). No dropped requests."""
        sky = import_sky()
        from sky.serve import serve_utils

        task = self._task(cfg, secrets)
        sky.serve.validate_service_task(task, pool=False)
        sky.stream_and_get(sky.serve.update(task, service, mode=serve_utils.UpdateMode(mode)))

    def serve_status(self, services: list[str]) -> dict[str, dict[str, Any]]:
        """{service: {"status", "endpoint", "replicas": [status, ...]}} for the services that exist."""
        sky = import_sky()
        out = {}
        for rec in sky.get(sky.serve.status(services)) or []:
            out[rec["name"]] = {"status": _name(rec.get("status")), "endpoint": _url(rec.get("endpoint") or ""),
                                "replicas": [_name(r.get("status")) for r in rec.get("replica_info") or []]}
        return out

    def serve_down(self, services: list[str]) -> None:
        sky = import_sky()
        if services:
            sky.stream_and_get(sky.serve.down(services))

    def cluster_launch(self, cfg: dict[str, Any], cluster: str, secrets: dict[str, str], port: int) -> str:
        """Launch one cluster running the task; return the base URL of its server (head node IP, `port`)."""
        sky = import_sky()
        _, handle = sky.get(sky.launch(self._task(cfg, secrets), cluster_name=cluster))
        head_ip = getattr(handle, "head_ip", None)
        if not head_ip:
            raise LaunchError(f"{cluster}: SkyPilot reported no head IP; see `sky status {cluster}`")
        return f"http://{head_ip}:{port}"

    def cluster_status(self, clusters: list[str]) -> dict[str, str]:
        sky = import_sky()
        return {r.name: _name(r.status) for r in sky.get(sky.status(clusters)) or []}

    def cluster_down(self, cluster: str) -> None:
        sky = import_sky()
        sky.stream_and_get(sky.down(cluster))

    def job_status(self, cluster: str) -> str:
        """The status of the cluster's latest job (RUNNING, FAILED_SETUP, SUCCEEDED, ...), "" when it has none."""
        sky = import_sky()
        statuses = sky.get(sky.job_status(cluster)) or {}
        return _name(next(iter(statuses.values()), None))

    def job_log_tail(self, cluster: str, lines: int) -> str:
        """The last lines of the cluster's latest job log (setup and run), without colours."""
        import io
        import re

        sky = import_sky()
        out = io.StringIO()
        sky.tail_logs(cluster, None, follow=False, tail=lines, output_stream=out)
        return re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())


@contextlib.contextmanager
def capacity_errors(stage: str) -> Iterator[None]:
    """SkyPilot's ResourcesUnavailableError as a CapacityError naming the stage, when it is a capacity failure:
    SkyPilot tried the task's offers in order and at least one try failed for want of capacity (the rule SkyServe's
    own replica manager applies to its failover history). Any other refusal (e.g. no offer in SkyPilot's catalog)
    stays a LaunchError with SkyPilot's message. Only an exception of SkyPilot's own class qualifies."""
    try:
        yield
    except Exception as exc:
        sky_exceptions = sys.modules.get("sky.exceptions")
        unavailable = getattr(sky_exceptions, "ResourcesUnavailableError", None)
        if unavailable is None or not isinstance(exc, unavailable):
            raise
        history = list(getattr(exc, "failover_history", None) or [])
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if not any(isinstance(e, unavailable) for e in history):
            raise LaunchError(f"{stage}: SkyPilot cannot launch it: {first}") from exc
        tries = "; ".join(str(e).strip().splitlines()[0][:160] for e in history if str(e).strip())
        raise CapacityError(f"{stage}: SkyPilot found no capacity on any of its offers ({len(history)} "
                            f"failed tries: {tries})", stages=(stage,)) from exc


def _name(status: Any) -> str:
    return str(getattr(status, "value", status) or "").upper()


def _url(endpoint: str) -> str:
    if not endpoint:
        return ""
    return endpoint if "://" in endpoint else f"http://{endpoint}"


# --- the dry run: SkyPilot's own checks on a seeded temporary catalog ---------------------------

def check_tasks(tasks: list[dict[str, Any]], clouds: list[str], exclude: list[str] | None = None,
                blocked: list[str] | None = None) -> list[dict[str, Any]]:
    """Validate and optimize each `{"name", "config", "service": bool}` with SkyPilot, offline.

    Returns per task `{"name", "ok", "error", "choice", "cloud", "region", "instance_type", "accelerators",
    "usd_per_hour_per_node", "band"}`; `band` (tasks with `resources.ordered`) holds SkyPilot's own price for each
    entry alone, in order: `{"infra", "instance_type", "ok", "choice", "usd_per_hour_per_node"}`. Runs in a child
    process (SkyPilot reads HOME when imported). `exclude` (cloud/region/instance_type) drops those offers from
    the seeded catalog; `blocked` passes them to the optimizer as SkyPilot's provisioner does after a failed try.
    """
    import importlib.util

    if importlib.util.find_spec("sky") is None:  # not imported here: SkyPilot writes under HOME when imported
        raise UserInputError(f"the dry run needs SkyPilot; install it: {SKY_INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="cascadia-sky-dryrun-") as tmp:
        request = Path(tmp) / "request.json"
        result = Path(tmp) / "result.json"
        request.write_text(json.dumps({"tasks": tasks, "clouds": clouds, "exclude": exclude or [],
                                       "blocked": blocked or []}))
        home = Path(tmp) / "home"
        home.mkdir()
        env = {**os.environ, **OFFLINE_ENV, "HOME": str(home)}
        env.pop("SKY_RUNTIME_DIR", None)
        env[HOME_ENV_VAR] = str(user_catalog_dir().parent)  # the child seeds SkyPilot with the user's newest catalog
        proc = subprocess.run([sys.executable, "-m", "cascadia_sky.launch.skypilot", str(request), str(result)],
                              env=env, capture_output=True, text=True, timeout=DRYRUN_TIMEOUT_SECONDS,
                              check=False)
        if proc.returncode != 0 or not result.is_file():
            raise LaunchError(f"SkyPilot's dry run failed (exit {proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
        return list(json.loads(result.read_text()))


def _seed_and_enable(clouds: list[str], exclude: list[str] | None = None) -> None:
    """Seed ~/.sky/catalogs/v8 from the newest catalogs (user or shipped; without the `exclude`d offers) and mark
    those clouds enabled (child process only)."""
    from cascadia_sky.catalog import SKYPILOT_CLOUD_NAMES, write_skypilot_catalog

    known = [c for c in clouds if c in SKYPILOT_CLOUD_NAMES]
    write_skypilot_catalog(Path.home() / ".sky" / "catalogs" / "v8", known, exclude=exclude)
    from sky import check, global_user_state
    from sky.clouds import cloud as cloud_lib

    workspace = "default"
    # A stored allowed-clouds list that differs from the config makes SkyPilot re-run `sky check`, which would
    # disable every cloud without credentials: store the config's list first.
    global_user_state.set_allowed_clouds(check._get_workspace_allowed_clouds(workspace), workspace)
    global_user_state.set_enabled_clouds([SKYPILOT_CLOUD_NAMES[c] for c in known],
                                         cloud_lib.CloudCapability.COMPUTE, workspace)


def _optimize(task: Any, blocked: list[Any] | None = None) -> Any:
    """SkyPilot's in-process optimizer's choice for one task (what `sky launch` would provision first)."""
    import sky
    from sky import optimizer

    dag = sky.Dag()
    dag.add(task)
    return optimizer.Optimizer.optimize(dag, quiet=True, blocked_resources=blocked).tasks[0].best_resources


def _blocked(keys: list[str]) -> list[Any]:
    """cloud/region/instance_type as SkyPilot's blocked resources (what its provisioner adds after a failure)."""
    import sky

    out = []
    for key in keys:
        cloud, region, instance_type = key.split("/")
        out.append(sky.Resources(infra=f"{cloud}/{region}", instance_type=instance_type))
    return out


def _band(config: dict[str, Any]) -> list[dict[str, Any]]:
    """SkyPilot's choice and price for each `ordered` entry of a task alone, in order."""
    import copy

    import sky

    res = config["resources"]
    out = []
    for entry in res.get("ordered") or []:
        one = copy.deepcopy(config)
        one["resources"] = {**{k: v for k, v in res.items() if k != "ordered"}, **entry}
        one.pop("service", None)
        row: dict[str, Any] = {"infra": entry.get("infra", ""), "instance_type": entry.get("instance_type", ""),
                               "ok": False, "choice": "", "usd_per_hour_per_node": None}
        try:
            best = _optimize(sky.Task.from_yaml_config(one))
            row.update(ok=True, choice=f"{best} in {best.region}", usd_per_hour_per_node=float(best.get_cost(3600)))
        except Exception as exc:  # noqa: BLE001 (not in the seeded catalog: SkyPilot's ResourcesUnavailableError)
            row["choice"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        out.append(row)
    return out


def _check_one(item: dict[str, Any], blocked: list[Any] | None = None) -> dict[str, Any]:
    import copy

    import sky

    out: dict[str, Any] = {"name": item["name"], "ok": False, "error": "", "choice": ""}
    try:
        task = sky.Task.from_yaml_config(copy.deepcopy(item["config"]))   # SkyPilot pops keys of its input
        if item.get("service"):
            sky.serve.validate_service_task(task, pool=False)
    except Exception as exc:  # SkyPilot raises ValueError and its own schema errors
        out["error"] = f"SkyPilot rejected the task: {type(exc).__name__}: {exc}"
        return out
    out["ok"] = True
    try:
        best = _optimize(task, blocked)
    except Exception as exc:  # no offer in the seeded catalogs (e.g. CPU instances, Slurm): not priced
        best = None
        out["choice"] = f"not priced: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if item.get("cpu_only") and (best is None or best.accelerators):
        out["choice"] = ("not priced: the shipped catalogs list GPU instances only (SkyPilot picks a CPU instance "
                         "from its full catalog)")
        return out
    if best is None:
        return out
    out.update(choice=f"{best} in {best.region}", cloud=str(best.cloud), region=best.region, instance_type=best.instance_type,
               accelerators=best.accelerators, spot=bool(best.use_spot),
               usd_per_hour_per_node=float(best.get_cost(3600)))
    out["band"] = _band(item["config"])
    return out


def _child_main(request_path: str, result_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    _seed_and_enable(request["clouds"], request.get("exclude"))
    blocked = _blocked(request.get("blocked") or []) or None
    results = [_check_one(item, blocked) for item in request["tasks"]]
    Path(result_path).write_text(json.dumps(results))


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
