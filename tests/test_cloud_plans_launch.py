"""Every cloud plan can be launched as planned: random cloud specs, each plan's stages rendered as SkyPilot tasks
and run through SkyPilot's own task parser and optimizer on the shipped catalogs (offline).

Each replica must map to whole instances of exactly its GPUs (no two replicas on one instance), so SkyPilot must
pick the plan's instance type, region and spot choice, and price it at the plan's $/h; and every equivalent offer
of a stage's failover list (`resources.ordered`), alone, at the plan's $/h for that offer. A stage no request
reaches has no replicas and costs nothing. Specs vary the GPU types, budgets, quotas, spot, the failover band and
the goal.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml

from cascadia_sky.errors import InfeasibleError
from cascadia_sky.planner.planner import make_plan
from cascadia_sky.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
TYPES = ["L4", "L40S", "A100-80GB", "H100", "H200"]
SPECS = 10


def random_spec(tmp: Path, seed: int) -> Path:
    rng = random.Random(seed)
    data = yaml.safe_load((REPO / "examples" / "multicloud.yaml").read_text())
    cloud = data["resources"]["cloud"]
    cloud["gpu_types"] = sorted(rng.sample(TYPES, rng.randint(1, 3)), key=TYPES.index)
    cloud["spot"] = rng.random() < 0.5
    cloud["quotas"] = {t: rng.choice([8, 16, 24]) for t in cloud["gpu_types"] if rng.random() < 0.5}
    cloud["failover_band"] = rng.choice([0.0, 0.03, 0.25, 1.0])
    if rng.random() < 0.5:
        cloud["budget_usd_per_hour"] = rng.choice([30, 60, 120, 240])
        data["objective"] = {"latency": "e2e", "goal": "min-latency"}
    else:
        cloud.pop("budget_usd_per_hour", None)
        data["objective"] = {"latency": "e2e", "goal": "min-cost", "slo_p95_s": rng.choice([8.0, 15.0, 30.0])}
    data["quality"].pop("confidence", None)
    data["quality"]["relative_target"] = rng.choice([0.9, 0.95])
    data["workload"]["rate_scale"] = rng.choice([0.5, 1.0, 2.0])
    path = tmp / f"cloud-{seed}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.e2e   # 10-16 s (SkyPilot's optimizer in child processes, or a long replay): CI's e2e stage
def test_random_cloud_plans_are_accepted_and_priced_by_skypilot(tmp_path: Path) -> None:
    pytest.importorskip("sky")
    from cascadia_sky.launch.skypilot import check_tasks
    from cascadia_sky.launch.tasks import stage_task

    shutil.copytree(REPO / "examples" / "profiles", tmp_path / "profiles")
    shutil.copytree(REPO / "examples" / "traces", tmp_path / "traces")
    tasks, expected, planned, infeasible = [], [], 0, 0
    for seed in range(SPECS):
        try:
            plan = make_plan(load_spec(random_spec(tmp_path, seed)))
        except InfeasibleError as exc:
            infeasible += 1
            assert "raise" in str(exc) or "relax" in str(exc) or "lower" in str(exc), str(exc)
            continue
        planned += 1
        assert plan.predicted.usd_per_hour == pytest.approx(sum(s.usd_per_hour for s in plan.stages))
        for stage in plan.stages:
            if stage.replicas == 0:
                assert stage.share == 0.0 and stage.usd_per_hour == 0.0 and stage.gpus == 0
                continue
            per_replica = stage.tp * stage.pp
            assert per_replica % stage.gpus_per_instance == 0 and stage.tp <= stage.gpus_per_instance
            assert stage.instances * stage.gpus_per_instance == stage.gpus
            tasks.append({"name": f"{seed}-{stage.name}", "config": stage_task(plan, stage), "service": True})
            expected.append(stage)
    assert planned >= SPECS // 2, f"only {planned} of {SPECS} random specs had a plan"
    results = check_tasks(tasks, ["aws", "gcp", "azure", "lambda"])
    print(f"{SPECS} random cloud specs: {planned} planned, {infeasible} infeasible; {len(tasks)} stage tasks checked")
    offers = 0
    for stage, res in zip(expected, results, strict=True):
        assert res["ok"], (stage.name, res["error"])
        assert (res["instance_type"], res["region"], res["spot"]) == (stage.instance_type, stage.region, stage.spot), res
        assert res["usd_per_hour_per_node"] * stage.instances == pytest.approx(stage.usd_per_hour, rel=1e-6)
        assert (stage.offers[0].instance_type, stage.offers[0].region) == (stage.instance_type, stage.region)
        band = res.get("band") or []
        assert len(band) == (len(stage.offers) if len(stage.offers) > 1 else 0)   # one offer: pinned, no list
        for offer, b in zip(stage.offers, band):
            assert b["ok"], (stage.name, offer, b["choice"])
            assert b["usd_per_hour_per_node"] * stage.instances == pytest.approx(offer.usd_per_hour, rel=1e-6)
        offers += len(band)
    print(f"{offers} failover offers priced by SkyPilot as planned")
