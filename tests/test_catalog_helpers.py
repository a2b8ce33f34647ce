"""Shared helper for the catalog tests (no tests here): a private, editable copy of the shipped catalogs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cascadia_sky import catalog
from cascadia_sky.constants import CATALOG_DIR_ENV_VAR

SHIPPED = catalog.catalog_dir()


def use_catalog_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the shipped catalogs, made active through CASCADIA_CATALOG_DIR."""
    root = tmp_path / "catalogs"
    shutil.copytree(SHIPPED, root, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    monkeypatch.setenv(CATALOG_DIR_ENV_VAR, str(root))
    return root
