"""Round trips between cloud regions: what a request pays when the router and a stage run in different places.

The router calls every stage a request reaches; a stage in another region or cloud than the router adds one round
trip per request to that stage (and to every request answered after it). The table is `catalogs/rtt.csv`, one row
per pair of places (`cloud/region`), with its source: today estimates from the great-circle distance between the
regions' published locations (not measurements; see the `source` column). It is optional: a missing file or pair
counts as no round trip, and a place to itself is 0.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

from cascadia_sky.catalog import catalog_dir
from cascadia_sky.errors import CatalogError

RTT_FILE = "rtt.csv"


@functools.lru_cache(maxsize=4)
def _table_at(directory: str) -> dict[tuple[str, str], float]:
    path = Path(directory) / RTT_FILE
    if not path.is_file():
        return {}
    out: dict[tuple[str, str], float] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                rtt = float(row["rtt_ms"]) / 1000.0
                a, b = row["place_a"].strip(), row["place_b"].strip()
            except (KeyError, TypeError, ValueError):
                raise CatalogError(f"{RTT_FILE}: line {line}: needs place_a, place_b and a number rtt_ms; fix or "
                                   "delete the row") from None
            if rtt < 0 or not row.get("source", "").strip():
                raise CatalogError(f"{RTT_FILE}: line {line}: rtt_ms must be >= 0 and the row needs a source")
            out[(a, b)] = out[(b, a)] = rtt
    return out


def rtt_table() -> dict[tuple[str, str], float]:
    """(place, place) -> round trip in seconds, both orders (places are `cloud/region`)."""
    return dict(_table_at(str(catalog_dir())))


def rtt_s(a: str | None, b: str | None, table: dict[tuple[str, str], float] | None = None) -> float:
    """Round trip between two places in seconds: 0 for the same place or an unknown one (the table is optional)."""
    if not a or not b or a == b:
        return 0.0
    return (table if table is not None else _table_at(str(catalog_dir()))).get((a, b), 0.0)


__all__ = ["RTT_FILE", "rtt_s", "rtt_table"]
