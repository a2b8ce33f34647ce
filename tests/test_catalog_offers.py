"""Cloud offers: SkyPilot's exact v8 layouts, prices as the files state them, filters, and malformed files."""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cascadia_sky import catalog
from cascadia_sky.catalog import (SKYPILOT_VMS_COLUMNS, Offer, cheapest_offers, clouds, gpu_names, offer_csv_path,
                                  offers, write_skypilot_catalog)
from cascadia_sky.errors import CatalogError
from test_catalog_helpers import SHIPPED, use_catalog_copy



def raw_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def edit_offer_file(root: Path, cloud: str, change: Callable[[list[str], list[dict[str, str]]], list[str] | None]
                    ) -> None:
    """Rewrite offers/<cloud>.csv after `change` mutates the rows (and may return a new column order)."""
    path = root / "offers" / f"{cloud}.csv"
    header, rows = raw_rows(path)
    header = change(header, rows) or header
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    catalog.clear_cache()


def test_offer_files_have_skypilots_exact_columns() -> None:
    assert clouds() == ["aws", "azure", "gcp", "lambda"]
    for cloud in clouds():
        header, rows = raw_rows(offer_csv_path(cloud))
        assert tuple(header) == SKYPILOT_VMS_COLUMNS[cloud]
        assert rows, cloud
    # the v8 layouts as SkyPilot writes them (fetch_aws.py / fetch_gcp.py / fetch_azure.py / fetch_lambda_cloud.py)
    assert SKYPILOT_VMS_COLUMNS["aws"][:10] == ("InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs",
                                                "MemoryGiB", "GpuInfo", "Price", "SpotPrice", "Region",
                                                "AvailabilityZone")
    assert SKYPILOT_VMS_COLUMNS["gcp"][-2:] == ("Price", "SpotPrice")
    assert SKYPILOT_VMS_COLUMNS["lambda"][5:7] == ("Price", "Region")


def no_offer_section() -> set[str]:
    """GPU names listed under 'GPU types with no offer rows' in offers/SOURCES.md."""
    text = (SHIPPED / "offers" / "SOURCES.md").read_text()
    section = text.split("## GPU types with no offer rows", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- ([A-Za-z0-9-]+):", section, flags=re.MULTILINE))


def test_every_gpu_has_offers_or_is_documented_as_not_offered() -> None:
    offered = {o.gpu for o in offers()}
    documented = no_offer_section()
    assert documented, "SOURCES.md lost its list of GPU types without offers"
    for name in gpu_names():
        assert (name in offered) != (name in documented), f"{name}: offered={name in offered}, " \
                                                          f"documented as not offered={name in documented}"


def test_offers_are_sane_and_carry_their_provenance() -> None:
    specs = catalog.gpu_specs()
    for offer in offers():
        assert offer.usd_per_hour > 0
        assert offer.spot_usd_per_hour is None or offer.spot_usd_per_hour >= 0
        assert 1 <= offer.gpus <= specs[offer.gpu].gpus_per_node, offer
        assert offer.vcpus > 0 and offer.memory_gib > 0 and offer.region and offer.instance_type
        assert f"catalogs/v8/{offer.cloud}/vms.csv" in offer.source and "skypilot-catalog" in offer.source
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", offer.price_date)
        assert offer.usd_per_gpu_hour() == pytest.approx(offer.usd_per_hour / offer.gpus)


@pytest.mark.parametrize("cloud", ["aws", "azure", "lambda"])
def test_single_row_clouds_round_trip_their_rows(cloud: str) -> None:
    _, rows = raw_rows(offer_csv_path(cloud))
    loaded = {(o.instance_type, o.region, o.zone): o for o in offers([cloud])}
    gpu_rows = [r for r in rows if r["AcceleratorName"]]
    assert len(loaded) == len(gpu_rows)
    for row in gpu_rows:
        offer = loaded[(row["InstanceType"], row["Region"], row.get("AvailabilityZone", ""))]
        assert offer.usd_per_hour == pytest.approx(float(row["Price"]))
        assert offer.spot_usd_per_hour == (pytest.approx(float(row["SpotPrice"])) if row["SpotPrice"] else None)
        assert offer.gpus == int(float(row["AcceleratorCount"]))
        assert offer.gpu == catalog.canonical_gpu_name(row["AcceleratorName"])


def test_gcp_offers_add_host_and_gpu_prices() -> None:
    """GCP rows price GPUs apart from the host VM; an offer is the sum, as SkyPilot's optimizer adds them."""
    _, rows = raw_rows(offer_csv_path("gcp"))
    with (SHIPPED / "gcp_hosts.csv").open(newline="") as f:
        host_of = {(r["AcceleratorName"], int(r["AcceleratorCount"])): r["InstanceType"] for r in csv.DictReader(f)}
    hosts = {(r["InstanceType"], r["AvailabilityZone"]): r for r in rows if r["InstanceType"]}
    accelerators = [r for r in rows if not r["InstanceType"]]
    gcp = offers(["gcp"])
    assert len(gcp) == len(accelerators)
    for acc in accelerators:
        host = hosts[(host_of[(acc["AcceleratorName"], int(acc["AcceleratorCount"]))], acc["AvailabilityZone"])]
        [offer] = [o for o in gcp if o.zone == acc["AvailabilityZone"] and o.gpus == int(acc["AcceleratorCount"])
                   and o.gpu == acc["AcceleratorName"]]
        assert offer.instance_type == host["InstanceType"]
        assert offer.usd_per_hour == pytest.approx(float(acc["Price"]) + float(host["Price"]))
        assert offer.spot_usd_per_hour == pytest.approx(float(acc["SpotPrice"]) + float(host["SpotPrice"]))
        assert offer.vcpus == float(host["vCPUs"])


def test_filters_by_cloud_gpu_alias_and_spot() -> None:
    h100 = offers(gpu_types=["h100_sxm"])
    assert h100 and {o.gpu for o in h100} == {"H100"}
    assert {o.cloud for o in offers(clouds=["AWS", "gcp"])} == {"aws", "gcp"}
    spot = offers(spot=True)
    assert spot and all(o.spot_usd_per_hour is not None for o in spot)
    assert not [o for o in spot if o.cloud == "lambda"]  # Lambda sells no spot
    prices = [(o.gpu, o.gpus, o.price(True)) for o in spot]
    for (g1, n1, p1), (g2, n2, p2) in zip(prices, prices[1:]):
        assert (g1, n1) != (g2, n2) or p1 <= p2  # sorted by price within a (GPU, size) group
    with pytest.raises(CatalogError, match=r"unknown cloud 'awz' \(did you mean 'aws'\?\)"):
        offers(clouds=["awz"])
    with pytest.raises(CatalogError, match=r"unknown GPU 'H1000'"):
        offers(gpu_types=["H1000"])


@pytest.mark.parametrize("spot", [False, True])
def test_cheapest_offers_match_brute_force(spot: bool) -> None:
    everything = offers(spot=spot)
    cheapest = cheapest_offers(spot=spot)
    keys = {(o.gpu, o.gpus) for o in everything}
    assert {(o.gpu, o.gpus) for o in cheapest} == keys and len(cheapest) == len(keys)
    for offer in cheapest:
        group = [o.price(spot) for o in everything if (o.gpu, o.gpus) == (offer.gpu, offer.gpus)]
        assert offer.price(spot) == min(group)  # type: ignore[type-var]
    limit = 10.0
    capped = cheapest_offers(spot=spot, max_usd_per_hour=limit)
    assert capped and all(o.price(spot) <= limit for o in capped)  # type: ignore[operator]
    assert {(o.gpu, o.gpus) for o in capped} == {(o.gpu, o.gpus) for o in everything if o.price(spot) <= limit}


def test_write_skypilot_catalog_seeds_the_v8_layout(tmp_path: Path) -> None:
    written = write_skypilot_catalog(tmp_path / "v8")
    for cloud in clouds():
        target = tmp_path / "v8" / cloud / "vms.csv"
        assert target in written and target.read_bytes() == offer_csv_path(cloud).read_bytes()
    _, rows = raw_rows(tmp_path / "v8" / "common" / "accelerators.csv")
    listed = {r["AcceleratorName"]: r["Clouds"] for r in rows}
    assert set(listed) == {o.gpu for o in offers()}
    assert listed["H100-MEGA"] == "['GCP']" and "'Lambda'" in listed["GH200"]


def test_malformed_offer_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog_copy = use_catalog_copy(tmp_path, monkeypatch)
    def bad_price(header: list[str], rows: list[dict[str, str]]) -> None:
        rows[2]["Price"] = "cheap"
    edit_offer_file(catalog_copy, "aws", bad_price)
    with pytest.raises(CatalogError, match=r"offers/aws\.csv: line 4, column 'Price': 'cheap' is not a number"):
        offers()

    shutil.copy(SHIPPED / "offers" / "aws.csv", catalog_copy / "offers" / "aws.csv")
    edit_offer_file(catalog_copy, "aws", lambda header, rows: list(reversed(header)))
    with pytest.raises(CatalogError, match=r"offers/aws\.csv: header: columns must be exactly SkyPilot's v8 aws"):
        offers(["aws"])

    def unknown_gpu(header: list[str], rows: list[dict[str, str]]) -> None:
        rows[0]["AcceleratorName"] = "V100"
    edit_offer_file(catalog_copy, "lambda", unknown_gpu)
    with pytest.raises(CatalogError, match=r"offers/lambda\.csv: line 2, column 'AcceleratorName': GPU 'V100' is not"):
        offers(["lambda"])

    def drop_host(header: list[str], rows: list[dict[str, str]]) -> None:
        rows[:] = [r for r in rows if r["InstanceType"] != "a3-megagpu-8g"]
    edit_offer_file(catalog_copy, "gcp", drop_host)
    with pytest.raises(CatalogError, match=r"offers/gcp\.csv: line \d+: host VM a3-megagpu-8g has no row"):
        offers(["gcp"])


def test_missing_provenance_and_stray_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog_copy = use_catalog_copy(tmp_path, monkeypatch)
    sources = catalog_copy / "offer_sources.csv"
    sources.write_text("\n".join(line for line in sources.read_text().splitlines()
                                 if not line.startswith("azure,")) + "\n")
    catalog.clear_cache()
    with pytest.raises(CatalogError, match=r"offer_sources\.csv: no row for cloud 'azure'"):
        offers(["azure"])
    (catalog_copy / "offers" / "ibm.csv").write_text("InstanceType\n")
    with pytest.raises(CatalogError, match=r"offers/ibm\.csv: unknown cloud 'ibm'"):
        clouds()


def test_offer_is_a_plain_value() -> None:
    offer = offers(["lambda"], ["GH200"])[0]
    assert isinstance(offer, Offer)
    as_dict = offer.to_dict()
    assert as_dict["gpu"] == "GH200" and as_dict["spot_usd_per_hour"] is None
    assert Offer(**as_dict) == offer
