"""The plan is the contract: a plan file alone determines a deployment, and a core install can validate and plan.

For every example: `cascadia validate` and `cascadia plan` run with FastAPI, uvicorn, aiohttp, httpx, SkyPilot and
boto3 unimportable (a core install); then `cascadia up --plan plan.json --dryrun` prints exactly what
`cascadia up cascade.yaml --dryrun` prints (same actions, same rendered tasks, same SkyPilot choices).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cascadia_sky.launch import launcher
from cascadia_sky.launch.state import StateStore
from cascadia_sky.planner.plan import read_plan
from tests.launch.helpers import EXTRAS_MODULES, REPO, cli

EXAMPLES = sorted(p.stem for p in (REPO / "examples").glob("*.yaml"))


def _normalised(out: str) -> str:
    """Dry-run output with the one thing that legitimately differs between runs: temporary folder names."""
    return re.sub(r"/tmp/cascadia-router-[A-Za-z0-9_]+", "<tmp>", out)


@pytest.mark.e2e   # every example planned twice and dry-run twice (minutes): scripts/test.sh runs it in CI
@pytest.mark.parametrize("name", EXAMPLES)
def test_up_of_the_plan_file_is_up_of_the_spec(name: str, tmp_path: Path) -> None:
    pytest.importorskip("sky")
    spec = f"examples/{name}.yaml"
    checked = cli(tmp_path, "validate", spec, absent=EXTRAS_MODULES)
    assert checked.returncode == 0, checked.stderr
    plan_file = tmp_path / "plan.json"
    planned = cli(tmp_path, "plan", spec, "-o", str(plan_file), absent=EXTRAS_MODULES, timeout=300)
    assert planned.returncode == 0, planned.stderr
    plan = read_plan(plan_file)
    assert plan.launch.backend in ("local", "clusters", "skyserve")
    from_plan = cli(tmp_path, "up", "--plan", str(plan_file), "--dryrun", timeout=300)
    from_spec = cli(tmp_path, "up", spec, "--dryrun", timeout=300)
    assert from_plan.returncode == 0 and from_spec.returncode == 0, from_plan.stderr + from_spec.stderr
    assert f"backend {plan.launch.backend}:" in from_plan.stdout
    assert _normalised(from_plan.stdout) == _normalised(from_spec.stdout)


def test_local_slurm_plan_keeps_its_backend_and_targets(example_plan) -> None:
    """The bug this contract fixes: `up --plan` of the Slurm example used to launch it on the local backend."""
    from cascadia_sky.spec import load_spec

    plan = example_plan("local-slurm")
    spec = load_spec(REPO / "examples" / "local-slurm.yaml")
    assert plan.launch.backend == spec.infra.backend == "clusters"
    assert plan.launch.targets == spec.infra.targets and plan.launch.targets
    assert plan.launch.router_host == "127.0.0.1" and plan.launch.engine_threads >= 1


def test_up_records_the_plan_and_up_of_that_file_changes_nothing(fake_sky, example_plan, home: Path) -> None:
    store = StateStore(home)
    plan = example_plan("deepseek").with_launch(ready_timeout_s=30)
    first = launcher.up(launcher.Target(plan), store=store)
    assert first.plan_file == str(store.plan_path("deepseek")) and Path(first.plan_file).is_file()
    recorded = read_plan(first.plan_file)
    assert recorded == plan and store.get("deepseek").plan == plan   # type: ignore[union-attr]
    def changes() -> list[tuple[str, str]]:
        return [(op, name) for op, name in fake_sky.ops() if op in ("serve_up", "serve_update", "serve_down")]

    before = changes()
    again = launcher.up(launcher.load_target(None, first.plan_file), store=store)
    assert again.actions == () and changes() == before                      # nothing asked of SkyPilot
    moved = launcher.up(launcher.load_target(None, first.plan_file, port=9100), store=store)
    assert [(a.op, a.stage) for a in moved.actions] == [("update_router", "")]   # --port is a router change
    assert read_plan(moved.plan_file).launch.router_port == 9100                  # ... and is recorded
    launcher.down("deepseek", store=store)


def test_cli_up_prints_where_the_plan_was_recorded(tmp_path: Path) -> None:
    """`up` of a plan whose backend cannot start here fails before recording anything (no side effects)."""
    plan_file = tmp_path / "plan.json"
    assert cli(tmp_path, "plan", "examples/local.yaml", "-o", str(plan_file)).returncode == 0
    text = plan_file.read_text().replace('"backend": "local"', '"backend": "nosuch"')
    plan_file.write_text(text)
    r = cli(tmp_path, "up", "--plan", str(plan_file))
    assert r.returncode == 2 and "unknown launch backend 'nosuch'" in r.stderr
    assert not (tmp_path / "deployments").exists()


def test_an_idle_stage_is_not_launched_and_the_router_skips_it(fake_sky, example_plan, home: Path) -> None:
    """A stage no request reaches gets no GPUs (the planner's exact search can say so): the launcher starts
    nothing for it and the router's last served stage answers everything."""
    import json

    from cascadia_sky.launch.tasks import router_config

    plan = example_plan("deepseek").with_launch(ready_timeout_s=30)
    stages = list(plan.stages)
    stages[1] = stages[1].model_copy(update={"threshold": float("-inf")})       # medium accepts every answer
    stages[2] = stages[2].model_copy(update={"replicas": 0, "gpus": 0, "share": 0.0})
    idle = plan.model_copy(update={"stages": stages})
    assert [s.name for s in idle.serving()] == ["small", "medium"]
    assert [(a.op, a.stage) for a in launcher.decide(None, idle)] == [
        ("launch_stage", "small"), ("launch_stage", "medium"), ("launch_router", "")]
    cfg = router_config(idle, {"small": ["http://127.0.0.1:1"], "medium": ["http://127.0.0.1:2"]})
    assert [(s["name"], s["threshold"]) for s in cfg["stages"]] == [("small", stages[0].threshold),
                                                                    ("medium", None)]
    store = StateStore(home)
    launcher.up(launcher.Target(idle), store=store)
    assert "deepseek-large" not in [n for op, n in fake_sky.ops() if op == "serve_up"]
    assert [s["name"] for s in json.loads((home / "deployments/deepseek/router.json").read_text())["stages"]] == [
        "small", "medium"]
    full = launcher.decide(store.get("deepseek"), plan)                          # traffic comes back to it
    assert ("launch_stage", "large") in [(a.op, a.stage) for a in full]
    launcher.down("deepseek", store=store)
