"""Hostile and careless input at the command line: no secret echoed, every problem named, markup-safe messages,
key files checked, a help a person can use. Each test failed before its fix (see the issue's numbered items)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cascadia_sky.errors import SpecError
from cascadia_sky.launch.keys import ensure_api_key
from cascadia_sky.spec import load_spec
from tests.launch.helpers import cli
from tests.test_spec import mutate, valid_spec, write_spec

CANARY = "csk-canary-0123456789-do-not-print"


def _run(home: Path, *args: str) -> tuple[int, str]:
    os.environ["CASCADIA_TEST_CANARY"] = CANARY   # inherited by the CLI: it is in /proc/<pid>/environ there
    try:
        r = cli(home, *args)
    finally:
        os.environ.pop("CASCADIA_TEST_CANARY", None)
    return r.returncode, r.stdout + r.stderr


# --- 1. a spec path must not print the environment or a system file ----------------------------------------------

@pytest.mark.parametrize("target", ["/proc/self/environ", "/etc/passwd", "../../../../../../../etc/passwd",
                                    "/dev/null", "/etc"])
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_system_files_as_data_are_refused_without_echo(tmp_path: Path, target: str, command: str) -> None:
    path = write_spec(tmp_path, mutate(lambda d: d["quality"].__setitem__("profile", target)))
    code, out = _run(tmp_path, command, str(path), *(["-o", str(tmp_path / "p.json")] if command == "plan" else []))
    assert code == 2, out
    assert "quality.profile" in out
    assert CANARY not in out and "root:" not in out and "PATH=" not in out
    assert not (tmp_path / "p.json").exists()


def test_a_file_that_is_not_a_profile_is_named_not_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "secrets.csv"
    secret.write_text(f"AWS_SECRET_ACCESS_KEY={CANARY},x\nline2\n")
    path = write_spec(tmp_path, mutate(lambda d: d["quality"].__setitem__("profile", str(secret))))
    code, out = _run(tmp_path, "validate", str(path))
    assert code == 2 and "missing column(s)" in out and "not shown" in out
    assert CANARY not in out and "AWS_SECRET" not in out


def test_a_profile_with_a_secret_in_a_cell_is_not_echoed(tmp_path: Path) -> None:
    spec = valid_spec()
    path = write_spec(tmp_path, spec)
    (tmp_path / "profile.csv").write_text("prompt_id,model,score,quality,input_tokens,output_tokens\n"
                                          f"p1,meta-llama/Llama-3.1-8B,{CANARY}=1,1,100,50\n")
    code, out = _run(tmp_path, "validate", str(path))
    assert code == 2 and "not a number" in out and CANARY not in out


# --- 2. key file permissions are checked, fixed and reported as they are ------------------------------------------

def test_a_loosened_key_file_is_tightened_and_said_so(tmp_path: Path) -> None:
    said: list[str] = []
    key = ensure_api_key(tmp_path, said.append)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and said == []
    key.chmod(0o644)
    again = ensure_api_key(tmp_path, said.append)
    assert again == key and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert said and "0644" in said[0] and "0600" in said[0]


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    from cascadia_sky.errors import LaunchError

    (tmp_path / "elsewhere").write_text("csk-x\n")
    (tmp_path / "api_key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LaunchError, match="not a regular file"):
        ensure_api_key(tmp_path)


# --- 10. brackets in messages survive (no rich markup) ------------------------------------------------------------

def test_brackets_in_errors_are_printed_as_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "broken" / "[red]dir"
    folder.mkdir(parents=True)
    path = write_spec(folder, mutate(lambda d: d.__setitem__("name", "My Cascade")))
    code, out = _run(tmp_path, "validate", str(path))
    assert code == 2
    assert "[red]dir" in out                                   # the path keeps its brackets
    assert "^[a-z0-9][a-z0-9-]{0,39}$" in out                  # the pattern too


# --- 11, 12. every problem, one line each, in a stable order; did-you-mean for a misspelt required key -------------

def test_every_problem_is_reported_once_each(tmp_path: Path) -> None:
    def bad(d: dict) -> None:
        d["stages"][0]["modle"] = d["stages"][0].pop("model")   # misspelt required key
        d["stages"][1]["precision"] = "int3"
        d["namex"] = d.pop("name")
        d["resources"]["pool"]["count"] = "many"
    path = write_spec(tmp_path, mutate(bad))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    lines = str(info.value).splitlines()
    fields = [ln.split(": ")[1] for ln in lines]
    # in the order of the file (the renamed `namex` was written last)
    assert fields == ["stages[0].modle", "stages[1].precision", "resources.pool.count", "namex"], lines
    assert "did you mean 'model'" in lines[0] and "did you mean 'name'" in lines[3]
    assert not any("required field is missing" in ln for ln in lines)
    code, out = _run(tmp_path, "validate", str(path))
    err = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(err) == 4 and [e.removeprefix("error: ") for e in err] == lines


def test_cross_check_problems_are_all_reported(tmp_path: Path) -> None:
    def bad(d: dict) -> None:
        d["quality"]["scorer"] = "mean_logprb"
        d["stages"][0]["model"] = "meta-llama/Llama-3.1-9B"
        d["workload"]["trace"] = "nope.csv"
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, mutate(bad)))
    fields = [ln.split(": ")[1] for ln in str(info.value).splitlines()]
    assert fields == ["quality.scorer", "stages[0].model", "workload.trace"]


# --- 13. validate catches what plan would reject, and warns about weak profiles ------------------------------------

def test_validate_rejects_a_profile_without_rows_for_a_stage(tmp_path: Path) -> None:
    spec = mutate(lambda d: d["stages"][1].__setitem__("model", "meta-llama/Llama-3.3-70B-Instruct"))
    code, out = _run(tmp_path, "validate", str(write_spec(tmp_path, spec)))
    assert code == 2 and "has no rows" in out and "quality.profile" not in out.split("error: ")[0]


def test_validate_warns_about_a_small_profile_and_a_worse_later_stage(tmp_path: Path) -> None:
    path = write_spec(tmp_path, valid_spec())
    rows = ["prompt_id,model,score,quality,input_tokens,output_tokens"]
    for i in range(12):
        rows.append(f"p{i},meta-llama/Llama-3.1-8B,-0.{i + 1},{1 if i % 2 else 0},100,50")
        rows.append(f"p{i},meta-llama/Llama-3.1-70B,-0.{i + 1},{1 if i % 4 == 0 else 0},100,50")
    (tmp_path / "profile.csv").write_text("\n".join(rows) + "\n")
    code, out = _run(tmp_path, "validate", str(path))
    assert code == 0, out
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning: ")]
    assert any("12 prompts" in w and "needs about" in w for w in warnings), out
    assert any("stage 'stage2' scores 0.250" in w and "not above stage 'stage1' (0.500)" in w for w in warnings), out


# --- 14. a help a person can use; --json; output files in a documented place -------------------------------------

def test_help_lists_commands_in_workflow_order_and_accepts_h(tmp_path: Path) -> None:
    r = cli(tmp_path, "-h")
    assert r.returncode == 0
    order = [w for w in ("validate", "plan", "up", "status", "down", "simulate") if f" {w} " in r.stdout]
    assert order == ["validate", "plan", "up", "status", "down", "simulate"]
    assert [r.stdout.index(f" {w} ") for w in order] == sorted(r.stdout.index(f" {w} ") for w in order)
    up = cli(tmp_path, "up", "-h")
    dry = next(ln for ln in up.stdout.splitlines() if "--dryrun" in ln)
    assert "<bool>" not in dry


def test_plan_json_and_default_output_place(tmp_path: Path) -> None:
    r = cli(tmp_path, "plan", "examples/local.yaml", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["name"] == "local" and data["launch"]["backend"] == "local"
    written = tmp_path / "plans" / "local" / "plan.json"           # <state home>/plans/<name>/plan.json
    assert json.loads(written.read_text())["name"] == "local" and f"wrote {written}" in r.stderr
    s = cli(tmp_path, "status", "--json")
    assert s.returncode == 0 and json.loads(s.stdout) == {"deployments": []}
