"""GPU specs: the shipped gpus.csv, lookups by name and alias, and errors for malformed files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cascadia_sky import catalog
from cascadia_sky.catalog import GPU_COLUMNS, GpuSpec, get_gpu, gpu_names, gpu_specs, load_gpu_specs
from cascadia_sky.constants import CATALOG_DIR_ENV_VAR
from cascadia_sky.errors import CatalogError
from test_catalog_helpers import use_catalog_copy

REQUIRED = ("A10G", "L4", "L40S", "A100", "A100-80GB", "H100", "H200", "B200", "MI300X")


def rewrite_gpus(root: Path, edit: dict[str, dict[str, str]] | None = None, drop: str | None = None,
                 extra_line: str | None = None) -> Path:
    """Rewrite root/gpus.csv: change cells of named rows, drop a column, or append a raw line."""
    path = root / "gpus.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in GPU_COLUMNS if c != drop]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            row.update((edit or {}).get(row["name"], {}))
            writer.writerow(row)
        if extra_line:
            f.write(extra_line + "\n")
    catalog.clear_cache()
    return path


def test_shipped_catalog_has_the_required_gpus() -> None:
    names = gpu_names()
    for name in REQUIRED:
        assert name in names
    assert list(gpu_specs()) == names


def test_specs_are_physically_consistent() -> None:
    for spec in gpu_specs().values():
        assert spec.memory_gb > 0 and spec.bf16_tflops > 0 and spec.hbm_tb_s > 0
        assert spec.interconnect_gb_s > 0 and spec.gpus_per_node >= 1
        assert spec.source, f"{spec.name} has no source"
        if spec.fp8_tflops is not None:  # FP8 tensor throughput is twice BF16 on every part that has it
            assert 1.9 <= spec.fp8_tflops / spec.bf16_tflops <= 2.1, spec.name
    h100, h200 = get_gpu("H100"), get_gpu("H200")
    assert h200.bf16_tflops == h100.bf16_tflops and h200.memory_gb > h100.memory_gb
    assert h200.hbm_tb_s > h100.hbm_tb_s
    assert get_gpu("A100").fp8_tflops is None and get_gpu("A100").memory_gb == 40
    assert get_gpu("A100-80GB").memory_gb == 80


@pytest.mark.parametrize(("query", "expected"), [
    ("H100", "H100"), ("h100", "H100"), ("h100_sxm", "H100"), ("H100-SXM", "H100"), ("h200_sxm", "H200"),
    ("b200_sxm", "B200"), ("A100-40GB", "A100"), ("a100-80gb", "A100-80GB"), ("mi300x", "MI300X"),
    ("l40s", "L40S"), ("H100 MEGA", "H100-MEGA"),
])
def test_lookup_by_name_or_alias_any_case(query: str, expected: str) -> None:
    assert get_gpu(query).name == expected
    assert catalog.canonical_gpu_name(query) == expected


def test_perf_data_system_names_resolve() -> None:
    """System names in the measured vLLM data (shared/data/perf) map to catalog GPUs."""
    for system in ("h100_sxm", "h200_sxm", "b200_sxm"):
        assert get_gpu(system).vendor == "NVIDIA"


def test_unknown_gpu_suggests_the_closest() -> None:
    with pytest.raises(CatalogError, match=r"unknown GPU 'H1000' \(did you mean 'H100'\?\)"):
        get_gpu("H1000")
    with pytest.raises(CatalogError, match=r"did you mean 'A100-80GB'"):
        get_gpu("a100_80")
    with pytest.raises(CatalogError, match=r"unknown GPU 'TPU-v9'") as info:
        get_gpu("TPU-v9")
    assert "did you mean" not in str(info.value)


def test_tflops_by_precision() -> None:
    h100, a100 = get_gpu("H100"), get_gpu("A100")
    assert h100.tflops("fp8") == h100.fp8_tflops
    assert h100.tflops("bf16") == h100.tflops("int4-awq") == h100.bf16_tflops
    assert a100.tflops("fp8") == a100.bf16_tflops  # no FP8 units: runs at BF16 speed
    assert a100.tflops("int8") == a100.int8_tops


def test_round_trip_of_an_edited_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog_copy = use_catalog_copy(tmp_path, monkeypatch)
    rewrite_gpus(catalog_copy, edit={"L4": {"memory_gb": "25", "aliases": "my-l4;l4_pcie"}})
    spec = get_gpu("my_l4")
    assert isinstance(spec, GpuSpec) and spec.name == "L4" and spec.memory_gb == 25
    assert spec.aliases == ("my-l4", "l4_pcie")
    assert spec.to_dict()["aliases"] == ["my-l4", "l4_pcie"]
    assert load_gpu_specs(catalog_copy / "gpus.csv") == gpu_specs()


@pytest.mark.parametrize(("edit", "message"), [
    ({"H100": {"memory_gb": "eighty"}}, r"gpus\.csv: line 9, column 'memory_gb': 'eighty' is not a number"),
    ({"H100": {"gpus_per_node": "8.5"}}, r"gpus\.csv: line 9, column 'gpus_per_node': '8.5' is not an integer"),
    ({"H100": {"hbm_tb_s": "-3"}}, r"gpus\.csv: line 9, column 'hbm_tb_s': '-3' must be > 0"),
    ({"H100": {"bf16_dense_tflops": ""}}, r"gpus\.csv: line 9, column 'bf16_dense_tflops': empty"),
    ({"H200": {"aliases": "h100_sxm"}}, r"gpus\.csv: line \d+, column 'aliases': 'h100_sxm' already names 'H100'"),
])
def test_malformed_cells_name_file_line_and_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   edit: dict[str, dict[str, str]], message: str) -> None:
    catalog_copy = use_catalog_copy(tmp_path, monkeypatch)
    rewrite_gpus(catalog_copy, edit=edit)
    with pytest.raises(CatalogError, match=message):
        gpu_specs()


def test_missing_column_and_extra_cells_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog_copy = use_catalog_copy(tmp_path, monkeypatch)
    rewrite_gpus(catalog_copy, drop="hbm_tb_s")
    with pytest.raises(CatalogError, match=r"gpus\.csv: header: missing column\(s\) hbm_tb_s"):
        gpu_specs()
    rewrite_gpus(catalog_copy, extra_line="X1,,NVIDIA,1,1,,,1,PCIe,1,1,src,surplus")
    with pytest.raises(CatalogError, match=r"gpus\.csv: line 15: more cells than header columns"):
        gpu_specs()


def test_bad_override_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CATALOG_DIR_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(CatalogError, match=CATALOG_DIR_ENV_VAR):
        gpu_names()
    monkeypatch.setenv(CATALOG_DIR_ENV_VAR, str(tmp_path))
    with pytest.raises(CatalogError, match=r"gpus\.csv: catalog file not found"):
        gpu_names()
