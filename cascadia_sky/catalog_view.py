"""What `cascadia catalog` shows: GPU specs, the cheapest offers, and where each price comes from and how old it is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cascadia_sky.catalog import (
    GpuSpec,
    Offer,
    active_offer_file,
    canonical_gpu_name,
    cheapest_offers,
    clouds as catalog_clouds,
    gpu_specs,
)
from cascadia_sky.constants import CATALOG_STALE_AFTER_DAYS


def price_age_days(offer: Offer, now: datetime | None = None) -> float:
    """Days since the offer's on-demand price was taken (from the fetch time, else from midnight UTC of its date)."""
    now = now or datetime.now(timezone.utc)
    stamp = datetime.fromisoformat(offer.fetched_at) if offer.fetched_at else \
        datetime.fromisoformat(offer.price_date).replace(tzinfo=timezone.utc)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return max(0.0, (now - stamp).total_seconds() / 86400.0)


def format_age(days: float) -> str:
    """'3 h', '5 d': the coarse age a person reads at a glance."""
    return f"{days * 24:.0f} h" if days < 2 else f"{days:.0f} d"


@dataclass(frozen=True)
class CatalogSource:
    """One cloud's offers file: user (refreshed) or shipped, its source and the age of its prices."""

    cloud: str
    user: bool
    path: str
    source: str
    date: str
    fetched_at: str
    age_days: float
    stale: bool
    gaps: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {"cloud": self.cloud, "kind": "user" if self.user else "shipped", "path": self.path,
                "source": self.source, "date": self.date, "fetched_at": self.fetched_at,
                "age_days": round(self.age_days, 3), "stale": self.stale, "gaps": list(self.gaps)}


def catalog_sources(clouds: Iterable[str] | None = None, now: datetime | None = None) -> list[CatalogSource]:
    """The active offers file of every cloud asked for (all by default), with a staleness flag per file."""
    now = now or datetime.now(timezone.utc)
    out = []
    for cloud in (list(clouds) if clouds is not None else catalog_clouds()):
        f = active_offer_file(cloud)
        stamp = datetime.fromisoformat(f.fetched_at) if f.fetched_at else \
            datetime.fromisoformat(f.date).replace(tzinfo=timezone.utc)
        age = max(0.0, (now - stamp).total_seconds() / 86400.0)
        gaps = tuple(f"{g['api']} in {g['region']}: {g['message']}" for g in f.meta_dict.get("gaps", []))
        out.append(CatalogSource(cloud=cloud.lower(), user=f.user, path=str(f.path), source=f.source, date=f.date,
                                 fetched_at=f.fetched_at, age_days=age, stale=age > CATALOG_STALE_AFTER_DAYS,
                                 gaps=gaps))
    return out


@dataclass(frozen=True)
class CatalogView:
    """What `cascadia catalog` shows: GPU specs and the cheapest offer per (GPU type, GPUs per instance)."""

    gpus: tuple[GpuSpec, ...]
    offers: tuple[Offer, ...]
    spot: bool
    sources: tuple[CatalogSource, ...] = ()
    ages_days: tuple[float, ...] = ()       # per offer: age of its price

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (the `--json` output)."""
        offers = []
        for o, age in zip(self.offers, self.ages_days, strict=True):
            offers.append({**o.to_dict(), "price_age_days": round(age, 3),
                           "stale": age > CATALOG_STALE_AFTER_DAYS})
        return {"spot": self.spot, "gpus": [g.to_dict() for g in self.gpus], "cheapest_offers": offers,
                "catalogs": [s.to_dict() for s in self.sources], "stale_after_days": CATALOG_STALE_AFTER_DAYS}

    @property
    def stale_clouds(self) -> list[str]:
        """Clouds whose prices are older than the staleness limit."""
        return [s.cloud for s in self.sources if s.stale]


def catalog_view(clouds: Iterable[str] | None = None, gpu_types: Iterable[str] | None = None,
                 spot: bool = False, max_usd_per_hour: float | None = None,
                 now: datetime | None = None) -> CatalogView:
    """GPU specs (filtered by `gpu_types`), the cheapest offers under the filters, and each cloud's price source."""
    gpu_list = list(gpu_types) if gpu_types is not None else None
    cloud_list = list(clouds) if clouds is not None else None
    specs = gpu_specs()
    names = [canonical_gpu_name(g) for g in gpu_list] if gpu_list else list(specs)
    chosen = tuple(specs[n] for n in dict.fromkeys(names))
    offers = tuple(cheapest_offers(cloud_list, gpu_list or None, spot, max_usd_per_hour))
    return CatalogView(gpus=chosen, offers=offers, spot=spot, sources=tuple(catalog_sources(cloud_list, now)),
                       ages_days=tuple(price_age_days(o, now) for o in offers))
