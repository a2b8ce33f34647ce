"""The catalogs ship inside the package (cascadia_sky.catalogs), so an installed wheel finds them without the repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_built_package_contains_and_reads_the_catalogs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "cascadia_sky", src / "cascadia_sky", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "catalogs", src / "catalogs", ignore=ignore)
    build = tmp_path / "build"
    # build_py is the step that lays out the wheel's files (packages + package data).
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "-d",
                    str(build)], cwd=src, check=True, capture_output=True, text=True, timeout=120)
    shipped = build / "cascadia_sky" / "catalogs"
    assert not shipped.is_symlink()
    expected = {"gpus.csv", "gcp_hosts.csv", "offer_sources.csv", "offers/SOURCES.md",
                *(f"offers/{p.name}" for p in (REPO / "catalogs" / "offers").glob("*.csv"))}
    found = {str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file() and p.suffix in (".csv", ".md")}
    assert expected <= found
    # The built tree alone (no repo, no site-packages) loads GPUs and offers.
    probe = ("from cascadia_sky import catalog; d = catalog.catalog_dir(); "
             "print(d); print(catalog.get_gpu('h100_sxm').name, len(catalog.offers()))")
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(build)},
                         check=True, capture_output=True, text=True, timeout=60)
    location, result = out.stdout.strip().splitlines()
    assert Path(location) == shipped
    name, count = result.split()
    assert name == "H100" and int(count) > 0
