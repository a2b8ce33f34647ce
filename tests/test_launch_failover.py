"""Failover: each cloud stage lists its equivalent offers, SkyPilot tries them in order, and `up` re-plans when
SkyPilot finds no capacity on any of them.

SkyPilot's own optimizer (offline, on the shipped catalogs) resolves the rendered `resources.ordered` to the band's
offers and prices, in order, and moves to the next offer when the first ones are gone from its catalog (or blocked,
as its provisioner blocks an offer that failed). The launch tests use the recording fake of SkyPilot's SDK, which
tries a task's offers in order like SkyPilot's provisioner and fails an offer without capacity with SkyPilot's
real `ResourcesUnavailableError`.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import yaml

from cascadia_sky.errors import CapacityError, LaunchError
from cascadia_sky.launch import launcher
from cascadia_sky.launch.state import StateStore
from cascadia_sky.planner.failover import offer_key
from cascadia_sky.planner.plan import Plan, write_plan
from tests.launch.helpers import REPO, cli

CLOUDS = ["aws", "gcp", "azure", "lambda"]


def wide_spec(tmp: Path, **cloud: object) -> Path:
    """examples/multicloud.yaml on demand with a wide failover band (equal prices across regions, plus GCP)."""
    data = yaml.safe_load((REPO / "examples" / "multicloud.yaml").read_text())
    data["quality"]["profile"] = str(REPO / "examples" / "profiles" / "multicloud.csv")
    data["workload"]["trace"] = str(REPO / "examples" / "traces" / "AzureLLMInferenceTrace_conv.csv")
    data["resources"]["cloud"].update({"spot": False, "budget_usd_per_hour": 300, "failover_band": 1.0, **cloud})
    path = tmp / "wide.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@functools.cache
def wide_plan(tmp: str) -> Plan:
    from cascadia_sky.planner.planner import make_plan
    from cascadia_sky.spec import load_spec

    return make_plan(load_spec(wide_spec(Path(tmp))))


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return wide_plan(str(tmp_path_factory.mktemp("wide")))


def keys(stage) -> list[str]:  # type: ignore[no-untyped-def]
    return [offer_key(o.cloud, o.region, o.instance_type) for o in stage.offers]


def test_band_is_the_chosen_offer_then_equivalents_by_price(plan: Plan) -> None:
    for stage in plan.serving():
        first = stage.offers[0]
        assert (first.cloud, first.region, first.instance_type, first.usd_per_hour) == (
            stage.cloud, stage.region, stage.instance_type, stage.usd_per_hour)
        prices = [o.usd_per_hour for o in stage.offers]
        assert prices[1:] == sorted(prices[1:]) and max(prices) <= stage.usd_per_hour * 2 + 1e-9
        others = plan.predicted.usd_per_hour - stage.usd_per_hour
        assert all(others + p <= plan.budget_usd_per_hour + 1e-9 for p in prices)   # the budget still holds
        assert len(set(keys(stage))) == len(stage.offers) >= 3


def test_narrow_band_and_single_region_shorten_the_list(tmp_path: Path) -> None:
    from cascadia_sky.planner.planner import make_plan
    from cascadia_sky.spec import load_spec

    narrow = make_plan(load_spec(wide_spec(tmp_path, failover_band=0.0)))
    for stage in narrow.serving():   # same price only: the same instance in the other region of its cloud
        assert {o.usd_per_hour for o in stage.offers} == {stage.usd_per_hour} and len(stage.offers) == 2
    one = make_plan(load_spec(wide_spec(tmp_path, single_region=True)))
    for stage in one.serving():
        assert {(o.cloud, o.region) for o in stage.offers} == {(stage.cloud, stage.region)}


@pytest.mark.e2e   # 10-16 s (SkyPilot's optimizer in child processes, or a long replay): CI's e2e stage
def test_skypilot_resolves_the_band_in_order_and_fails_over_to_the_next(plan: Plan) -> None:
    pytest.importorskip("sky")
    from cascadia_sky.launch.skypilot import check_tasks
    from cascadia_sky.launch.tasks import stage_layout, stage_task

    stages = plan.serving()
    tasks = [{"name": s.name, "config": stage_task(plan, s), "service": True} for s in stages]
    assert all([e["instance_type"] for e in t["config"]["resources"]["ordered"]] ==
               [o.instance_type for o in s.offers] for t, s in zip(tasks, stages))
    copies = [s.replicas * stage_layout(s)[1] for s in stages]
    for stage, res, n in zip(stages, check_tasks(tasks, CLOUDS), copies, strict=True):
        assert res["ok"], res["error"]
        assert (res["cloud"].lower(), res["region"], res["instance_type"]) == (stage.cloud, stage.region,
                                                                                stage.instance_type)
        assert [b["usd_per_hour_per_node"] * n for b in res["band"]] == pytest.approx(
            [o.usd_per_hour for o in stage.offers], rel=1e-6)   # SkyPilot's own price of every offer, in order
    # The first offer gone from the seeded catalog (its instance type stays listed elsewhere: SkyPilot refuses an
    # `ordered` entry whose instance type it does not know at all), or the first two blocked as SkyPilot's
    # provisioner blocks an offer that failed: SkyPilot's choice moves down the list.
    for how, first_n in (("exclude", 1), ("blocked", 2)):
        gone = [k for s in stages for k in keys(s)[:first_n]]
        for stage, res, n in zip(stages, check_tasks(tasks, CLOUDS, **{how: gone}), copies, strict=True):
            nxt = stage.offers[first_n]
            assert (res.get("cloud", "").lower(), res.get("region"), res.get("instance_type")) == (
                nxt.cloud, nxt.region, nxt.instance_type), (how, res)
            assert res["usd_per_hour_per_node"] * n == pytest.approx(nxt.usd_per_hour, rel=1e-6)


def test_capacity_errors_accept_only_skypilots_capacity_failures() -> None:
    pytest.importorskip("sky")
    from sky import exceptions

    from cascadia_sky.launch.skypilot import capacity_errors

    tried = [exceptions.ResourcesUnavailableError("Failed to acquire resources in aws/us-east-1")]
    with pytest.raises(CapacityError) as err, capacity_errors("large"):
        raise exceptions.ResourcesUnavailableError("Failed to provision all", failover_history=tried)
    assert err.value.stages == ("large",) and "1 failed tries" in str(err.value)
    with pytest.raises(LaunchError) as refused, capacity_errors("large"):   # no offer at all: not capacity
        raise exceptions.ResourcesUnavailableError("Catalog does not contain any instances satisfying the request")
    assert not isinstance(refused.value, CapacityError) and "Catalog does not contain" in str(refused.value)
    with pytest.raises(ValueError), capacity_errors("large"):   # anything else passes through
        raise ValueError("other")


def test_failover_then_exhaustion_then_replan(fake_sky, plan: Plan, tmp_path: Path, home: Path) -> None:
    """The first two offers of `large` have no capacity: SkyPilot's provisioner lands on the third. Then every
    offer of `large` is out: `up` re-plans without them and launches the new plan; `small` stays up."""
    pytest.importorskip("sky")
    from sky import exceptions

    spec = wide_spec(tmp_path)
    plan = plan.with_launch(ready_timeout_s=30)
    large = plan.stage("large")
    fake_sky.no_capacity = set(keys(large)[:2])
    first = launcher.up(launcher.Target(plan, str(spec)), store=StateStore(home / "a"))
    (call,) = [c for op, name, c in fake_sky.calls if op == "serve_up" and name == "multicloud-large"]
    assert call["offer"] == keys(large)[2]
    assert [type(e) for e in call["failover_history"]] == [exceptions.ResourcesUnavailableError] * 2
    assert first.status.value == "ready"
    launcher.down("multicloud", store=StateStore(home / "a"))

    fake_sky.calls.clear()
    fake_sky.no_capacity = set(keys(large))
    said: list[str] = []
    store = StateStore(home / "b")
    result = launcher.up(launcher.Target(plan, str(spec)), store=store, progress=said.append)
    text = "\n".join(said)
    assert "no capacity on any offer of stage(s) large" in text and all(k in text for k in keys(large))
    assert "re-planned" in text
    new = store.get("multicloud").plan   # type: ignore[union-attr]
    assert not set(keys(new.stage("large"))) & set(keys(large))          # none of the exhausted offers
    assert new.launch == plan.launch and result.status.value == "ready"
    ups = [name for op, name, _ in fake_sky.calls if op == "serve_up"]
    assert ups.count("multicloud-small") == 1                            # small came up once and stayed
    assert ("serve_down", "multicloud-large") in fake_sky.ops()          # the failed service was replaced
    launcher.down("multicloud", store=store)


def test_no_capacity_anywhere_stops_with_one_clear_message(fake_sky, plan: Plan, tmp_path: Path,
                                                            home: Path) -> None:
    pytest.importorskip("sky")
    fake_sky.no_capacity = lambda key: True
    store = StateStore(home)
    with pytest.raises(LaunchError) as err:
        launcher.up(launcher.Target(plan.with_launch(ready_timeout_s=30), str(wide_spec(tmp_path))), store=store)
    message = str(err.value)
    assert not isinstance(err.value, CapacityError)
    assert "no plan within the budget and quotas remains" in message or "still no capacity" in message
    assert "`up` stopped everything it had started" in message
    assert store.get("multicloud") is None and not fake_sky.services   # nothing left running


def test_clusters_backend_raises_skypilots_error_and_a_plan_file_is_not_replanned(fake_sky, plan: Plan,
                                                                                  home: Path) -> None:
    pytest.importorskip("sky")
    fake_sky.no_capacity = lambda key: True
    clusters = plan.with_launch(backend="clusters", router_host="127.0.0.1", ready_timeout_s=30)
    with pytest.raises(LaunchError) as err:
        launcher.up(launcher.Target(clusters, str(home / "plan.json")), store=StateStore(home))
    assert "SkyPilot found no capacity on any of its offers" in str(err.value)
    assert "cannot re-plan: it was started from a plan file" in str(err.value)
    launches = [c for op, _, c in fake_sky.calls if op == "cluster_launch"]
    assert launches and all(c["offer"] is None and len(c["failover_history"]) == len(c["task"]["resources"]
                                                                                         ["ordered"]) for c in launches)


def test_status_shows_a_preempted_replica(fake_sky, example_plan, home: Path) -> None:
    from cascadia_sky.launch.report import status_report

    store = StateStore(home)
    plan = example_plan("multicloud").with_launch(ready_timeout_s=30)
    fake_sky.preempted = ("multicloud-large",)
    launcher.up(launcher.Target(plan), store=store)
    (view,) = launcher.status("multicloud", store=store)
    assert "PREEMPTED" in view.details["large"] and "SkyServe replaces" in view.details["large"]
    from rich.console import Console

    console = Console(width=300, record=True)
    for part in status_report([view]):
        console.print(part)
    assert "1 PREEMPTED" in console.export_text()
    launcher.down("multicloud", store=store)


@pytest.mark.e2e   # 10-16 s (SkyPilot's optimizer in child processes, or a long replay): CI's e2e stage
def test_dryrun_fails_when_skypilot_prices_a_stage_otherwise(plan: Plan, tmp_path: Path) -> None:
    """The plan's prices edited by 1 %: `up --dryrun` exits non-zero naming the stage and both prices."""
    pytest.importorskip("sky")
    good = write_plan(plan, tmp_path / "plan.json")
    ok = cli(tmp_path, "up", "--plan", str(good), "--dryrun", timeout=300)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "offer 3" in ok.stdout and "plan $/h" in ok.stdout
    data = json.loads(good.read_text())
    bad = copy.deepcopy(data)
    stage = bad["stages"][1]
    stage["usd_per_hour"] = round(stage["usd_per_hour"] * 1.01, 6)
    stage["offers"][0]["usd_per_hour"] = stage["usd_per_hour"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = cli(tmp_path, "up", "--plan", str(tmp_path / "bad.json"), "--dryrun", timeout=300)
    assert r.returncode != 0
    err = r.stderr + r.stdout
    assert f"multicloud-{stage['name']}: SkyPilot picks" in err and f"${stage['usd_per_hour']:.4f}/h" in err
    assert f"${data['stages'][1]['usd_per_hour']:.4f}/h" in err                # SkyPilot's (the catalog's) price
    tiny = copy.deepcopy(data)   # within a cent: accepted
    tiny["stages"][1]["usd_per_hour"] += 0.004
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    assert cli(tmp_path, "up", "--plan", str(tmp_path / "tiny.json"), "--dryrun", timeout=300).returncode == 0
