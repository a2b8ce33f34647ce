"""The AWS calls, and the only module of the project that imports boto3 (inside functions: a core install plans).

Credentials come from boto3's standard chain (environment, AWS_PROFILE / shared files, SSO, instance metadata);
they are never read, printed or written here. Every client uses botocore's *standard* retry mode, which retries
throttling and transient errors with exponential backoff. `AWS_ENDPOINT_URL` (botocore's own setting) points every
client at another endpoint; the tests use it to talk to moto on 127.0.0.1 through this same code.

Each function returns plain data. A call that the account may not make raises `AwsGap`, which the caller records
(naming the missing IAM permission) before going on with what it may do; failures that stop everything raise
`CloudAccessError` with one line saying what to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cascadia_sky.constants import (
    AWS_CONNECT_TIMEOUT_SECONDS,
    AWS_GPU_TYPE_PATTERNS,
    AWS_MAX_ATTEMPTS,
    AWS_PRICING_REGION,
    AWS_READ_TIMEOUT_SECONDS,
    AWS_SPOT_PRODUCT,
)
from cascadia_sky.errors import CloudAccessError

INSTALL_HINT = "pip install 'cascadia-sky[aws]'  (or: pip install boto3)"
NO_CREDENTIALS = "no AWS credentials found: run `aws configure` or set AWS_PROFILE"
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess"}
_REGION_OFF = {"OptInRequired", "AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException"}
_THROTTLED = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
# On-demand price filters of the Pricing API (attribute names as in the AmazonEC2 price list)
PRICE_FILTERS = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}


@dataclass(frozen=True)
class AwsGap(Exception):
    """One API the account may not call (or that failed) in one region: the refresh goes on without it."""

    api: str            # e.g. "pricing:GetProducts"
    region: str
    message: str        # what happened and what to do

    def __str__(self) -> str:
        return f"{self.api} in {self.region}: {self.message}"


class AwsSession:
    """A boto3 session plus its clients (one per service and region, standard retry mode)."""

    def __init__(self, profile: str | None = None) -> None:
        try:
            import boto3
            import botocore.exceptions
        except ImportError:
            raise CloudAccessError(f"the AWS refresh needs boto3; install it: {INSTALL_HINT}") from None
        try:
            self._session = boto3.Session(profile_name=profile)
        except botocore.exceptions.ProfileNotFound as exc:
            raise CloudAccessError(f"{exc}; run `aws configure --profile NAME` or unset AWS_PROFILE") from None
        try:
            credentials = self._session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:  # e.g. an expired SSO token: say so, never print secrets
            raise CloudAccessError(f"{NO_CREDENTIALS} ({type(exc).__name__})") from None
        if credentials is None:
            raise CloudAccessError(NO_CREDENTIALS)
        self._clients: dict[tuple[str, str], Any] = {}

    def client(self, service: str, region: str) -> Any:
        """The (cached) client of a service in a region; tests may wrap the same object in a botocore Stubber."""
        key = (service, region)
        if key not in self._clients:
            from botocore.config import Config
            config = Config(retries={"mode": "standard", "total_max_attempts": AWS_MAX_ATTEMPTS},
                            connect_timeout=AWS_CONNECT_TIMEOUT_SECONDS, read_timeout=AWS_READ_TIMEOUT_SECONDS)
            self._clients[key] = self._session.client(service, region_name=region, config=config)
        return self._clients[key]


def _guarded(api: str, region: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one AWS call; translate its failure into AwsGap (go on) or CloudAccessError (stop)."""
    import botocore.exceptions as bx
    try:
        return fn(*args, **kwargs)
    except bx.NoCredentialsError:
        raise CloudAccessError(NO_CREDENTIALS) from None
    except bx.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _DENIED:
            raise AwsGap(api, region, f"access denied; grant the IAM permission {api}") from None
        if code in _REGION_OFF:
            raise AwsGap(api, region, f"region {region} is not enabled for this account, or the credentials are not "
                                      f"valid there ({code}); enable the region in the AWS console or leave it out "
                                      "of --regions") from None
        if code in _THROTTLED:
            raise AwsGap(api, region, f"still throttled after {AWS_MAX_ATTEMPTS} attempts ({code}); "
                                      "run the refresh again later") from None
        raise AwsGap(api, region, f"{code or 'error'}: {exc.response.get('Error', {}).get('Message', '')[:200]}") \
            from None
    except bx.EndpointConnectionError as exc:
        raise AwsGap(api, region, f"cannot reach the endpoint ({exc.kwargs.get('endpoint_url', '')}); check the "
                                  "network or the region name") from None
    except bx.BotoCoreError as exc:
        raise AwsGap(api, region, f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _pages(api: str, region: str, client: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator(operation)
    iterator = iter(paginator.paginate(**kwargs))
    while True:
        page = _guarded(api, region, next, iterator, None)
        if page is None:
            return
        yield page


def enabled_regions(session: AwsSession, home_region: str) -> list[str]:
    """Regions enabled for the account (opted in or default), sorted."""
    ec2 = session.client("ec2", home_region)
    answer = _guarded("ec2:DescribeRegions", home_region, ec2.describe_regions, AllRegions=False)
    return sorted(r["RegionName"] for r in answer.get("Regions", []))


def gpu_instance_types(session: AwsSession, region: str) -> list[dict[str, Any]]:
    """describe_instance_types of the GPU families (paginated), only types that report GPUs."""
    ec2 = session.client("ec2", region)
    out = []
    for page in _pages("ec2:DescribeInstanceTypes", region, ec2, "describe_instance_types",
                       Filters=[{"Name": "instance-type", "Values": list(AWS_GPU_TYPE_PATTERNS)}]):
        out += [t for t in page.get("InstanceTypes", []) if t.get("GpuInfo", {}).get("Gpus")]
    return out


def instance_type_offerings(session: AwsSession, region: str, types: Iterable[str]) -> list[tuple[str, str]]:
    """(instance type, availability zone id) for each type offered in the region's zones."""
    ec2 = session.client("ec2", region)
    wanted = sorted(set(types))
    out: list[tuple[str, str]] = []
    for i in range(0, len(wanted), 100):  # a filter takes at most a few hundred values; stay well below
        for page in _pages("ec2:DescribeInstanceTypeOfferings", region, ec2, "describe_instance_type_offerings",
                           LocationType="availability-zone-id",
                           Filters=[{"Name": "instance-type", "Values": wanted[i:i + 100]}]):
            out += [(o["InstanceType"], o["Location"]) for o in page.get("InstanceTypeOfferings", [])]
    return out


def zone_ids(session: AwsSession, region: str) -> dict[str, str]:
    """Availability zone name -> zone id (spot prices name zones; SkyPilot's catalog lists zone ids)."""
    ec2 = session.client("ec2", region)
    answer = _guarded("ec2:DescribeAvailabilityZones", region, ec2.describe_availability_zones)
    return {z["ZoneName"]: z["ZoneId"] for z in answer.get("AvailabilityZones", [])}


def spot_prices(session: AwsSession, region: str, types: Iterable[str],
                now: datetime | None = None) -> dict[tuple[str, str], float]:
    """(instance type, zone name) -> the latest Linux spot price in USD/h (describe_spot_price_history)."""
    ec2 = session.client("ec2", region)
    latest: dict[tuple[str, str], tuple[datetime, float]] = {}
    start = now or datetime.now(timezone.utc)
    wanted = sorted(set(types))
    for i in range(0, len(wanted), 100):
        for page in _pages("ec2:DescribeSpotPriceHistory", region, ec2, "describe_spot_price_history",
                           InstanceTypes=wanted[i:i + 100], ProductDescriptions=[AWS_SPOT_PRODUCT],
                           StartTime=start):
            for item in page.get("SpotPriceHistory", []):
                key = (item["InstanceType"], item["AvailabilityZone"])
                stamp = item.get("Timestamp") or start
                if key not in latest or stamp > latest[key][0]:
                    latest[key] = (stamp, float(item["SpotPrice"]))
    return {k: price for k, (_, price) in latest.items()}


def on_demand_prices(session: AwsSession, region: str, types: Iterable[str]) -> dict[str, float]:
    """instance type -> on-demand USD/h in the region (Pricing API: Linux, shared tenancy, no pre-installed
    software, used capacity). Several matching products for one type (rare) keep the lowest positive price."""
    pricing = session.client("pricing", AWS_PRICING_REGION)
    wanted = set(types)
    filters = [{"Type": "TERM_MATCH", "Field": k, "Value": v}
               for k, v in {"regionCode": region, **PRICE_FILTERS}.items()]
    out: dict[str, float] = {}
    for page in _pages("pricing:GetProducts", region, pricing, "get_products", ServiceCode="AmazonEC2",
                       Filters=filters, FormatVersion="aws_v1"):
        for raw in page.get("PriceList", []):
            item = json.loads(raw) if isinstance(raw, str) else raw
            itype = item.get("product", {}).get("attributes", {}).get("instanceType", "")
            if itype not in wanted:
                continue
            for term in item.get("terms", {}).get("OnDemand", {}).values():
                for dim in term.get("priceDimensions", {}).values():
                    usd = float(dim.get("pricePerUnit", {}).get("USD", "0") or 0)
                    if usd > 0 and dim.get("unit", "Hrs") == "Hrs" and usd < out.get(itype, float("inf")):
                        out[itype] = usd
    return out


def service_quotas(session: AwsSession, region: str, codes: Iterable[str]) -> dict[str, float]:
    """Quota code -> applied value (vCPUs) for the wanted EC2 quota codes; list first, then get one by one."""
    client = session.client("service-quotas", region)
    wanted = set(codes)
    out: dict[str, float] = {}
    try:
        for page in _pages("servicequotas:ListServiceQuotas", region, client, "list_service_quotas",
                           ServiceCode="ec2"):
            out.update({q["QuotaCode"]: float(q["Value"]) for q in page.get("Quotas", [])
                        if q.get("QuotaCode") in wanted})
    except AwsGap:
        pass  # a role may allow GetServiceQuota only: ask for each code below
    for code in sorted(wanted - set(out)):
        try:
            answer = _guarded("servicequotas:GetServiceQuota", region, client.get_service_quota,
                              ServiceCode="ec2", QuotaCode=code)
        except AwsGap as gap:
            if "NoSuchResource" not in gap.message:
                raise
            answer = _guarded("servicequotas:GetAWSDefaultServiceQuota", region,
                              client.get_aws_default_service_quota, ServiceCode="ec2", QuotaCode=code)
        out[code] = float(answer["Quota"]["Value"])
    return out


def running_instances(session: AwsSession, region: str) -> list[tuple[str, bool, int]]:
    """(instance type, is spot, vCPUs) of every pending or running instance in the region."""
    ec2 = session.client("ec2", region)
    out = []
    for page in _pages("ec2:DescribeInstances", region, ec2, "describe_instances",
                       Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]):
        for reservation in page.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                cpu = inst.get("CpuOptions", {})
                vcpus = int(cpu.get("CoreCount", 0)) * int(cpu.get("ThreadsPerCore", 1))
                out.append((inst["InstanceType"], inst.get("InstanceLifecycle") == "spot", vcpus))
    return out


def instance_vcpus(session: AwsSession, region: str, types: Iterable[str]) -> dict[str, int]:
    """instance type -> default vCPUs (for running instances whose CpuOptions are missing)."""
    ec2 = session.client("ec2", region)
    wanted = sorted(set(types))
    out: dict[str, int] = {}
    if wanted:
        for page in _pages("ec2:DescribeInstanceTypes", region, ec2, "describe_instance_types",
                           InstanceTypes=wanted):
            out.update({t["InstanceType"]: int(t["VCpuInfo"]["DefaultVCpus"]) for t in page.get("InstanceTypes", [])})
    return out
