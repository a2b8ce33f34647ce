"""`cascadia catalog refresh --cloud aws` against a fake AWS on 127.0.0.1 (moto server + Stubbers; tests/aws_fake.py):
the SkyPilot v8 catalog it writes, latest spot prices per zone, gaps (access denied, region not enabled), throttling
retried by botocore's standard mode, no credentials, and `cascadia catalog` showing each price's source and age."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cascadia_sky import catalog
from cascadia_sky.catalog import SKYPILOT_VMS_COLUMNS, cheapest_offers, offers, user_offer_paths
from cascadia_sky.cli import app
from cascadia_sky.cloud import aws_api
from cascadia_sky.cloud.aws_catalog import refresh_aws
from cascadia_sky.errors import CloudAccessError
from tests.aws_fake import FakeAws, fake_aws, moto_url, price_item, refresh_fake  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
REGIONS = ["us-east-1", "us-west-2"]


@pytest.fixture
def aws(fake_aws: FakeAws) -> FakeAws:
    return fake_aws


def read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_refresh_writes_a_skypilot_v8_catalog_with_todays_prices(aws: FakeAws) -> None:
    data = refresh_fake(aws, REGIONS)
    steps: list[tuple[str, int, int]] = []
    summary = refresh_aws(REGIONS, progress=lambda *a: steps.append(a), session=aws.session)
    aws.assert_all_answered()
    header, rows = read_csv(summary.path)
    assert tuple(header) == SKYPILOT_VMS_COLUMNS["aws"]
    # one row per offered (type, zone id) of every GPU type moto lists, each with the Pricing API's price
    offered = {(r, t, z) for r in REGIONS for t, z in aws_api.instance_type_offerings(
        aws.session, r, data[r]["types"])}
    assert {(row["Region"], row["InstanceType"], row["AvailabilityZone"]) for row in rows} == offered
    for row in rows:
        assert float(row["Price"]) == pytest.approx(data[row["Region"]]["on_demand"][row["InstanceType"]])
        assert float(row["vCPUs"]) == data[row["Region"]]["types"][row["InstanceType"]]["VCpuInfo"]["DefaultVCpus"]
    assert summary.rows == len(rows) and summary.gaps == [] and summary.rows_without_price == 0
    assert steps[-1][1:] == (len(REGIONS) * 4, len(REGIONS) * 4) and len(steps) == len(REGIONS) * 4
    meta = json.loads(user_offer_paths("aws")[1].read_text())
    assert meta["fetched_at"] == summary.fetched_at and meta["regions"] == REGIONS
    assert not any(k.startswith("AWS_") or "testing" in json.dumps(meta) for k in meta)  # no credential leaks
    print(f"refresh against moto: {summary.wall_s:.2f} s, {summary.rows} rows, {summary.instance_types} types")


def test_spot_is_the_latest_price_per_zone_and_the_planner_takes_the_cheapest_zone(aws: FakeAws) -> None:
    data = refresh_fake(aws, REGIONS)
    summary = refresh_aws(REGIONS, session=aws.session)
    _, rows = read_csv(summary.path)
    for row in rows:
        region = data[row["Region"]]
        name = {zid: zname for zname, zid in region["zones"].items()}[row["AvailabilityZone"]]
        # the fake also sends an older, 3x dearer entry per zone: only the latest counts
        assert float(row["SpotPrice"]) == pytest.approx(region["spot"][(row["InstanceType"], name)])
    h100 = [o for o in offers(["aws"], ["H100"], spot=True) if o.instance_type == "p5.48xlarge"]
    want = min(p for r in REGIONS for (t, _), p in data[r]["spot"].items() if t == "p5.48xlarge")
    best = next(o for o in cheapest_offers(["aws"], ["H100"], spot=True) if o.gpus == 8)
    assert h100 and best.spot_usd_per_hour == pytest.approx(want) and best.source == "pricing:GetProducts"
    assert best.spot_source == "ec2:DescribeSpotPriceHistory" and best.fetched_at == summary.fetched_at


def test_pricing_access_denied_is_a_gap_and_keeps_the_shipped_prices(aws: FakeAws) -> None:
    aws.pricing().add_client_error("get_products", service_error_code="AccessDeniedException",
                                   service_message="User is not authorized", http_status_code=400)
    for region in REGIONS:
        aws.queue_spot(region, {})
    summary = refresh_aws(REGIONS, session=aws.session)
    aws.assert_all_answered()   # asked once: the Pricing API is global
    assert [g["api"] for g in summary.gaps] == ["pricing:GetProducts"]
    assert all("grant the IAM permission pricing:GetProducts" in g["message"] for g in summary.gaps)
    shipped_rows, shipped_date = catalog.shipped_offer_rows("aws")
    shipped = {(r["InstanceType"], r["Region"]): float(r["Price"]) for r in shipped_rows}
    _, rows = read_csv(summary.path)
    assert {r["Region"] for r in rows} == set(REGIONS) and summary.price_fallbacks == len(rows)
    assert all(float(r["Price"]) == shipped[(r["InstanceType"], r["Region"])] for r in rows)
    assert summary.rows_without_price > 0    # types the shipped catalog does not list are left out
    assert {o.source for o in offers(["aws"])} == {f"shipped catalog {shipped_date}"}


def test_a_region_not_enabled_is_skipped_with_a_gap(aws: FakeAws) -> None:
    from botocore.stub import Stubber

    data = refresh_fake(aws, ["us-east-1"])
    off = aws.session.client("ec2", "ap-east-1")
    stubber = Stubber(off)
    stubber.add_client_error("describe_instance_types", service_error_code="OptInRequired",
                             service_message="You are not subscribed to this service.", http_status_code=401)
    stubber.activate()
    summary = refresh_aws(["us-east-1", "ap-east-1"], session=aws.session)
    assert [(g["api"], g["region"]) for g in summary.gaps] == [("ec2:DescribeInstanceTypes", "ap-east-1")]
    assert "region ap-east-1 is not enabled" in summary.gaps[0]["message"]
    _, rows = read_csv(summary.path)
    offered = {t for t, _ in aws_api.instance_type_offerings(aws.session, "us-east-1", data["us-east-1"]["types"])}
    assert {r["Region"] for r in rows} == {"us-east-1"} and {r["InstanceType"] for r in rows} == offered


class _ThrottlingPricing(BaseHTTPRequestHandler):
    """A Pricing endpoint on loopback that throttles the first `throttle` requests, then answers one page."""

    throttle = 2
    requests = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests += 1
        if type(self).requests <= type(self).throttle:
            body, status = {"__type": "ThrottlingException", "message": "Rate exceeded"}, 400
        else:
            body, status = {"FormatVersion": "aws_v1", "PriceList": [price_item("g5.xlarge", "us-east-1", 1.006)]}, 200
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("throttle", [2, 99])
def test_throttling_is_retried_in_standard_mode(aws: FakeAws, monkeypatch: pytest.MonkeyPatch,
                                                throttle: int) -> None:
    _ThrottlingPricing.throttle, _ThrottlingPricing.requests = throttle, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ThrottlingPricing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(aws_api, "AWS_MAX_ATTEMPTS", 4)
    try:
        session = aws_api.AwsSession()
        if throttle < 4:
            assert aws_api.on_demand_prices(session, "us-east-1", ["g5.xlarge"]) == {"g5.xlarge": 1.006}
            assert _ThrottlingPricing.requests == throttle + 1
        else:
            with pytest.raises(aws_api.AwsGap, match="still throttled after 4 attempts"):
                aws_api.on_demand_prices(session, "us-east-1", ["g5.xlarge"])
            assert _ThrottlingPricing.requests == 4
    finally:
        server.shutdown()


def test_cli_without_credentials_says_what_to_run_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_EC2_METADATA_DISABLED": "true", "CASCADIA_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)})
    out = subprocess.run([sys.executable, "-m", "cascadia_sky.cli", "catalog", "refresh", "--cloud", "aws",
                          "--regions", "us-east-1"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert lines == ["error: no AWS credentials found: run `aws configure` or set AWS_PROFILE"] or (
        len(lines) == 1 and "no AWS credentials found: run `aws configure` or set AWS_PROFILE" in lines[0])
    assert "Traceback" not in out.stderr and not (tmp_path / "home" / "catalogs").exists()


def test_cli_refresh_json_then_catalog_shows_source_and_age(aws: FakeAws, monkeypatch: pytest.MonkeyPatch) -> None:
    refresh_fake(aws, ["us-east-1"])
    monkeypatch.setattr(aws_api, "AwsSession", lambda profile=None: aws.session)
    result = CliRunner().invoke(app, ["catalog", "refresh", "--cloud", "aws", "--regions", "us-east-1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["regions"] == ["us-east-1"] and summary["rows"] > 0
    shown = CliRunner().invoke(app, ["catalog", "--cloud", "aws", "--json"])
    data = json.loads(shown.stdout)
    assert [c["kind"] for c in data["catalogs"]] == ["user"] and not data["catalogs"][0]["stale"]
    assert {o["source"] for o in data["cheapest_offers"]} == {"pricing:GetProducts"}
    assert all(o["price_age_days"] < 0.1 for o in data["cheapest_offers"])
    table = CliRunner().invoke(app, ["catalog", "--cloud", "aws"], env={"COLUMNS": "200"})
    assert "user (refreshed)" in table.output and "pricing:GetProducts" in table.output
    assert "warning" not in table.output


def _age_catalog(days: float) -> None:
    meta_path = user_offer_paths("aws")[1]
    meta = json.loads(meta_path.read_text())
    meta["fetched_at"] = (datetime.now(timezone.utc) - timedelta(days=days)).replace(microsecond=0).isoformat()
    meta_path.write_text(json.dumps(meta))
    catalog.clear_cache()


def test_catalog_warns_when_the_prices_are_older_than_a_week(aws: FakeAws, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "catalogs"   # a shipped snapshot from January, so an 8-day-old refresh is the newest
    shutil.copytree(catalog.catalog_dir(), shipped)
    sources = (shipped / "offer_sources.csv").read_text()
    (shipped / "offer_sources.csv").write_text(re.sub(r"\d{4}-\d{2}-\d{2}", "2026-01-01", sources))
    monkeypatch.setenv("CASCADIA_CATALOG_DIR", str(shipped))
    refresh_fake(aws, ["us-east-1"])
    refresh_aws(["us-east-1"], session=aws.session)
    _age_catalog(8)
    assert catalog.active_offer_file("aws").user
    table = CliRunner().invoke(app, ["catalog", "--cloud", "aws", "--cloud", "gcp"], env={"COLUMNS": "200"})
    assert "warning: aws prices are 8 d old (more than a week); refresh: cascadia catalog refresh --cloud aws" \
        in table.output
    assert "warning: gcp prices are" in table.output
    data = json.loads(CliRunner().invoke(app, ["catalog", "--cloud", "aws", "--json"]).stdout)
    assert data["catalogs"][0]["stale"] and all(o["stale"] for o in data["cheapest_offers"])
    _age_catalog(6)
    data = json.loads(CliRunner().invoke(app, ["catalog", "--cloud", "aws", "--json"]).stdout)
    assert not data["catalogs"][0]["stale"] and not any(o["stale"] for o in data["cheapest_offers"])


def test_newest_catalog_wins(aws: FakeAws) -> None:
    refresh_fake(aws, ["us-east-1"])
    refresh_aws(["us-east-1"], session=aws.session)
    assert catalog.active_offer_file("aws").user and catalog.offer_csv_path("aws") == user_offer_paths("aws")[0]
    shipped_date = datetime.fromisoformat(catalog.shipped_offer_rows("aws")[1])
    _age_catalog((datetime.now() - shipped_date).days + 2)  # fetched before the shipped snapshot was taken
    assert not catalog.active_offer_file("aws").user
    assert {o.source for o in offers(["aws"])} == {catalog.active_offer_file("aws").source}
    assert catalog.active_offer_file("gcp").user is False


def test_a_core_install_imports_no_boto3_and_says_how_to_get_it() -> None:
    code = ("import sys; sys.modules['boto3'] = None\n"
            "import cascadia_sky.cli, cascadia_sky.planner.planner, cascadia_sky.cloud.aws_quota, "
            "cascadia_sky.cloud.aws_catalog, cascadia_sky.catalog_view\n"
            "from cascadia_sky.cloud import aws_api\n"
            "try:\n    aws_api.AwsSession()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"CloudAccessError the AWS refresh needs boto3; install it: {aws_api.INSTALL_HINT}"
    assert issubclass(CloudAccessError, Exception)


def test_gpu_names_get_skypilots_corrections() -> None:
    from cascadia_sky.cloud.aws_catalog import gpu_name

    def info(name: str, count: int, mib: int, partition: float = 1.0) -> dict[str, Any]:
        return {"Gpus": [{"Name": name, "Count": count, "LogicalGpuCount": 1, "GpuPartitionSize": partition,
                          "MemoryInfo": {"SizeInMiB": mib}}], "TotalGpuMemoryInMiB": max(count, 1) * mib}

    assert gpu_name(info("NVIDIA", 8, 144384), "p5en.48xlarge") == ("H200", 8.0)       # skypilot#4652
    assert gpu_name(info("A100", 8, 81920), "p4de.24xlarge") == ("A100-80GB", 8.0)
    assert gpu_name(info("A100", 8, 40960), "p4d.24xlarge") == ("A100", 8.0)
    assert gpu_name(info("L4", 0, 2861, 0.125), "g6f.large") == ("L4", 0.125)           # a slice of an L4
    assert gpu_name(info("H100", 1, 81920), "p5.4xlarge") == ("H100", 1.0)
