"""A fake AWS on 127.0.0.1 for the AWS tests: moto in server mode for what moto implements, botocore Stubbers for
what it does not, all reached through `cascadia_sky.cloud.aws_api.AwsSession` (the same boto3 clients, config and
retry mode a real account gets).

What moto 5.2 covers here: ec2 DescribeRegions, DescribeInstanceTypes (its instance-type data, GpuInfo included),
DescribeInstanceTypeOfferings (by zone id), DescribeAvailabilityZones, RunInstances/DescribeInstances.
What it does not, so Stubbers answer with responses shaped like the AWS API reference:
- pricing GetProducts (no moto backend);
- ec2 DescribeSpotPriceHistory content (moto answers 0.00001 $/h with a 2006 timestamp for every offering);
- service-quotas ListServiceQuotas/GetServiceQuota for ec2 (moto knows only the vpc service's quotas).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from cascadia_sky import catalog
from cascadia_sky.cloud import aws_api
from cascadia_sky.cloud.aws_quota import QUOTA_CODES

FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-creds"}
QUOTA_NAMES = {"L-DB2E81BA": "Running On-Demand G and VT instances", "L-3819A6DF": "All G and VT Spot Instance Requests",
               "L-417A185B": "Running On-Demand P instances", "L-7212CCBC": "All P Spot Instance Requests"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto_server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/moto-api/reset", method="POST"), timeout=10).read()


class SplitClient:
    """One ec2 client as boto3 code sees it, whose listed operations go to a stubbed client and the rest to moto."""

    def __init__(self, real: Any, stubbed: Any, operations: set[str]) -> None:
        self._real, self._stubbed, self._ops = real, stubbed, operations

    def get_paginator(self, name: str) -> Any:
        return (self._stubbed if name in self._ops else self._real).get_paginator(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stubbed if name in self._ops else self._real, name)


def price_item(instance_type: str, region: str, usd: float) -> str:
    """One PriceList entry of pricing GetProducts (FormatVersion aws_v1), as a JSON string like AWS sends it."""
    sku = f"SKU{abs(hash((instance_type, region))) % 10**8:08d}"
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": {
            "instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux", "tenancy": "Shared",
            "preInstalledSw": "NA", "capacitystatus": "Used", "licenseModel": "No License required",
            "servicecode": "AmazonEC2", "usagetype": f"BoxUsage:{instance_type}", "operation": "RunInstances"}},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {f"{sku}.JRTCKXETXF": {
            "offerTermCode": "JRTCKXETXF", "sku": sku, "effectiveDate": "2026-11-01T00:00:00Z", "termAttributes": {},
            "priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                "unit": "Hrs", "endRange": "Inf", "beginRange": "0", "appliesTo": [], "rateCode":
                    f"{sku}.JRTCKXETXF.6YS6EN2CT7", "description": f"${usd} per On Demand Linux {instance_type}",
                "pricePerUnit": {"USD": f"{usd:.10f}"}}}}}},
        "version": "20261101000000", "publicationDate": "2026-11-01T00:00:00Z"})


def quota_entry(region: str, code: str, value: float) -> dict[str, Any]:
    """One Quotas[] entry of service-quotas ListServiceQuotas / the Quota of GetServiceQuota."""
    return {"ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaArn": f"arn:aws:servicequotas:{region}:123456789012:ec2/{code}", "QuotaCode": code,
            "QuotaName": QUOTA_NAMES[code], "Value": value, "Unit": "None", "Adjustable": True, "GlobalQuota": False}


class FakeAws:
    """An AwsSession on moto plus the stubbed answers a test queues (prices, spot prices, quotas)."""

    def __init__(self) -> None:
        self.session = aws_api.AwsSession()
        self._stubbers: list[Stubber] = []
        self._spot_clients: dict[str, Any] = {}

    def _stub(self, client: Any) -> Stubber:
        stubber = Stubber(client)
        stubber.activate()
        self._stubbers.append(stubber)
        return stubber

    def pricing(self) -> Stubber:
        client = self.session.client("pricing", "us-east-1")
        for s in self._stubbers:
            if s.client is client:
                return s
        return self._stub(client)

    def queue_prices(self, region: str, prices: dict[str, float]) -> None:
        """The answer of one region's GetProducts (one page)."""
        self.pricing().add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": [
            price_item(t, region, usd) for t, usd in sorted(prices.items())]},
            {"ServiceCode": "AmazonEC2", "Filters": ANY, "FormatVersion": "aws_v1"})

    def spot(self, region: str) -> Stubber:
        """The stubbed DescribeSpotPriceHistory of a region (the region's ec2 client answers the rest from moto)."""
        if region not in self._spot_clients:
            real = self.session.client("ec2", region)
            stubbed = self.session._session.client("ec2", region_name=region, config=real.meta.config)
            self._spot_clients[region] = self._stub(stubbed)
            self.session._clients[("ec2", region)] = SplitClient(real, stubbed, {"describe_spot_price_history"})
        return self._spot_clients[region]

    def queue_spot(self, region: str, prices: dict[tuple[str, str], float]) -> None:
        """One region's spot price history page: (instance type, zone name) -> $/h, each with an older entry too."""
        now = datetime.now(timezone.utc)
        history = []
        for (itype, zone), usd in sorted(prices.items()):
            history.append({"AvailabilityZone": zone, "InstanceType": itype, "ProductDescription": "Linux/UNIX",
                            "SpotPrice": f"{usd:.6f}", "Timestamp": now})
            history.append({"AvailabilityZone": zone, "InstanceType": itype, "ProductDescription": "Linux/UNIX",
                            "SpotPrice": f"{usd * 3:.6f}", "Timestamp": datetime(2026, 1, 1, tzinfo=timezone.utc)})
        self.spot(region).add_response("describe_spot_price_history", {"SpotPriceHistory": history},
                                       {"InstanceTypes": ANY, "ProductDescriptions": ["Linux/UNIX"],
                                        "StartTime": ANY})

    def queue_quotas(self, region: str, vcpus: dict[str, float]) -> None:
        """One region's ListServiceQuotas page with the given quota codes (vCPUs)."""
        client = self.session.client("service-quotas", region)
        stubber = next((s for s in self._stubbers if s.client is client), None) or self._stub(client)
        stubber.add_response("list_service_quotas",
                             {"Quotas": [quota_entry(region, c, v) for c, v in sorted(vcpus.items())]},
                             {"ServiceCode": "ec2"})

    def assert_all_answered(self) -> None:
        for s in self._stubbers:
            s.assert_no_pending_responses()


def gpu_types(session: aws_api.AwsSession, region: str) -> dict[str, dict[str, Any]]:
    """moto's GPU instance types of a region, by name (what the refresh will see)."""
    return {t["InstanceType"]: t for t in aws_api.gpu_instance_types(session, region)}


def all_quota_codes(value: float) -> dict[str, float]:
    return {code: value for code in QUOTA_CODES.values()}


# $/GPU-hour the fake AWS charges on demand, by GPU name (its own data; the tests read expectations from it)
FAKE_GPU_USD_PER_HOUR = {"T4": 0.53, "T4g": 0.42, "A10G": 1.01, "L4": 0.80, "L40S": 1.86, "V100": 3.06,
                         "A100": 4.10, "H100": 6.88, "H200": 7.91, "B200": 14.24, "B300": 17.80}


def fake_prices(types: dict[str, dict[str, Any]], region: str) -> dict[str, float]:
    """On-demand $/h per instance type: GPUs x the GPU's rate, 4 % dearer outside us-east-1 (unknown GPUs: $2)."""
    out = {}
    for name, t in types.items():
        gpu = t["GpuInfo"]["Gpus"][0]
        rate = FAKE_GPU_USD_PER_HOUR.get(gpu["Name"], 2.0)
        count = gpu["Count"] or gpu["GpuPartitionSize"]   # slices of a GPU report Count 0
        out[name] = round(rate * count * (1.0 if region == "us-east-1" else 1.04), 4)
    return out


def fake_spot(types: dict[str, dict[str, Any]], zones: dict[str, str], on_demand: dict[str, float],
              factor: float = 0.4) -> dict[tuple[str, str], float]:
    """Spot $/h per (type, zone name): `factor` x on-demand, 10 % dearer per zone after the first (sorted)."""
    return {(t, z): round(on_demand[t] * factor * (1 + 0.1 * i), 4)
            for t in types for i, z in enumerate(sorted(zones))}


def refresh_fake(fake: FakeAws, regions: list[str], spot_factor: float = 0.4) -> dict[str, Any]:
    """Queue prices and spot prices for `regions` (moto supplies types, offerings and zones); returns the fake's
    data: {region: {"types", "zones", "on_demand", "spot"}}."""
    data = {}
    for region in sorted(regions):
        types = gpu_types(fake.session, region)
        zones = aws_api.zone_ids(fake.session, region)
        on_demand = fake_prices(types, region)
        spot = fake_spot(types, zones, on_demand, spot_factor)
        fake.queue_prices(region, on_demand)
        fake.queue_spot(region, spot)
        data[region] = {"types": types, "zones": zones, "on_demand": on_demand, "spot": spot}
    return data


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """One moto server per test module."""
    with moto_server() as url:
        yield url


@pytest.fixture
def fake_aws(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAws]:
    """A fresh fake AWS (moto reset), fake credentials in the environment and an isolated CASCADIA_HOME."""
    reset(moto_url)
    for key, value in {**FAKE_ENV, "AWS_ENDPOINT_URL": moto_url, "CASCADIA_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(key, value)
    catalog.clear_cache()
    yield FakeAws()
    catalog.clear_cache()
