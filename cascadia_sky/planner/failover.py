"""Equivalent offers: what a stage may fail over to when its chosen offer has no capacity.

The MILP picks one offer per stage (an instance type in one region of one cloud). Clouds run out of GPUs per region,
so the plan also lists, per stage, the offers that serve the same deployment: the same GPU type and GPUs per
instance (so the same TP x PP layout, instances and GPU memory), in any allowed region or cloud (one region with
`single_region`), whose $/h for the stage is at most `failover_band` above the chosen one, and which keep the whole
plan within its budget and its capacity caps. The caps are those of the MILP (`gpu:<type>` GPU quotas, and EC2 vCPU
quotas per region, family and purchase option under `quota: auto`): an offer in a region whose vCPU quota the rest of
the plan leaves too small is not equivalent. The chosen offer comes first, then the others by price; the launcher
renders the list as SkyPilot's `resources.ordered`, so SkyPilot's provisioner tries them in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from cascadia_sky.catalog import Offer
from cascadia_sky.constants import FAILOVER_MAX_OFFERS
from cascadia_sky.planner.deploy import Candidate
from cascadia_sky.planner.plan import OfferChoice
from cascadia_sky.planner.verify import uses_of, within

OfferUses = Callable[[Offer, int], Mapping[str, float]]


def offer_key(cloud: str, region: str, instance_type: str) -> str:
    """cloud/region/instance_type: how exclusions (`resources.cloud.exclude_offers`) name an offer."""
    return f"{cloud}/{region}/{instance_type}"


def stage_price(c: Candidate, offer: Offer) -> float | None:
    """The stage's $/h on `offer` with the candidate's replicas and instances (as `cloud_table` prices it)."""
    unit = offer.price(c.spot)
    if unit is None or not c.replicas or not c.instances:
        return None
    return round(unit * (c.instances // c.replicas) * c.replicas, 6)


def equivalent_offers(chosen: Sequence[Candidate], offers: Sequence[Offer], *, band: float,
                      caps: Mapping[str, float], offer_uses: OfferUses | None = None,
                      budget_usd_per_hour: float | None = None, single_region: bool = False,
                      max_offers: int = FAILOVER_MAX_OFFERS) -> list[list[OfferChoice]]:
    """Per stage, its failover list (empty for a stage with no cloud offer, e.g. pool or local plans, or idle)."""
    total_usd = sum(c.usd_per_hour for c in chosen)
    used: dict[str, float] = {}
    for c in chosen:
        for k, v in uses_of(c).items():
            used[k] = used.get(k, 0.0) + v
    out: list[list[OfferChoice]] = []
    for c in chosen:
        if not c.cloud or not c.replicas or not c.instance_type:
            out.append([])
            continue
        others = {k: v - uses_of(c).get(k, 0.0) for k, v in used.items()}
        mine: list[tuple[float, str, str, str]] = []
        for o in offers:
            price = stage_price(c, o) if (o.gpu, o.gpus) == (c.gpu_type, c.gpus_per_instance) else None
            if price is None or not within(price, c.usd_per_hour * (1 + band)):
                continue
            if single_region and (o.cloud, o.region) != (c.cloud, c.region):
                continue
            if budget_usd_per_hour is not None and not within(total_usd - c.usd_per_hour + price,
                                                              budget_usd_per_hour):
                continue
            uses = {f"gpu:{c.gpu_type}": float(c.gpus),
                    **(offer_uses(o, c.instances or 0) if offer_uses is not None else {})}
            if any(not within(others.get(k, 0.0) + uses.get(k, 0.0), cap) for k, cap in caps.items()):
                continue
            mine.append((price, o.cloud, o.region, o.instance_type))
        first = (c.cloud, c.region, c.instance_type)
        mine = sorted(set(mine), key=lambda t: (t[1:] != first, t[0], t[1], t[2], t[3]))
        if not mine or mine[0][1:] != first:   # the chosen offer itself always leads (it is what was planned)
            mine.insert(0, (c.usd_per_hour, *first))
        out.append([OfferChoice(cloud=cl, region=rg, instance_type=it, usd_per_hour=p)
                    for p, cl, rg, it in mine[:max_offers]])
    return out


__all__ = ["equivalent_offers", "offer_key", "stage_price"]
