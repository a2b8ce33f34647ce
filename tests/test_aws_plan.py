"""`resources.cloud.quota: auto` and refreshed prices in plans, against the fake AWS of tests/aws_fake.py: EC2 vCPU
caps = quota - running instances; a P quota of 0 moves the plan to G instances; no quota at all fails with a clear
message; refreshed spot prices set the plan's $/h, and SkyPilot's own optimizer, seeded with the refreshed catalog,
prices the plan identically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascadia_sky.catalog import offers
from cascadia_sky.cloud import aws_api
from cascadia_sky.cloud.aws_catalog import refresh_aws
from cascadia_sky.cloud.aws_quota import QUOTA_CODES, cap_key, caps_from, quota_family, read_caps
from cascadia_sky.errors import InfeasibleError
from cascadia_sky.planner.planner import make_plan
from cascadia_sky.spec import load_spec
from tests.aws_fake import FakeAws, all_quota_codes, fake_aws, moto_url, refresh_fake  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
REGIONS = ["us-east-1", "us-west-2"]
P_ON_DEMAND, G_ON_DEMAND = QUOTA_CODES[("P", "on-demand")], QUOTA_CODES[("G", "on-demand")]


@pytest.fixture
def aws(fake_aws: FakeAws, monkeypatch: pytest.MonkeyPatch) -> FakeAws:
    monkeypatch.setattr(aws_api, "AwsSession", lambda profile=None: fake_aws.session)  # planning reads quotas here
    return fake_aws


def write_spec(tmp_path: Path, **cloud: Any) -> Path:
    spec = {
        "name": "aws-quota",
        "stages": [{"name": "small", "model": "meta-llama/Llama-3.1-8B", "precision": "bf16", "max_context": 8192},
                   {"name": "large", "model": "meta-llama/Llama-3.1-70B", "precision": "fp8", "max_context": 8192}],
        "quality": {"profile": str(REPO / "examples" / "profiles" / "multicloud.csv"), "relative_target": 0.95,
                    "scorer": "mean_logprob"},
        "workload": {"rate_rps": 2.0, "input_tokens": {"dist": "fixed", "value": 1000},
                     "output_tokens": {"dist": "fixed", "value": 200}},
        "objective": {"latency": "e2e", "goal": "min-latency"},
        "resources": {"cloud": {"clouds": ["aws"], "gpu_types": ["L4", "L40S", "H100", "H200"], **cloud}},
    }
    path = tmp_path / "cascade.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_instance(aws: FakeAws, region: str, itype: str, count: int, spot: bool = False) -> None:
    ec2 = aws.session.client("ec2", region)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    extra = {"InstanceMarketOptions": {"MarketType": "spot"}} if spot else {}
    ec2.run_instances(ImageId=image, InstanceType=itype, MinCount=count, MaxCount=count, **extra)


def test_families_and_caps_from_quotas_minus_running_instances(aws: FakeAws) -> None:
    assert [quota_family(t) for t in ("g6e.12xlarge", "vt1.3xlarge", "p5.48xlarge", "p6-b200.48xlarge",
                                      "m7i.large", "inf2.xlarge")] == ["G", "G", "P", "P", None, None]
    run_instance(aws, "us-east-1", "p4d.24xlarge", 2)               # 2 x 96 vCPUs on demand
    run_instance(aws, "us-east-1", "g5.12xlarge", 1, spot=True)     # 48 vCPUs spot
    run_instance(aws, "us-east-1", "m5.large", 3)                   # not a GPU family: no quota of ours
    quotas = {P_ON_DEMAND: 384.0, QUOTA_CODES[("P", "spot")]: 96.0, G_ON_DEMAND: 64.0,
              QUOTA_CODES[("G", "spot")]: 32.0}
    aws.queue_quotas("us-east-1", quotas)
    report = read_caps(["us-east-1"])
    aws.assert_all_answered()
    assert report.caps == {cap_key("us-east-1", "P", False): 384.0 - 192, cap_key("us-east-1", "P", True): 96.0,
                           cap_key("us-east-1", "G", False): 64.0, cap_key("us-east-1", "G", True): 0.0}
    assert report.in_use == {cap_key("us-east-1", "P", False): 192.0, cap_key("us-east-1", "G", True): 48.0}
    assert report.gaps == []
    # the pure part agrees on hand-made input
    assert caps_from("r", {G_ON_DEMAND: 10.0}, [("g5.xlarge", False, 4), ("g5.xlarge", True, 4)])[0] == {
        cap_key("r", "G", False): 6.0}


def test_quotas_denied_leave_the_region_uncapped_with_a_gap(aws: FakeAws) -> None:
    client = aws.session.client("service-quotas", "us-west-2")
    from botocore.stub import Stubber
    stubber = Stubber(client)
    stubber.add_client_error("list_service_quotas", service_error_code="AccessDeniedException",
                             http_status_code=400)
    stubber.add_client_error("get_service_quota", service_error_code="AccessDeniedException", http_status_code=400)
    stubber.activate()
    report = read_caps(["us-west-2"])
    assert report.caps == {}
    assert len(report.gaps) == 1 and "servicequotas:GetServiceQuota" in report.gaps[0] and \
        "quotas of us-west-2 are not applied" in report.gaps[0]


def _family(plan: Any) -> set[str]:
    return {quota_family(s.instance_type) for s in plan.stages}


def test_a_p_quota_of_zero_moves_the_plan_to_g_instances(aws: FakeAws, tmp_path: Path) -> None:
    refresh_fake(aws, REGIONS)
    refresh_aws(REGIONS, session=aws.session)
    spec = load_spec(write_spec(tmp_path, quota="auto"))
    for region in REGIONS:
        aws.queue_quotas(region, all_quota_codes(2000.0))
    ample = make_plan(spec)
    assert "P" in _family(ample)    # the fastest plan uses H100/H200 (P instances) when the account may
    for region in REGIONS:
        aws.queue_quotas(region, {**all_quota_codes(2000.0), P_ON_DEMAND: 0.0})
    moved = make_plan(spec)
    aws.assert_all_answered()
    assert _family(moved) == {"G"} and moved.predicted.p95_latency_s > ample.predicted.p95_latency_s
    for stage in moved.stages:   # the plan's instances fit what the quota leaves
        assert stage.instance_type.startswith("g")
    used: dict[str, float] = {}
    for stage in moved.stages:
        vcpus = next(o.vcpus for o in offers(["aws"]) if o.instance_type == stage.instance_type)
        key = cap_key(stage.region, "G", False)
        used[key] = used.get(key, 0.0) + vcpus * stage.instances
    assert all(v <= 2000.0 for v in used.values())


def test_no_quota_anywhere_fails_with_a_message_naming_the_quota(aws: FakeAws, tmp_path: Path) -> None:
    refresh_fake(aws, ["us-east-1"])
    refresh_aws(["us-east-1"], session=aws.session)
    aws.queue_quotas("us-east-1", all_quota_codes(0.0))
    with pytest.raises(InfeasibleError) as err:
        make_plan(load_spec(write_spec(tmp_path, quota="auto", gpu_types=["L40S", "H100"])))
    msg = str(err.value)
    assert "capacity too tight" in msg and "aws:vcpu:us-east-1:" in msg and "(limit 0)" in msg
    assert "EC2 quota increase" in msg


def test_explicit_gpu_quotas_win_over_auto(aws: FakeAws, tmp_path: Path) -> None:
    refresh_fake(aws, ["us-east-1"])
    refresh_aws(["us-east-1"], session=aws.session)
    aws.queue_quotas("us-east-1", {**all_quota_codes(2000.0), P_ON_DEMAND: 0.0})
    plan = make_plan(load_spec(write_spec(tmp_path, quota="auto", quotas={"H100": 64, "H200": 64})))
    assert "P" in _family(plan)   # the spec says 64 H100/H200 may run: the P vCPU quota does not apply to them


@pytest.mark.e2e   # 10-16 s (SkyPilot's optimizer in child processes, or a long replay): CI's e2e stage
def test_refreshed_spot_prices_set_the_plans_cost_and_skypilot_agrees(aws: FakeAws, tmp_path: Path) -> None:
    from cascadia_sky.launch.skypilot import check_tasks
    from cascadia_sky.launch.tasks import stage_task

    spec = load_spec(write_spec(tmp_path, spot=True, gpu_types=["L40S", "H100"]))
    costs = []
    for factor in (0.3, 0.6):
        refresh_fake(aws, ["us-east-1"], spot_factor=factor)
        refresh_aws(["us-east-1"], session=aws.session)
        plan = make_plan(spec)
        for stage in plan.stages:   # instances x the cheapest zone's latest spot price of the refresh
            spot = min(o.spot_usd_per_hour for o in offers(["aws"], spot=True)
                       if o.instance_type == stage.instance_type and o.region == stage.region)
            assert stage.usd_per_hour == pytest.approx(stage.instances * spot, rel=1e-6) and stage.spot
        costs.append(plan.predicted.usd_per_hour)
        tasks = [{"name": s.name, "config": stage_task(plan, s), "service": True} for s in plan.stages]
        for stage, res in zip(plan.stages, check_tasks(tasks, ["aws"]), strict=True):
            assert res["ok"], res["error"]
            assert (res["instance_type"], res["region"], res["spot"]) == (stage.instance_type, stage.region, True)
            assert res["usd_per_hour_per_node"] * stage.instances == pytest.approx(stage.usd_per_hour, rel=1e-6)
    assert not math.isclose(costs[0], costs[1], rel_tol=1e-3)


def test_failover_offers_respect_the_vcpu_quota_of_their_region(aws: FakeAws, tmp_path: Path) -> None:
    """An offer in a region whose EC2 vCPU quota the plan cannot fit is not equivalent: with us-west-2's P quota at
    0 the P stages fail over only within us-east-1's quota; with both regions ample they list both regions."""
    refresh_fake(aws, REGIONS)
    refresh_aws(REGIONS, session=aws.session)
    spec = load_spec(write_spec(tmp_path, quota="auto", failover_band=1.0))
    for region in REGIONS:
        aws.queue_quotas(region, all_quota_codes(2000.0))
    ample = make_plan(spec)
    p_stages = [s for s in ample.serving() if quota_family(s.instance_type) == "P"]
    assert p_stages and all({o.region for o in s.offers} == set(REGIONS) for s in p_stages)
    aws.queue_quotas("us-east-1", all_quota_codes(2000.0))
    aws.queue_quotas("us-west-2", {**all_quota_codes(2000.0), P_ON_DEMAND: 0.0})
    tight = make_plan(spec)
    aws.assert_all_answered()
    tight_p = [s for s in tight.serving() if quota_family(s.instance_type) == "P"]
    assert tight_p and all({o.region for o in s.offers} == {"us-east-1"} for s in tight_p)
