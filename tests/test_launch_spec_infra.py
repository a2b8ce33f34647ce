"""The spec's `infra` section against the resources mode: bundled CPU engines run on this machine (backend local)
or on SkyPilot clusters (backend clusters, e.g. a Slurm cluster); never as SkyServe services."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cascadia_sky.errors import SpecError
from cascadia_sky.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, infra: dict | None) -> Path:
    data = yaml.safe_load((REPO / "examples" / "local-slurm.yaml").read_text())
    data["quality"]["profile"] = str(REPO / "examples" / data["quality"]["profile"])
    if infra is None:
        data.pop("infra")
    else:
        data["infra"] = infra
    path = tmp_path / "cascade.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_local_resources_on_skypilot_clusters_are_valid(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, {"backend": "clusters", "targets": ["slurm/cascadia"]}))
    assert spec.resources.local is not None and spec.infra.backend == "clusters"
    assert load_spec(_write(tmp_path, {"backend": "clusters"})).infra.targets is None  # any enabled infra
    assert load_spec(_write(tmp_path, None)).infra.backend is None                    # this machine


@pytest.mark.parametrize("infra, field, words", [
    ({"backend": "skyserve"}, "infra.backend", "set infra.backend to local or clusters"),
    ({"targets": ["slurm/cascadia"]}, "infra.targets", "set infra.backend: clusters"),
    ({"backend": "local", "targets": ["slurm/cascadia"]}, "infra.targets", "remove infra.targets"),
])
def test_local_resources_refuse_what_cannot_run_them(tmp_path: Path, infra: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, infra))
    assert info.value.field == field and words in str(info.value)
