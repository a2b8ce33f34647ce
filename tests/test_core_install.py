"""A core install (`pip install cascadia-sky`, no extras) validates and plans every example, for real: a fresh
virtual environment, the package installed from this checkout, no FastAPI, uvicorn, aiohttp or SkyPilot in it.

Marked `install` (a minute or two: it builds and installs the package): scripts/test.sh runs it when CI=true.
The fast suite checks the same with those modules made unimportable (tests/test_plan_contract.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install


def _run(*argv: str | Path, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_core_install_validates_and_plans_every_example(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    py, cascadia = venv / "bin" / "python", venv / "bin" / "cascadia"
    installed = _run(py, "-m", "pip", "install", "--quiet", str(REPO))
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = _run(py, "-c", "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None "
                           "for m in ('fastapi', 'uvicorn', 'aiohttp', 'sky', 'pulp', 'cascadia_sky')}))",
                 cwd=tmp_path)
    assert json.loads(probe.stdout) == {"fastapi": False, "uvicorn": False, "aiohttp": False, "sky": False,
                                        "pulp": True, "cascadia_sky": True}
    for spec in sorted((REPO / "examples").glob("*.yaml")):
        checked = _run(cascadia, "validate", spec, cwd=tmp_path)
        assert checked.returncode == 0, f"{spec.name}: {checked.stderr}"
        out = tmp_path / f"{spec.stem}.json"
        planned = _run(cascadia, "plan", spec, "-o", out, cwd=tmp_path)
        assert planned.returncode == 0, f"{spec.name}: {planned.stderr}"
        plan = json.loads(out.read_text())
        assert plan["schema_version"] == 2 and plan["launch"]["backend"] and plan["stages"]
