"""The import layers of DESIGN.md, enforced: each module of `cascadia_sky` sits on a floor and imports only from its
own floor or the floors below it; no import cycle exists (function-level imports included); `router/` imports
nothing of `cascadia_sky`; `cascadia_sky` imports the router only inside functions; SkyPilot, PuLP and boto3 are
imported only by the one module each that owns them.

A new module needs a floor here (the test names it). Run it alone: `pytest tests/test_layers.py`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Floors from the bottom up; a module's floor is that of the longest prefix listed (package or module). The top
# package `cascadia_sky` itself names only its __init__, so a new module never inherits a floor by accident.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("cascadia_sky", "cascadia_sky.errors", "cascadia_sky.constants", "cascadia_sky.models",
              "cascadia_sky.quality", "cascadia_sky.registries")),
    ("data", ("cascadia_sky.catalog", "cascadia_sky.catalog_view", "cascadia_sky.bundled", "cascadia_sky.workload",
              "cascadia_sky.rtt",
              "cascadia_sky.cloud")),
    ("spec and performance model", ("cascadia_sky.spec", "cascadia_sky.spec_sections", "cascadia_sky.perf")),
    ("planner", ("cascadia_sky.planner",)),
    ("engines, simulator, launch parts", ("cascadia_sky.engines", "cascadia_sky.sim", "cascadia_sky.launch.state",
                                          "cascadia_sky.launch.status", "cascadia_sky.launch.procs",
                                          "cascadia_sky.launch.fingerprint", "cascadia_sky.launch.keys",
                                          "cascadia_sky.launch.skypilot",
                                          "cascadia_sky.launch.tasks", "cascadia_sky.launch.supervisor",
                                          "cascadia_sky.launch.watcher")),
    ("launch backends", ("cascadia_sky.launch.backends",)),
    ("launcher", ("cascadia_sky.launch", "cascadia_sky.launch.launcher", "cascadia_sky.launch.report")),
    ("loops (calibrate, reschedule)", ("cascadia_sky.calibrate", "cascadia_sky.reschedule")),
    ("command line", ("cascadia_sky.cli", "cascadia_sky.__main__")),
]
# Third-party packages that only one module (prefix) of cascadia_sky may import.
OWNED = {"sky": ("cascadia_sky.launch.skypilot",), "pulp": ("cascadia_sky.planner.deploy",),
         "boto3": ("cascadia_sky.cloud",), "botocore": ("cascadia_sky.cloud",)}
ROUTER_ONLY = ("fastapi", "uvicorn", "aiohttp", "starlette", "prometheus_client")   # never at import time


@dataclass(frozen=True)
class Import:
    file: str          # relative path of the importing file
    line: int
    importer: str      # importing module
    imported: str      # imported module (resolved to a module when `from pkg import module`)
    top_level: bool    # executed when the importer is imported (not inside a function)
    type_only: bool    # under `if TYPE_CHECKING:`


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    """Every import statement of a file, with where it runs."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_only)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in child.names]
            for name in dict.fromkeys(names):
                out.append(Import(str(path.relative_to(REPO)), child.lineno, me, name, not in_function, type_only))
            visit(child, in_function, type_only)

    visit(tree, False, False)
    return out


def floor_of(module: str) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None
    for index, (label, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or (prefix != "cascadia_sky" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index, label)
    return None if best is None else (best[1], best[2])


def project_imports(package: str) -> list[Import]:
    return [imp for path in sorted((REPO / package).rglob("*.py")) for imp in imports_of(path)]


def layer_violations(imports: list[Import]) -> list[str]:
    """One line per import that goes up a floor, per module without a floor, and per forbidden import."""
    problems = []
    for imp in imports:
        if imp.type_only:
            continue
        top = imp.imported.split(".")[0]
        if imp.importer.startswith("router"):
            if top == "cascadia_sky":
                problems.append(f"{imp.file}:{imp.line}: the router imports {imp.imported}; router/ must import "
                                f"nothing of cascadia_sky (a router machine installs only the router extra)")
            continue
        if top == "router" and imp.top_level:
            problems.append(f"{imp.file}:{imp.line}: imports {imp.imported} at module import time; import the "
                            f"router inside the function that needs it")
        if top in ROUTER_ONLY and imp.top_level:
            problems.append(f"{imp.file}:{imp.line}: imports {imp.imported} at module import time; a core install "
                            f"has no {top}")
        owners = OWNED.get(top)
        if owners and not any(imp.importer == o or imp.importer.startswith(o + ".") for o in owners):
            problems.append(f"{imp.file}:{imp.line}: imports {imp.imported}; only {', '.join(owners)} may")
        if top != "cascadia_sky":
            continue
        mine, theirs = floor_of(imp.importer), floor_of(imp.imported)
        if mine is None:
            problems.append(f"{imp.file}: module {imp.importer} has no floor; add it to FLOORS in tests/test_layers.py")
        elif theirs is None:
            problems.append(f"{imp.file}:{imp.line}: imports {imp.imported}, which has no floor; add it to FLOORS")
        elif theirs[0] > mine[0]:
            problems.append(f"{imp.file}:{imp.line}: {imp.importer} (floor {mine[0] + 1} '{mine[1]}') imports "
                            f"{imp.imported} (floor {theirs[0] + 1} '{theirs[1]}'): an import may only go to the "
                            f"same floor or one below")
    return sorted(set(problems))


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles among cascadia_sky modules (every import counts, wherever it runs; TYPE_CHECKING ones do not)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.type_only and imp.imported.startswith("cascadia_sky") and imp.imported != imp.importer:
            graph.setdefault(imp.importer, set()).add(imp.imported)
    cycles, state = [], {}

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node, [node])
    return cycles


def test_every_import_respects_the_floors() -> None:
    problems = layer_violations(project_imports("cascadia_sky") + project_imports("router"))
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    cycles = import_cycles(project_imports("cascadia_sky"))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_catches_a_wrong_direction_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: an upward import, a cycle, the router importing the planner, a top-level router import."""
    bad = REPO / "cascadia_sky" / "models.py"
    spec_imports = imports_of(bad) + [
        Import("cascadia_sky/models.py", 1, "cascadia_sky.models", "cascadia_sky.planner.plan", False, False),
        Import("cascadia_sky/spec.py", 2, "cascadia_sky.spec", "router.scorers", True, False),
        Import("router/app.py", 3, "router.app", "cascadia_sky.planner.plan", False, False),
        Import("cascadia_sky/catalog.py", 4, "cascadia_sky.catalog", "sky", False, False),
        Import("cascadia_sky/models.py", 5, "cascadia_sky.models", "cascadia_sky.models.extra", False, True),
    ]
    problems = layer_violations(spec_imports)
    assert problems == sorted([
        "cascadia_sky/catalog.py:4: imports sky; only cascadia_sky.launch.skypilot may",
        "cascadia_sky/models.py:1: cascadia_sky.models (floor 1 'base') imports cascadia_sky.planner.plan "
        "(floor 4 'planner'): an import may only go to the same floor or one below",
        "cascadia_sky/spec.py:2: imports router.scorers at module import time; import the router inside the "
        "function that needs it",
        "router/app.py:3: the router imports cascadia_sky.planner.plan; router/ must import nothing of cascadia_sky "
        "(a router machine installs only the router extra)",
    ])
    cyc = import_cycles([Import("a.py", 1, "cascadia_sky.launch.launcher", "cascadia_sky.launch.backends.local",
                                False, False),
                         Import("b.py", 1, "cascadia_sky.launch.backends.local", "cascadia_sky.launch.launcher",
                                False, False)])
    assert cyc == [["cascadia_sky.launch.backends.local", "cascadia_sky.launch.launcher",
                    "cascadia_sky.launch.backends.local"]]


def test_a_real_upward_import_in_a_source_file_is_reported(tmp_path: Path) -> None:
    """The parser on a real file: a function-level upward import (the kind that was missed before) is found."""
    src = (REPO / "cascadia_sky" / "spec.py").read_text()
    probe = REPO / "cascadia_sky" / "_layer_probe_tmp.py"
    probe.write_text(src + "\n\ndef _probe():\n    from cascadia_sky.launch.backends import get_backend\n"
                           "    return get_backend\n")
    try:
        found = imports_of(probe)
    finally:
        probe.unlink()
    upward = [i for i in found if i.imported == "cascadia_sky.launch.backends"]
    assert upward and not upward[0].top_level
    problems = layer_violations([Import(i.file, i.line, "cascadia_sky.spec", i.imported, i.top_level, i.type_only)
                                 for i in upward])
    assert problems and "floor 3 'spec and performance model'" in problems[0] \
        and "cascadia_sky.launch.backends (floor 6 'launch backends')" in problems[0]
