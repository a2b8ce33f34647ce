"""The router stands apart (DESIGN.md, issue 10): nothing under router/ imports cascadia_sky, the planner's solver,
SkyPilot or boto3, so a router machine installs only the `router` extra."""

from __future__ import annotations

import ast
from pathlib import Path

ROUTER = Path(__file__).resolve().parents[1] / "router"
FORBIDDEN = ("cascadia_sky", "sky", "pulp", "boto3")


def test_router_imports_nothing_of_the_planner_side():
    bad = []
    for path in sorted(ROUTER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.relative_to(ROUTER.parent)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in FORBIDDEN]
    assert not bad, "router/ must stand apart:\n" + "\n".join(bad)
