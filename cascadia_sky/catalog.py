"""GPU hardware specs and cloud offers, loaded from the CSV catalogs in `catalogs/`.

The data ships inside the package as `cascadia_sky.catalogs` (read with importlib.resources), so an installed wheel
works without the source tree; CASCADIA_CATALOG_DIR points at another directory with the same layout.

A user catalog (`cascadia catalog refresh`, written under $CASCADIA_HOME/catalogs/offers/<cloud>.csv with a
`<cloud>.meta.json` saying when and from where) replaces the shipped offers of that cloud when it is at least as
new; its rows whose GPU is not in gpus.csv (or is a fraction of a GPU) are skipped, not errors.

GPU names are SkyPilot's canonical accelerator names (`A100` is the 40 GB part, `A100-80GB` the 80 GB one), so a
planned GPU type can be handed to SkyPilot as it is. Lookups are case-insensitive and accept aliases (`h100_sxm`).
Throughput figures are dense (no 2:4 sparsity) datasheet peaks; interconnect is the datasheet's per-GPU intra-node
figure (NVLink/xGMI totals are both directions summed, PCIe x16 too).
"""

from __future__ import annotations

import csv
import difflib
import functools
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Callable, TypeVar

from cascadia_sky.constants import (
    CATALOG_DIR_ENV_VAR,
    DEFAULT_HOME_DIRNAME,
    HOME_ENV_VAR,
    USER_CATALOG_DIRNAME,
)
from cascadia_sky.errors import CatalogError

GPUS_FILE = "gpus.csv"
OFFERS_DIR = "offers"
OFFER_SOURCES_FILE = "offer_sources.csv"
GCP_HOSTS_FILE = "gcp_hosts.csv"
GPU_COLUMNS: tuple[str, ...] = (
    "name", "aliases", "vendor", "memory_gb", "bf16_dense_tflops", "fp8_dense_tflops", "int8_dense_tops",
    "hbm_tb_s", "interconnect", "interconnect_gb_s", "gpus_per_node", "source",
)

# SkyPilot's v8 `<cloud>/vms.csv` layouts, column order included (skypilot-catalog catalogs/v8/*/vms.csv, and
# sky/catalog/data_fetchers/fetch_*.py). offers/<cloud>.csv must match exactly, so it can seed SkyPilot's cache.
SKYPILOT_VMS_COLUMNS: dict[str, tuple[str, ...]] = {
    "aws": ("InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Price",
            "SpotPrice", "Region", "AvailabilityZone", "Arch"),
    "azure": ("InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Price",
              "SpotPrice", "Region", "Generation"),
    "gcp": ("InstanceType", "vCPUs", "MemoryGiB", "AcceleratorName", "AcceleratorCount", "GpuInfo", "Region",
            "AvailabilityZone", "Price", "SpotPrice"),
    "lambda": ("InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Price", "Region",
               "GpuInfo", "SpotPrice"),
}
# SkyPilot's display names, for common/accelerators.csv (its `Clouds` column lists these).
SKYPILOT_CLOUD_NAMES = {"aws": "AWS", "azure": "Azure", "gcp": "GCP", "lambda": "Lambda"}

_T = TypeVar("_T")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU type: what the performance model and the planner need to know about it."""

    name: str                     # SkyPilot's canonical accelerator name
    memory_gb: float              # device memory as the datasheet states it (nominal: an "80 GB" H100 shows 81559 MiB)
    bf16_tflops: float            # dense BF16 tensor throughput, TFLOP/s
    fp8_tflops: float | None      # dense FP8 tensor throughput, TFLOP/s; None where the GPU has no FP8
    hbm_tb_s: float               # device memory bandwidth, TB/s
    interconnect_gb_s: float      # intra-node per-GPU bandwidth (NVLink/xGMI/PCIe), GB/s, datasheet figure
    gpus_per_node: int            # most GPUs of this type in one node
    vendor: str
    aliases: tuple[str, ...] = ()
    int8_tops: float | None = None   # dense INT8 tensor throughput, TOP/s
    interconnect: str = ""           # what the interconnect is (e.g. "NVLink 4")
    source: str = ""                 # datasheet the numbers come from

    def tflops(self, precision: str) -> float:
        """Dense tensor throughput (TFLOP/s) for a weight/compute precision name (bf16, fp16, fp8, int8, int4-awq).

        Weight-only quantisation (int4-awq) computes in bf16; fp8 falls back to bf16 on GPUs without FP8.
        """
        p = precision.lower()
        if p in ("fp8", "float8") and self.fp8_tflops is not None:
            return self.fp8_tflops
        if p == "int8" and self.int8_tops is not None:
            return self.int8_tops
        return self.bf16_tflops

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        out = asdict(self)
        out["aliases"] = list(self.aliases)
        return out


# --- files -----------------------------------------------------------------------------------


def catalog_dir() -> Path:
    """The directory holding gpus.csv and offers/: CASCADIA_CATALOG_DIR, else the package's own copy."""
    override = os.environ.get(CATALOG_DIR_ENV_VAR, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise CatalogError(f"{CATALOG_DIR_ENV_VAR}={override}: not a directory; point it at a copy of "
                               f"catalogs/ or unset it")
        return path
    try:
        return Path(str(resources.files("cascadia_sky.catalogs")))
    except ModuleNotFoundError as exc:  # a broken install: the data package was not mapped
        raise CatalogError("the catalog data package 'cascadia_sky.catalogs' is not installed; "
                           "reinstall with `pip install -e .` (or set " + CATALOG_DIR_ENV_VAR + ")") from exc


def _read_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with their line numbers; every required column must be in the header."""
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found; restore it from the source tree or fix "
                           f"{CATALOG_DIR_ENV_VAR}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise CatalogError(f"{path.name}: header: missing column(s) {', '.join(missing)}; "
                               f"expected {', '.join(required)}")
        rows = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise CatalogError(f"{path.name}: line {reader.line_num}: more cells than header columns; "
                                   f"quote cells that contain commas")
            rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    return rows


def _cell(file: str, line: int, row: dict[str, str], column: str, parse: Callable[[str], _T], *,
          optional: bool = False, positive: bool = True) -> _T | None:
    """One parsed cell; a bad value raises CatalogError naming file, line and column."""
    raw = row.get(column, "")
    if raw == "":
        if optional:
            return None
        raise CatalogError(f"{file}: line {line}, column '{column}': empty; fill it in")
    try:
        value = parse(raw)
    except ValueError:
        kind = "an integer" if parse in (int, _int) else "a number"
        raise CatalogError(f"{file}: line {line}, column '{column}': {raw!r} is not {kind}") from None
    if positive and isinstance(value, (int, float)) and not value > 0:
        raise CatalogError(f"{file}: line {line}, column '{column}': {raw!r} must be > 0")
    return value


def _int(raw: str) -> int:
    """An integer cell; '8.0' (as SkyPilot writes counts) is accepted."""
    value = float(raw)
    if not value.is_integer():
        raise ValueError(raw)
    return int(value)


def _key(name: str) -> str:
    """Lookup key: case and separators do not matter (H100-SXM == h100_sxm == h100sxm)."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


# --- GPUs --------------------------------------------------------------------------------------


def _parse_gpu(file: str, line: int, row: dict[str, str]) -> GpuSpec:
    name = row["name"]
    if not name:
        raise CatalogError(f"{file}: line {line}, column 'name': empty; fill it in")
    aliases = tuple(a.strip() for a in row["aliases"].split(";") if a.strip())
    return GpuSpec(
        name=name,
        memory_gb=_cell(file, line, row, "memory_gb", float),
        bf16_tflops=_cell(file, line, row, "bf16_dense_tflops", float),
        fp8_tflops=_cell(file, line, row, "fp8_dense_tflops", float, optional=True),
        hbm_tb_s=_cell(file, line, row, "hbm_tb_s", float),
        interconnect_gb_s=_cell(file, line, row, "interconnect_gb_s", float),
        gpus_per_node=_cell(file, line, row, "gpus_per_node", _int),
        vendor=row["vendor"],
        aliases=aliases,
        int8_tops=_cell(file, line, row, "int8_dense_tops", float, optional=True),
        interconnect=row["interconnect"],
        source=row["source"],
    )


def load_gpu_specs(path: Path) -> dict[str, GpuSpec]:
    """Parse a gpus.csv file (uncached; `gpu_specs()` is the cached view of the active catalog)."""
    specs: dict[str, GpuSpec] = {}
    owner: dict[str, str] = {}  # lookup key -> canonical name, to catch clashes between names and aliases
    for line, row in _read_rows(path, GPU_COLUMNS):
        spec = _parse_gpu(path.name, line, row)
        for label in (spec.name, *spec.aliases):
            key = _key(label)
            if key in owner and owner[key] != spec.name:
                raise CatalogError(f"{path.name}: line {line}, column 'aliases': {label!r} already names "
                                   f"{owner[key]!r}; names and aliases must be unique")
            owner[key] = spec.name
        if spec.name in specs:
            raise CatalogError(f"{path.name}: line {line}, column 'name': duplicate GPU {spec.name!r}")
        specs[spec.name] = spec
    if not specs:
        raise CatalogError(f"{path.name}: no GPU rows")
    return specs


@functools.lru_cache(maxsize=4)
def _gpu_specs_at(directory: str) -> dict[str, GpuSpec]:
    return load_gpu_specs(Path(directory) / GPUS_FILE)


def gpu_specs() -> dict[str, GpuSpec]:
    """All GPU types of the active catalog by canonical name (cached per catalog directory)."""
    return dict(_gpu_specs_at(str(catalog_dir())))


def gpu_names() -> list[str]:
    """Canonical GPU names in catalog order."""
    return list(_gpu_specs_at(str(catalog_dir())))


@functools.lru_cache(maxsize=4)
def _gpu_index(directory: str) -> dict[str, str]:
    index: dict[str, str] = {}
    for spec in _gpu_specs_at(directory).values():
        for label in (spec.name, *spec.aliases):
            index[_key(label)] = spec.name
    return index


def canonical_gpu_name(name: str) -> str:
    """The canonical name for a GPU name or alias (any case); CatalogError with a suggestion if unknown."""
    directory = str(catalog_dir())
    index = _gpu_index(directory)
    found = index.get(_key(name))
    if found is not None:
        return found
    specs = _gpu_specs_at(directory)
    labels = {label: spec.name for spec in specs.values() for label in (spec.name, *spec.aliases)}
    close = difflib.get_close_matches(name, list(labels), n=1, cutoff=0.6)
    if not close:  # try again ignoring case and separators
        by_key = {_key(label): target for label, target in labels.items()}
        close_keys = difflib.get_close_matches(_key(name), list(by_key), n=1, cutoff=0.6)
        close = [by_key[k] for k in close_keys]
    hint = f" (did you mean {labels.get(close[0], close[0])!r}?)" if close else ""
    raise CatalogError(f"unknown GPU {name!r}{hint}; known GPUs: {', '.join(specs)} "
                       f"(see `cascadia catalog`)")


def get_gpu(name: str) -> GpuSpec:
    """The spec of a GPU by canonical name or alias, case-insensitive."""
    return _gpu_specs_at(str(catalog_dir()))[canonical_gpu_name(name)]


# --- cloud offers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """One rentable instance: a cloud instance type with `gpus` GPUs of one type, in one region, and its price.

    GCP prices GPUs apart from the host VM; its offers carry host + GPUs, as SkyPilot's optimizer adds them.
    `price_date` is the day the price was taken from its source (a SkyPilot catalog snapshot, whose own fetch
    date may be earlier; see catalogs/offers/SOURCES.md).
    """

    cloud: str
    instance_type: str
    gpu: str                           # canonical GPU name (gpus.csv)
    gpus: int                          # GPUs per instance
    vcpus: float
    memory_gib: float
    region: str
    usd_per_hour: float                # on-demand, whole instance
    spot_usd_per_hour: float | None    # None where the source lists no spot price
    source: str
    price_date: str
    zone: str = ""                     # availability zone of the row ("" where the cloud's catalog has none)
    fetched_at: str = ""               # user catalogs: ISO time (UTC) the prices were fetched; "" when only a date
    spot_source: str = ""              # where the spot price comes from when not `source`

    def price(self, spot: bool = False) -> float | None:
        """$/hour of the whole instance; None when spot is asked for and not offered."""
        return self.spot_usd_per_hour if spot else self.usd_per_hour

    def usd_per_gpu_hour(self, spot: bool = False) -> float | None:
        """$/hour per GPU, the figure to compare instances of different sizes."""
        price = self.price(spot)
        return None if price is None else price / self.gpus

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


def user_catalog_dir() -> Path:
    """Where refreshed catalogs live: $CASCADIA_HOME/catalogs, else ~/.cascadia/catalogs (not created here)."""
    home = os.environ.get(HOME_ENV_VAR) or str(Path.home() / DEFAULT_HOME_DIRNAME)
    return Path(home).expanduser() / USER_CATALOG_DIRNAME


def user_offer_paths(cloud: str) -> tuple[Path, Path]:
    """(offers CSV, meta JSON) of a cloud's user catalog."""
    name = _check_cloud(cloud)
    base = user_catalog_dir() / OFFERS_DIR
    return base / f"{name}.csv", base / f"{name}.meta.json"


@dataclass(frozen=True)
class OfferFile:
    """The offers file a cloud's offers come from, and where its prices come from."""

    path: Path
    user: bool              # a refreshed user catalog (else the shipped one)
    source: str
    date: str               # YYYY-MM-DD of the prices
    fetched_at: str = ""    # user catalogs: ISO time of the fetch
    meta: tuple[tuple[str, Any], ...] = ()

    @property
    def meta_dict(self) -> dict[str, Any]:
        """The meta file's content (user catalogs; empty for shipped ones)."""
        return {k: json.loads(v) for k, v in self.meta}


def _user_offer_file(cloud: str) -> OfferFile | None:
    csv_path, meta_path = user_offer_paths(cloud)
    if not csv_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        fetched = datetime.fromisoformat(meta["fetched_at"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CatalogError(f"{meta_path}: missing or unreadable (it says when {csv_path.name} was fetched); run "
                           f"`cascadia catalog refresh --cloud {cloud}` again or delete {csv_path}") from None
    return OfferFile(path=csv_path, user=True, source=str(meta.get("source", "user catalog")),
                     date=fetched.date().isoformat(), fetched_at=fetched.isoformat(),
                     meta=tuple(sorted((k, json.dumps(v)) for k, v in meta.items())))


def active_offer_file(cloud: str) -> OfferFile:
    """The newest catalog of a cloud: the user's refreshed one when it is at least as new as the shipped one."""
    name = _check_cloud(cloud)
    user = _user_offer_file(name)
    shipped_path = catalog_dir() / OFFERS_DIR / f"{name}.csv"
    shipped_source, shipped_date = _offer_sources(catalog_dir()).get(name, ("", ""))
    if user is not None and (not shipped_path.is_file() or user.date >= shipped_date):
        return user
    return OfferFile(path=offer_csv_path(name, shipped=True), user=False, source=shipped_source, date=shipped_date)


def shipped_offer_rows(cloud: str) -> tuple[list[dict[str, str]], str]:
    """The shipped offers file's rows of a cloud and the date of its prices."""
    name = _check_cloud(cloud)
    rows = _read_offer_file(offer_csv_path(name, shipped=True), name)
    return [row for _, row in rows], _offer_sources(catalog_dir()).get(name, ("", ""))[1]


def offer_csv_path(cloud: str, shipped: bool = False) -> Path:
    """The offers file of a cloud (the newest, user or shipped; `shipped` forces the shipped one), laid out as
    SkyPilot's v8 `<cloud>/vms.csv` (the launcher seeds SkyPilot with it)."""
    name = _check_cloud(cloud)
    if not shipped:
        return active_offer_file(name).path
    path = catalog_dir() / OFFERS_DIR / f"{name}.csv"
    if not path.is_file():
        raise CatalogError(f"{OFFERS_DIR}/{name}.csv: not found in {catalog_dir()}; restore it or fix "
                           f"{CATALOG_DIR_ENV_VAR}")
    return path


def clouds() -> list[str]:
    """Clouds that have an offers file, sorted; a file for a cloud whose layout is unknown is an error."""
    return _cloud_names()


def _cloud_names() -> list[str]:
    offers_dir = catalog_dir() / OFFERS_DIR
    names = sorted(p.stem for p in offers_dir.glob("*.csv")) if offers_dir.is_dir() else []
    for name in names:
        if name not in SKYPILOT_VMS_COLUMNS:
            raise CatalogError(f"{OFFERS_DIR}/{name}.csv: unknown cloud {name!r}; offers files must be named after a "
                               f"cloud with a known SkyPilot layout: {', '.join(sorted(SKYPILOT_VMS_COLUMNS))}")
    return names


def _check_cloud(cloud: str) -> str:
    name = cloud.strip().lower()
    if name not in SKYPILOT_VMS_COLUMNS:
        close = difflib.get_close_matches(name, list(SKYPILOT_VMS_COLUMNS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CatalogError(f"unknown cloud {cloud!r}{hint}; known clouds: {', '.join(sorted(SKYPILOT_VMS_COLUMNS))}")
    return name


def _read_offer_file(path: Path, cloud: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of an offers file whose header is exactly SkyPilot's layout for the cloud."""
    expected = SKYPILOT_VMS_COLUMNS[cloud]
    rows = _read_rows(path, expected)
    with path.open(newline="", encoding="utf-8") as f:
        header = tuple(next(csv.reader(f), []))
    if header != expected:
        raise CatalogError(f"{OFFERS_DIR}/{path.name}: header: columns must be exactly SkyPilot's v8 {cloud}/vms.csv "
                           f"layout {','.join(expected)}; got {','.join(header)}")
    return rows


def _offer_sources(directory: Path) -> dict[str, tuple[str, str]]:
    """cloud -> (source, retrieved date) from offer_sources.csv."""
    path = directory / OFFER_SOURCES_FILE
    out: dict[str, tuple[str, str]] = {}
    for line, row in _read_rows(path, ("cloud", "source", "retrieved")):
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["retrieved"]):
            raise CatalogError(f"{path.name}: line {line}, column 'retrieved': {row['retrieved']!r} is not a "
                               f"YYYY-MM-DD date")
        out[row["cloud"].lower()] = (row["source"], row["retrieved"])
    return out


def _gcp_hosts(directory: Path) -> dict[tuple[str, int], str]:
    """(GPU, count) -> GCP host VM type, as SkyPilot's gcp_catalog pairs them."""
    path = directory / GCP_HOSTS_FILE
    return {(row["AcceleratorName"], _cell(path.name, line, row, "AcceleratorCount", _int)):
            row["InstanceType"] for line, row in _read_rows(path, ("AcceleratorName", "AcceleratorCount",
                                                                    "InstanceType"))}


def _gpu_of(file: str, line: int, row: dict[str, str], index: dict[str, str]) -> str:
    found = index.get(_key(row["AcceleratorName"]))
    if found is None:
        raise CatalogError(f"{file}: line {line}, column 'AcceleratorName': GPU {row['AcceleratorName']!r} is not in "
                           f"{GPUS_FILE}; add it there or drop the row")
    return found


def _parse_offers(directory: Path, cloud: str, user_path: str = "") -> list[Offer]:
    if user_path:
        return _parse_user_offers(directory, cloud, Path(user_path))
    path = directory / OFFERS_DIR / f"{cloud}.csv"
    file = f"{OFFERS_DIR}/{path.name}"
    rows = _read_offer_file(path, cloud)
    sources = _offer_sources(directory)
    if cloud not in sources:
        raise CatalogError(f"{OFFER_SOURCES_FILE}: no row for cloud {cloud!r}; every offers file needs its source "
                           f"and date")
    source, retrieved = sources[cloud]
    index = _gpu_index(str(directory))

    def price(line: int, row: dict[str, str], column: str, optional: bool) -> float | None:
        value = _cell(file, line, row, column, float, optional=optional, positive=False)
        if value is not None and value < 0:
            raise CatalogError(f"{file}: line {line}, column '{column}': {row[column]!r} must be >= 0")
        return value

    def make(line: int, row: dict[str, str], host: dict[str, str] | None, host_line: int) -> Offer:
        gpu = _gpu_of(file, line, row, index)
        gpus = _cell(file, line, row, "AcceleratorCount", _int)
        usd = price(line, row, "Price", optional=False)
        spot = price(line, row, "SpotPrice", optional=True)
        base = host if host is not None else row
        base_line = host_line if host is not None else line
        if host is not None:  # GCP: the host VM is priced apart; SkyPilot adds the two
            host_usd = price(host_line, host, "Price", optional=False)
            host_spot = price(host_line, host, "SpotPrice", optional=True)
            usd = usd + host_usd
            spot = None if spot is None or host_spot is None else spot + host_spot
        if not usd > 0:
            raise CatalogError(f"{file}: line {line}, column 'Price': the instance price must be > 0")
        return Offer(cloud=cloud, instance_type=base["InstanceType"], gpu=gpu, gpus=gpus,
                     vcpus=_cell(file, base_line, base, "vCPUs", float),
                     memory_gib=_cell(file, base_line, base, "MemoryGiB", float),
                     region=row["Region"], usd_per_hour=round(usd, 6),
                     spot_usd_per_hour=None if spot is None else round(spot, 6),
                     source=source, price_date=retrieved, zone=row.get("AvailabilityZone", ""))

    offers_: list[Offer] = []
    if cloud == "gcp":
        hosts_for = _gcp_hosts(directory)
        host_rows = {(row["InstanceType"], row["AvailabilityZone"]): (line, row) for line, row in rows
                     if row["InstanceType"]}
        for line, row in rows:
            if row["InstanceType"] or not row["AcceleratorName"]:
                continue  # host VM rows are joined below; CPU-only rows are not GPU offers
            gpus = _cell(file, line, row, "AcceleratorCount", _int)
            host_type = hosts_for.get((row["AcceleratorName"], gpus))
            if host_type is None:
                raise CatalogError(f"{file}: line {line}: no host VM for {row['AcceleratorName']}:{gpus} in "
                                   f"{GCP_HOSTS_FILE}; add the pairing SkyPilot uses")
            host_line, host = host_rows.get((host_type, row["AvailabilityZone"]), (0, None))
            if host is None:
                raise CatalogError(f"{file}: line {line}: host VM {host_type} has no row in zone "
                                   f"{row['AvailabilityZone']}; add it (SkyPilot prices the host apart)")
            offers_.append(make(line, row, host, host_line))
    else:
        for line, row in rows:
            if row["AcceleratorName"]:
                offers_.append(make(line, row, None, 0))
    return offers_


def _parse_user_offers(directory: Path, cloud: str, path: Path) -> list[Offer]:
    """A refreshed catalog: rows of GPUs we know, whole GPUs only, each price with its source (see the meta)."""
    if cloud == "gcp":
        raise CatalogError(f"{path}: user catalogs for gcp are not supported yet; delete the file")
    info = _user_offer_file(cloud)
    assert info is not None
    meta = info.meta_dict
    fallbacks: dict[str, str] = meta.get("price_fallbacks", {})
    index = _gpu_index(str(directory))
    out = []
    for line, row in _read_offer_file(path, cloud):
        gpu = index.get(_key(row["AcceleratorName"]))
        try:
            gpus = float(row["AcceleratorCount"])
        except ValueError:
            gpus = 0.0
        if gpu is None or not gpus.is_integer() or gpus < 1 or not row["Price"]:
            continue
        file = str(path)
        usd = _cell(file, line, row, "Price", float)
        spot = _cell(file, line, row, "SpotPrice", float, optional=True)
        fallback = fallbacks.get(f"{row['InstanceType']}/{row['Region']}")
        out.append(Offer(cloud=cloud, instance_type=row["InstanceType"], gpu=gpu, gpus=int(gpus),
                         vcpus=_cell(file, line, row, "vCPUs", float),
                         memory_gib=_cell(file, line, row, "MemoryGiB", float), region=row["Region"],
                         usd_per_hour=round(usd, 6), spot_usd_per_hour=None if spot is None else round(spot, 6),
                         source=fallback or str(meta.get("on_demand_source", info.source)),
                         price_date=fallback.rsplit(" ", 1)[-1] if fallback else info.date,
                         zone=row.get("AvailabilityZone", ""), fetched_at="" if fallback else info.fetched_at,
                         spot_source=str(meta.get("spot_source", ""))))
    return out


@functools.lru_cache(maxsize=16)
def _offers_cached(directory: str, cloud: str, user_path: str, _mtime_ns: int) -> tuple[Offer, ...]:
    return tuple(_parse_offers(Path(directory), cloud, user_path))


def _offers_at(directory: str, cloud: str) -> tuple[Offer, ...]:
    """The offers of the cloud's newest catalog (cached per file and modification time)."""
    active = active_offer_file(cloud)
    if not active.user:
        return _offers_cached(directory, cloud, "", 0)
    return _offers_cached(directory, cloud, str(active.path), active.path.stat().st_mtime_ns)


def clear_cache() -> None:
    """Forget parsed catalogs (after editing the files in a running process)."""
    _gpu_specs_at.cache_clear()
    _gpu_index.cache_clear()
    _offers_cached.cache_clear()


def offers(clouds: Iterable[str] | None = None, gpu_types: Iterable[str] | None = None,
           spot: bool = False) -> list[Offer]:
    """Every offer of the given clouds (all by default) and GPU types (names or aliases; all by default).

    With `spot`, offers without a spot price are left out. Sorted by GPU (catalog order), GPUs per instance,
    then price per hour (spot or on-demand as asked).
    """
    directory = str(catalog_dir())
    wanted_clouds = [_check_cloud(c) for c in clouds] if clouds is not None else _cloud_names()
    wanted_gpus = {canonical_gpu_name(g) for g in gpu_types} if gpu_types is not None else None
    order = {name: i for i, name in enumerate(gpu_names())}
    out = [o for c in wanted_clouds for o in _offers_at(directory, c)
           if (wanted_gpus is None or o.gpu in wanted_gpus) and (not spot or o.spot_usd_per_hour is not None)]
    out.sort(key=lambda o: (order[o.gpu], o.gpus, o.price(spot), o.cloud, o.region, o.instance_type))
    return out


def cheapest_offers(clouds: Iterable[str] | None = None, gpu_types: Iterable[str] | None = None,
                    spot: bool = False, max_usd_per_hour: float | None = None) -> list[Offer]:
    """The cheapest offer per (GPU type, GPUs per instance): the planner's menu of node shapes.

    Kept per instance size, not per GPU type alone, because TP/PP need GPUs in one node: an 8-GPU node is not
    interchangeable with eight 1-GPU nodes. `max_usd_per_hour` drops instances costing more per hour.
    """
    best: dict[tuple[str, int], Offer] = {}
    for offer in offers(clouds, gpu_types, spot):  # sorted by price within (GPU, size): the first one wins
        price = offer.price(spot)
        if price is None or (max_usd_per_hour is not None and price > max_usd_per_hour):
            continue
        best.setdefault((offer.gpu, offer.gpus), offer)
    return list(best.values())


def write_skypilot_catalog(dest: Path, cloud_names: Iterable[str] | None = None,
                           exclude: Iterable[str] | None = None) -> list[Path]:
    """Write `<dest>/<cloud>/vms.csv` and `<dest>/common/accelerators.csv` (SkyPilot's v8 cache layout).

    Point dest at `<home>/.sky/catalogs/v8`. Files without a `.meta/*.md5` are never refreshed by SkyPilot.
    Other files SkyPilot reads (e.g. aws/images.csv) are the launcher's business. `exclude` names offers
    (cloud/region/instance_type) whose rows are left out (a GCP offer: its GPU rows in that region).
    """
    names = [_check_cloud(c) for c in cloud_names] if cloud_names is not None else _cloud_names()
    written: list[Path] = []
    accelerators: dict[str, set[str]] = {}
    for name in names:
        for offer in _offers_at(str(catalog_dir()), name):
            accelerators.setdefault(offer.gpu, set()).add(SKYPILOT_CLOUD_NAMES[name])
        target = dest / name / "vms.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        dropped = {tuple(k.split("/")[1:]) for k in exclude or () if k.split("/")[0] == name}
        if dropped:
            _copy_without(name, offer_csv_path(name), target, dropped)
        else:
            shutil.copyfile(offer_csv_path(name), target)
        written.append(target)
    common = dest / "common" / "accelerators.csv"
    common.parent.mkdir(parents=True, exist_ok=True)
    with common.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["AcceleratorName", "Clouds"])
        for gpu in sorted(accelerators):
            writer.writerow([gpu, repr(sorted(accelerators[gpu]))])
    written.append(common)
    return written


def _copy_without(cloud: str, source: Path, target: Path, dropped: set[tuple[str, ...]]) -> None:
    """Copy an offers CSV without the rows of the dropped (region, instance type) offers. GCP prices a GPU apart
    from its host VM: its offer is the GPU row (an empty InstanceType) whose host is that instance type."""
    gpu_offers = {(o.region, o.gpu, o.gpus) for o in _offers_at(str(catalog_dir()), cloud)
                  if (o.region, o.instance_type) in dropped} if cloud == "gcp" else set()
    index = _gpu_index(str(catalog_dir()))
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [row for row in reader if (row["Region"], row["InstanceType"]) not in dropped
                and not (not row["InstanceType"] and row.get("AcceleratorName") and (
                    row["Region"], index.get(_key(row["AcceleratorName"])),
                    int(float(row["AcceleratorCount"] or 0))) in gpu_offers)]
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
