"""GPU hardware specs and cloud offers, loaded from the CSV catalogs in `catalogs/`.

The data ships inside the package as `cascadia_sky.catalogs` (read with importlib.resources), so an installed wheel
works without the source tree; CASCADIA_CATALOG_DIR points at another directory with the same layout.

GPU names are SkyPilot's canonical accelerator names (`A100` is the 40 GB part, `A100-80GB` the 80 GB one), so a
planned GPU type can be handed to SkyPilot as it is. Lookups are case-insensitive and accept aliases (`h100_sxm`).
Throughput figures are dense (no 2:4 sparsity) datasheet peaks; interconnect is the datasheet's per-GPU intra-node
figure (NVLink/xGMI totals are both directions summed, PCIe x16 too).
"""

from __future__ import annotations

import csv
import difflib
import functools
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, TypeVar

from cascadia_sky.constants import CATALOG_DIR_ENV_VAR
from cascadia_sky.errors import CatalogError

GPUS_FILE = "gpus.csv"
GPU_COLUMNS: tuple[str, ...] = (
    "name", "aliases", "vendor", "memory_gb", "bf16_dense_tflops", "fp8_dense_tflops", "int8_dense_tops",
    "hbm_tb_s", "interconnect", "interconnect_gb_s", "gpus_per_node", "source",
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU type: what the performance model and the planner need to know about it."""

    name: str                     # SkyPilot's canonical accelerator name
    memory_gb: float              # device memory, GB (10^9 bytes) as on the datasheet
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
        kind = "an integer" if parse is int else "a number"
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
