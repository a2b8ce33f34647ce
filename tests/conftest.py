"""Fixtures every test can use (read this first when writing a test).

- Every test runs with its own state home: `CASCADIA_HOME` points at a fresh folder under the test's tmp_path, so
  no test reads or writes ~/.cascadia, and deployments of two tests never meet. `home` is that folder.
- `example_plan(name)`: the typed plan of examples/<name>.yaml (planned once per session, cached).
- `fake_sky`: the recording stand-in for SkyPilot's SDK (tests/launch/helpers.py:RecordingSkyApi, which implements
  `cascadia_sky.launch.skypilot.SkyApiProtocol` like the real `SkyApi`), registered as the `skyserve` and
  `clusters` backends through the same registry `cascadia up` uses; the real backends act through it.
- Tests that need real SkyPilot call `pytest.importorskip("sky")`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cascadia_sky.constants import HOME_ENV_VAR
from cascadia_sky.planner.plan import Plan
from tests.launch.helpers import RecordingSkyApi, example_plan as _example_plan


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated state home for this test (CASCADIA_HOME)."""
    path = tmp_path / "cascadia-home"
    path.mkdir()
    monkeypatch.setenv(HOME_ENV_VAR, str(path))
    return path


@pytest.fixture
def example_plan() -> Callable[[str], Plan]:
    """`example_plan("deepseek")` -> the plan of examples/deepseek.yaml (cached for the session)."""
    return _example_plan


@pytest.fixture
def fake_sky() -> Iterator[RecordingSkyApi]:
    """SkyPilot's SDK replaced by a recording fake behind the real skyserve and clusters backends."""
    from cascadia_sky.launch.backends import register_backend, unregister_backend
    from cascadia_sky.launch.backends.sky import ClustersBackend, SkyServeBackend

    api = RecordingSkyApi()
    previous = {name: register_backend(name, lambda cls=cls: cls(api=api, poll_s=0.01))
                for name, cls in (("skyserve", SkyServeBackend), ("clusters", ClustersBackend))}
    yield api
    for name, old in previous.items():
        unregister_backend(name, old)
