"""`cascadia catalog refresh --cloud aws`: today's AWS GPU offers, on-demand and spot prices, as a user catalog.

Per region: the GPU instance types (describe_instance_types), the zones offering each (describe_instance_type_offerings,
by zone id), the on-demand price (Pricing API get_products), the latest spot price per zone
(describe_spot_price_history, zone names mapped to ids with describe_availability_zones). The rows are written in
SkyPilot's v8 `aws/vms.csv` layout, one row per (instance type, zone) as SkyPilot's own fetcher writes them, to
`$CASCADIA_HOME/catalogs/offers/aws.csv`, next to `aws.meta.json` (fetch time, regions, sources, gaps). SkyPilot
prices a region at its cheapest zone, and so does the planner (the cheapest offer wins).

A call the account may not make is a gap, not a failure: the refresh goes on, names the missing IAM permission, and
where the Pricing API is missing it keeps the shipped catalog's on-demand price for that row (marked as such).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cascadia_sky.catalog import (
    SKYPILOT_VMS_COLUMNS,
    clear_cache,
    shipped_offer_rows,
    user_offer_paths,
)
from cascadia_sky.constants import AWS_DEFAULT_REGIONS, AWS_PRICING_REGION
from cascadia_sky.errors import CloudAccessError, UserInputError

# step name, steps done, steps in all
Progress = Callable[[str, int, int], None]
SOURCE = "AWS APIs via boto3: ec2 DescribeInstanceTypes/DescribeInstanceTypeOfferings/DescribeSpotPriceHistory, " \
         "pricing GetProducts"
STEPS_PER_REGION = ("instance types", "offerings", "on-demand prices", "spot prices")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")


@dataclass
class RefreshSummary:
    """What a refresh fetched and wrote (the `--json` output)."""

    cloud: str
    fetched_at: str
    path: str
    regions: list[str]
    instance_types: int = 0
    rows: int = 0
    rows_with_spot: int = 0
    rows_without_price: int = 0                          # offered, but no on-demand price: left out
    price_fallbacks: int = 0                             # on-demand price kept from the shipped catalog
    gaps: list[dict[str, str]] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


def gpu_name(info: dict[str, Any], instance_type: str) -> tuple[str, float]:
    """(SkyPilot accelerator name, count) of an instance type's GpuInfo, with SkyPilot's known corrections."""
    gpus = info.get("Gpus") or [{}]
    first = gpus[0]
    name = str(first.get("Name", "")).strip()
    count = float(sum(int(g.get("Count", 0)) for g in gpus))
    memory_mib = int(first.get("MemoryInfo", {}).get("SizeInMiB", 0))
    family = instance_type.split(".")[0]
    if family == "p5en" or (name.upper() == "NVIDIA" and memory_mib > 140_000):
        name = "H200"                                # p5en reports "NVIDIA" (skypilot#4652)
    if name == "A100" and memory_mib >= 80_000:
        name = "A100-80GB"
    if name == "V100" and memory_mib >= 32_000:
        name = "V100-32GB"
    if count == 0:  # fractional GPUs (g6f, gr6f: slices of an L4) report Count 0 and a partition size
        count = float(sum(g.get("LogicalGpuCount", 1) * float(g.get("GpuPartitionSize", 0)) for g in gpus))
    if count == 0 and family in ("g6f", "gr6f") and info.get("TotalGpuMemoryInMiB"):
        count = round(float(info["TotalGpuMemoryInMiB"]) / 22_888, 3)  # older answers: by memory, as SkyPilot
    return name, count


def build_rows(region: str, types: Iterable[dict[str, Any]], offerings: Iterable[tuple[str, str]],
               on_demand: dict[str, float], spot: dict[tuple[str, str], float],
               zone_ids: dict[str, str]) -> tuple[list[dict[str, str]], int]:
    """vms.csv rows of one region (one per offered (type, zone) with an on-demand price) and how many were left
    out for lack of one. `spot` is keyed by zone *name*, `offerings` by zone id."""
    shapes = {t["InstanceType"]: t for t in types}
    spot_by_id = {(itype, zone_ids.get(zone, zone)): price for (itype, zone), price in spot.items()}
    rows, missing = [], 0
    for itype, zone_id in sorted(set(offerings)):
        shape = shapes.get(itype)
        if shape is None:
            continue
        price = on_demand.get(itype)
        if price is None:
            missing += 1
            continue
        info = shape["GpuInfo"]
        name, count = gpu_name(info, itype)
        spot_price = spot_by_id.get((itype, zone_id))
        archs = shape.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"])
        rows.append({
            "InstanceType": itype, "AcceleratorName": name, "AcceleratorCount": f"{count:g}" if count % 1 else
            f"{count:.1f}", "vCPUs": f"{float(shape['VCpuInfo']['DefaultVCpus']):.1f}",
            "MemoryGiB": f"{shape['MemoryInfo']['SizeInMiB'] / 1024:.10g}", "GpuInfo": repr(info),
            "Price": f"{price:.10g}", "SpotPrice": "" if spot_price is None else f"{spot_price:.10g}",
            "Region": region, "AvailabilityZone": zone_id, "Arch": "arm64" if "arm64" in archs else "x86_64"})
    return rows, missing


def _shipped_prices() -> dict[tuple[str, str], tuple[float, str]]:
    """(instance type, region) -> (on-demand $/h, date) from the shipped AWS catalog (the Pricing API fallback)."""
    rows, date = shipped_offer_rows("aws")
    return {(r["InstanceType"], r["Region"]): (float(r["Price"]), date) for r in rows if r.get("Price")}


def _write(rows: list[dict[str, str]], meta: dict[str, Any]) -> Path:
    csv_path, meta_path = user_offer_paths("aws")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(SKYPILOT_VMS_COLUMNS["aws"]))
        writer.writeheader()
        writer.writerows(rows)
    meta_tmp = meta_path.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, csv_path)          # the CSV first: a reader never sees new meta with an old CSV for long
    os.replace(meta_tmp, meta_path)
    clear_cache()
    return csv_path


def _check_regions(regions: list[str]) -> list[str]:
    bad = [r for r in regions if not _REGION_RE.match(r)]
    if bad:
        raise UserInputError(f"--regions: {', '.join(bad)} is not an AWS region name (like us-east-1)")
    return sorted(dict.fromkeys(regions))


def refresh_aws(regions: list[str] | None = None, progress: Progress | None = None, profile: str | None = None,
                session: Any = None) -> RefreshSummary:
    """Fetch AWS GPU offers and prices for `regions` (default: the account's enabled regions) and write the user
    catalog. `session` (an `aws_api.AwsSession`) is for tests; by default boto3's credential chain is used."""
    from cascadia_sky.cloud import aws_api

    start = time.perf_counter()
    session = session if session is not None else aws_api.AwsSession(profile)
    gaps: list[aws_api.AwsGap] = []
    if regions:
        chosen = _check_regions(regions)
    else:
        try:
            chosen = aws_api.enabled_regions(session, AWS_PRICING_REGION)
        except aws_api.AwsGap as gap:
            gaps.append(gap)
            chosen = list(AWS_DEFAULT_REGIONS)
    fetched_at = datetime.now(timezone.utc).replace(microsecond=0)
    total, done = len(chosen) * len(STEPS_PER_REGION), 0
    shipped = _shipped_prices()
    rows: list[dict[str, str]] = []
    fallbacks: dict[str, str] = {}
    summary = RefreshSummary(cloud="aws", fetched_at=fetched_at.isoformat(), path="", regions=chosen)
    seen_types: set[str] = set()

    def step(region: str, what: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(f"{region}: {what}", done, total)

    pricing_denied = False   # the Pricing API is global: once denied, do not ask again for every region
    for region in chosen:
        region_start = done
        try:
            types = aws_api.gpu_instance_types(session, region)
            step(region, STEPS_PER_REGION[0])
            names = [t["InstanceType"] for t in types]
            offerings = aws_api.instance_type_offerings(session, region, names) if names else []
            step(region, STEPS_PER_REGION[1])
        except aws_api.AwsGap as gap:  # without shapes or zones nothing of this region can be listed
            gaps.append(gap)
            done = region_start + len(STEPS_PER_REGION) - 1
            step(region, "skipped")
            continue
        seen_types.update(names)
        try:
            if pricing_denied:
                raise aws_api.AwsGap("pricing:GetProducts", region, "access denied (see above)")
            on_demand = aws_api.on_demand_prices(session, region, names) if names else {}
        except aws_api.AwsGap as gap:
            if not pricing_denied:
                gaps.append(gap)
            pricing_denied = pricing_denied or "access denied" in gap.message
            on_demand = {}
            for name in names:
                if (name, region) in shipped:
                    on_demand[name] = shipped[(name, region)][0]
                    fallbacks[f"{name}/{region}"] = f"shipped catalog {shipped[(name, region)][1]}"
        step(region, STEPS_PER_REGION[2])
        try:
            spot = aws_api.spot_prices(session, region, names) if names else {}
            zones = aws_api.zone_ids(session, region) if spot else {}
        except aws_api.AwsGap as gap:
            gaps.append(gap)
            spot, zones = {}, {}
        step(region, STEPS_PER_REGION[3])
        region_rows, missing = build_rows(region, types, offerings, on_demand, spot, zones)
        rows += region_rows
        summary.rows_without_price += missing
    if not rows:
        reasons = "; ".join(str(g) for g in gaps) or "no GPU instance type is offered with a price in " + \
            ", ".join(chosen)
        raise CloudAccessError(f"the AWS refresh found nothing to write ({reasons}); the catalog is unchanged")
    summary.gaps = [{"api": g.api, "region": g.region, "message": g.message} for g in gaps]
    summary.instance_types = len(seen_types)
    summary.rows = len(rows)
    summary.rows_with_spot = sum(1 for r in rows if r["SpotPrice"])
    summary.price_fallbacks = sum(1 for r in rows if f"{r['InstanceType']}/{r['Region']}" in fallbacks)
    meta = {"cloud": "aws", "fetched_at": summary.fetched_at, "source": SOURCE, "regions": chosen,
            "on_demand_source": "pricing:GetProducts", "spot_source": "ec2:DescribeSpotPriceHistory",
            "price_fallbacks": fallbacks, "gaps": summary.gaps}
    summary.path = str(_write(rows, meta))
    summary.wall_s = round(time.perf_counter() - start, 3)
    return summary


def refresh_catalog(cloud: str, regions: list[str] | None = None, progress: Progress | None = None,
                    profile: str | None = None) -> RefreshSummary:
    """`cascadia catalog refresh`: the one entry point of the CLI (AWS only for now)."""
    if cloud.strip().lower() != "aws":
        raise UserInputError(f"--cloud {cloud}: only aws can be refreshed for now; its prices come from boto3")
    return refresh_aws(regions, progress=progress, profile=profile)
