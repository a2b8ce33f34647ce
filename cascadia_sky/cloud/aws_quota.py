"""`resources.cloud.quota: auto`: the account's EC2 vCPU quotas as the deployment MILP's capacity groups.

EC2 limits running instances by vCPUs per region, per instance family group and per purchase option (on-demand,
spot). For the GPU instances the planner rents, that is two families, each with an on-demand and a spot quota
(Service Quotas, service code `ec2`; the names as in the EC2 User Guide's quota tables):

  G and VT  on-demand  L-DB2E81BA  "Running On-Demand G and VT instances"
  G and VT  spot       L-3819A6DF  "All G and VT Spot Instance Requests"
  P         on-demand  L-417A185B  "Running On-Demand P instances"
  P         spot       L-7212CCBC  "All P Spot Instance Requests"

What is left = quota - vCPUs of the pending and running instances of that family and purchase option. Each is a
capacity group `aws:vcpu:<region>:<family>:<on-demand|spot>`; a candidate on an AWS offer uses
instances x vCPUs of its group. Explicit per-GPU-type quotas of the spec win: offers of such a GPU type get no
vCPU use here (the spec's GPU count is the limit for them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cascadia_sky.catalog import Offer

QUOTA_CODES: dict[tuple[str, str], str] = {
    ("G", "on-demand"): "L-DB2E81BA",
    ("G", "spot"): "L-3819A6DF",
    ("P", "on-demand"): "L-417A185B",
    ("P", "spot"): "L-7212CCBC",
}
_FAMILY_RE = re.compile(r"^([a-z]+)\d")


def quota_family(instance_type: str) -> str | None:
    """'G' (g*, vt*), 'P' (p*) or None (families without a GPU quota here)."""
    m = _FAMILY_RE.match(instance_type.lower())
    if not m:
        return None
    letters = m.group(1)
    if letters.startswith("vt") or letters.startswith("g"):
        return "G"
    if letters.startswith("p"):
        return "P"
    return None


def purchase(spot: bool) -> str:
    return "spot" if spot else "on-demand"


def cap_key(region: str, family: str, spot: bool) -> str:
    """The capacity group of a region, quota family and purchase option."""
    return f"aws:vcpu:{region}:{family}:{purchase(spot)}"


def offer_uses(offer: Offer, instances: int, spot: bool,
               explicit_gpu_quotas: Iterable[str] = ()) -> dict[str, float]:
    """What renting `instances` of an offer uses of the capacity groups (empty: not limited by quota: auto)."""
    if offer.cloud != "aws" or offer.gpu in set(explicit_gpu_quotas):
        return {}
    family = quota_family(offer.instance_type)
    if family is None:
        return {}
    return {cap_key(offer.region, family, spot): float(instances) * offer.vcpus}


@dataclass
class QuotaReport:
    """Caps per capacity group, how they were derived, and what could not be read."""

    caps: dict[str, float] = field(default_factory=dict)
    quotas: dict[str, float] = field(default_factory=dict)     # group -> quota value (vCPUs)
    in_use: dict[str, float] = field(default_factory=dict)     # group -> vCPUs of pending and running instances
    gaps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"caps": self.caps, "quotas": self.quotas, "in_use": self.in_use, "gaps": self.gaps}


def caps_from(region: str, quotas: Mapping[str, float],
              instances: Iterable[tuple[str, bool, int]]) -> tuple[dict[str, float], dict[str, float],
                                                                   dict[str, float]]:
    """(caps, quota values, usage) of one region from its quota values by code and its running instances."""
    usage: dict[str, float] = {}
    for itype, spot, vcpus in instances:
        family = quota_family(itype)
        if family is not None:
            key = cap_key(region, family, spot)
            usage[key] = usage.get(key, 0.0) + vcpus
    caps, values = {}, {}
    for (family, option), code in QUOTA_CODES.items():
        if code not in quotas:
            continue
        key = cap_key(region, family, option == "spot")
        values[key] = quotas[code]
        caps[key] = max(0.0, quotas[code] - usage.get(key, 0.0))
    return caps, values, {k: v for k, v in usage.items() if k in values}


def read_caps(regions: Iterable[str], profile: str | None = None, session: Any = None) -> QuotaReport:
    """Read the quotas and running instances of each region through the AWS APIs (boto3's credential chain).

    A region whose quotas cannot be read gets no caps (the planner then does not limit it) and a gap saying which
    permission is missing; a region whose instances cannot be listed is capped at the full quota, with a gap.
    """
    from cascadia_sky.cloud import aws_api

    session = session if session is not None else aws_api.AwsSession(profile)
    report = QuotaReport()
    for region in sorted(set(regions)):
        try:
            quotas = aws_api.service_quotas(session, region, QUOTA_CODES.values())
        except aws_api.AwsGap as gap:
            report.gaps.append(f"{gap}; quotas of {region} are not applied")
            continue
        try:
            running = aws_api.running_instances(session, region)
            missing = [t for t, _, v in running if v <= 0]
            if missing:
                sizes = aws_api.instance_vcpus(session, region, missing)
                running = [(t, s, v if v > 0 else sizes.get(t, 0)) for t, s, v in running]
        except aws_api.AwsGap as gap:
            report.gaps.append(f"{gap}; the full quota of {region} is assumed free")
            running = []
        caps, values, usage = caps_from(region, quotas, running)
        report.caps.update(caps)
        report.quotas.update(values)
        report.in_use.update(usage)
    return report
