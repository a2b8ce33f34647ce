"""`cascadia up --dryrun`: SkyPilot's own parser, SkyServe check and optimizer, on the shipped catalogs seeded into a
temporary SkyPilot home (offline). Prices must be those of the catalogs and of the plan."""

from __future__ import annotations

import pytest

pytest.importorskip("sky")

from cascadia_sky.catalog import cheapest_offers
from cascadia_sky.launch.skypilot import check_tasks
from cascadia_sky.launch.tasks import stage_task
from tests.launch.helpers import cli, example_plan


def test_deepseek_dryrun_shows_accepted_services_with_catalog_prices(tmp_path) -> None:
    r = cli(tmp_path, "up", "examples/deepseek.yaml", "--dryrun", timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout
    for stage in ("small", "medium", "large"):
        assert f"# deepseek-{stage}: SkyPilot task (accepted by sky.Task.from_yaml_config and " \
               f"sky.serve.validate_service_task)" in out
    assert "launch stage medium: new stage" in out and "dry run: nothing was launched" in out
    assert "HF_TOKEN: null" in out
    assert "not priced" in out  # the router: the shipped catalogs list GPU instances only
    assert not (tmp_path / "user" / ".sky" / "catalogs").exists()  # the user's SkyPilot home is untouched
    assert "no deployments" in cli(tmp_path, "status").stdout  # nothing recorded, nothing launched


def test_optimizer_picks_the_plans_instances_and_prices() -> None:
    """Cloud plan: SkyPilot resolves each stage to the plan's instance, region and $/h."""
    plan = example_plan("multicloud")
    tasks = [{"name": s.name, "config": stage_task(plan, s), "service": True} for s in plan.stages]
    results = check_tasks(tasks, ["aws", "gcp", "azure", "lambda"])
    for stage, res in zip(plan.stages, results):
        assert res["ok"], res["error"]
        assert res["instance_type"] == stage.instance_type and res["region"] == stage.region
        assert res["spot"] is True
        assert res["usd_per_hour_per_node"] * stage.instances == pytest.approx(stage.usd_per_hour, rel=1e-6)


def test_pool_plan_is_priced_at_the_cheapest_catalog_offer() -> None:
    """Pool plan (no cloud pinned): SkyPilot's choice is the cheapest offer of our catalogs for that node shape."""
    plan = example_plan("deepseek")
    tasks = [{"name": s.name, "config": stage_task(plan, s), "service": True} for s in plan.stages]
    results = check_tasks(tasks, ["aws", "gcp", "azure", "lambda"])
    for stage, res in zip(plan.stages, results):
        gpus = stage.tp * stage.pp
        best = next(o for o in cheapest_offers(None, [stage.gpu_type]) if o.gpus == gpus)
        assert res["accelerators"] == {stage.gpu_type: gpus}
        assert res["usd_per_hour_per_node"] == pytest.approx(best.price(False), rel=1e-6)


def test_a_task_skypilot_rejects_fails_the_dryrun_with_its_message(tmp_path) -> None:
    plan = example_plan("deepseek")
    cfg = stage_task(plan, plan.stages[0])
    cfg["service"]["replica_policy"] = {"min_replicas": 1, "max_replicas": 3}  # autoscaling without a target
    cfg["service"].pop("replicas")
    (res,) = check_tasks([{"name": "bad", "config": cfg, "service": True}], ["aws"])
    assert not res["ok"] and "target_qps_per_replica" in res["error"]
