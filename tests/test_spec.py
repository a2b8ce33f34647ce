"""cascade.yaml: every kind of bad input gets one line naming file, field and fix, exit code 2, no side effects."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from cascadia_sky.errors import SpecError
from cascadia_sky.spec import SCHEMA_PATH, load_spec, parse_spec, schema_text

REPO = Path(__file__).resolve().parents[1]

PROFILE_CSV = (
    "prompt_id,model,score,quality,input_tokens,output_tokens\n"
    "p1,meta-llama/Llama-3.1-8B,-0.2,1,100,50\n"
    "p1,meta-llama/Llama-3.1-70B,-0.1,1,100,40\n"
)
TRACE_CSV = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2023-11-16 18:15:46.6805900,374,44\n"
    "2023-11-16 18:15:50.9951690,396,109\n"
    "2023-11-16 18:15:51.0000000,100,10\n"
)


def valid_spec() -> dict[str, Any]:
    """A small valid two-stage spec (builder for tests)."""
    return {
        "name": "test-cascade",
        "stages": [
            {"model": "meta-llama/Llama-3.1-8B", "precision": "bf16", "max_context": 8192},
            {"model": "meta-llama/Llama-3.1-70B", "precision": "bf16", "max_context": 8192},
        ],
        "quality": {"profile": "profile.csv", "relative_target": 0.95},
        "workload": {"trace": "trace.csv"},
        "resources": {"pool": {"gpu": "H100", "count": 16}},
    }


def write_spec(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    (tmp_path / "profile.csv").write_text(PROFILE_CSV)
    (tmp_path / "trace.csv").write_text(TRACE_CSV)
    path = tmp_path / "cascade.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    d = copy.deepcopy(valid_spec())
    fn(d)
    return d


def test_valid_spec_loads(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, valid_spec()))
    assert spec.stage_names() == ["stage1", "stage2"]
    assert spec.objective.latency == "e2e"  # the default
    assert spec.resolve(spec.quality.profile) == tmp_path / "profile.csv"


# (mutation, expected field path, a fragment of the fix)
BAD_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown top key", lambda d: d.__setitem__("stagse", []), "stagse", "did you mean 'stages'"),
    ("unknown nested key", lambda d: d["stages"][1].__setitem__("modle", "x"), "stages[1].modle",
     "did you mean 'model'"),
    ("unknown pool key", lambda d: d["resources"]["pool"].__setitem__("gpus", 3), "resources.pool.gpus",
     "did you mean 'gpu'"),
    ("wrong type", lambda d: d["resources"]["pool"].__setitem__("count", "many"), "resources.pool.count",
     "valid integer"),
    ("bad enum", lambda d: d["stages"][0].__setitem__("precision", "int3"), "stages[0].precision", "'bf16'"),
    ("missing section", lambda d: d.pop("quality"), "quality", "missing"),
    ("missing model", lambda d: d["stages"][0].pop("model"), "stages[0].model", "missing"),
    ("two targets", lambda d: d["quality"].__setitem__("target", 0.8), "quality", "exactly one"),
    ("no target", lambda d: d["quality"].pop("relative_target"), "quality", "exactly one"),
    ("pool and cloud", lambda d: d["resources"].__setitem__("cloud", {"clouds": ["aws"]}), "resources",
     "exactly one"),
    ("negative slo", lambda d: d.__setitem__("objective", {"slo_p95_s": -1}), "objective.slo_p95_s",
     "greater than 0"),
    ("min-cost on pool", lambda d: d.__setitem__("objective", {"goal": "min-cost", "slo_p95_s": 5}), "",
     "needs resources.cloud"),
    ("bad dist", lambda d: d.__setitem__("workload", {"rate_rps": 2, "input_tokens": {"dist": "gauss"}}),
     "workload.input_tokens", "fixed, lognormal, empirical"),
    ("rate without lengths", lambda d: d.__setitem__("workload", {"rate_rps": 2}), "workload", "input_tokens"),
    ("bad name", lambda d: d.__setitem__("name", "My Cascade"), "name", "pattern"),
    ("duplicate stage names", lambda d: [s.__setitem__("name", "same") for s in d["stages"]], "",
     "unique"),
]


@pytest.mark.parametrize("label,fn,field,fix", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_structural_errors_name_field_and_fix(tmp_path: Path, label: str, fn: Callable[[dict[str, Any]], None],
                                              field: str, fix: str) -> None:
    path = write_spec(tmp_path, mutate(fn))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert err.file == str(path)
    if field:
        assert err.field == field, str(err)
    assert fix in str(err), str(err)
    assert "\n" not in str(err)


CROSS_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown model", lambda d: d["stages"][0].__setitem__("model", "meta-llama/Llama-3.1-9B"), "stages[0].model",
     "did you mean"),
    ("unknown pool gpu", lambda d: d["resources"]["pool"].__setitem__("gpu", "H1000"), "resources.pool.gpu",
     "did you mean 'H100'"),
    ("unknown pinned gpu", lambda d: d["stages"][0].__setitem__("gpu_types", ["A100-80"]),
     "stages[0].gpu_types[0]", "unknown GPU"),
    ("unknown cloud", lambda d: d["resources"].update({"pool": None, "cloud": {"clouds": ["awz"]}}),
     "resources.cloud.clouds[0]", "did you mean 'aws'"),
    ("unknown quota gpu", lambda d: d["resources"].update(
        {"pool": None, "cloud": {"clouds": ["aws"], "quotas": {"B300X": 8}}}), "resources.cloud.quotas.B300X",
     "unknown GPU"),
    ("unknown scorer", lambda d: d["quality"].__setitem__("scorer", "mean_logprb"), "quality.scorer",
     "did you mean 'mean_logprob'"),
    ("missing profile", lambda d: d["quality"].__setitem__("profile", "nope.csv"), "quality.profile",
     "file not found"),
    ("missing trace", lambda d: d["workload"].__setitem__("trace", "nope.csv"), "workload.trace", "file not found"),
    ("model fits no gpu", lambda d: d.update({
        "stages": [{"model": "meta-llama/Llama-3.1-405B", "precision": "bf16"}],
        "resources": {"pool": {"gpu": "L4", "count": 4}}}), "stages[0].model", "fits no allowed GPU"),
    ("context beyond model", lambda d: d["stages"][0].__setitem__("max_context", 1_000_000),
     "stages[0].max_context", "maximum context"),
    ("pinned gpu not allowed", lambda d: d["stages"][0].__setitem__("gpu_types", ["A100-80GB"]),
     "stages[0].gpu_types", "is allowed by resources"),
]


@pytest.mark.parametrize("label,fn,field,fix", CROSS_CASES, ids=[c[0] for c in CROSS_CASES])
def test_cross_field_errors(tmp_path: Path, label: str, fn: Callable[[dict[str, Any]], None], field: str,
                            fix: str) -> None:
    path = write_spec(tmp_path, mutate(fn))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == field, str(info.value)
    assert fix in str(info.value), str(info.value)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "name: x\nstages:\n  - model: a\n   precision: bf16: x\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "line 4" in str(info.value)
    assert "YAML syntax error" in str(info.value)


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        parse_spec(["a", "b"], "x.yaml")


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "absent.yaml")


def run_cli(*args: str, cwd: Path | None = None, env_extra: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CASCADIA_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "cascadia_sky.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_cli_validate_bad_input_one_line_exit_2_no_side_effects(tmp_path: Path) -> None:
    path = write_spec(tmp_path, mutate(lambda d: d["stages"][1].__setitem__("modle", "x")))
    before = sorted(p.name for p in tmp_path.iterdir())
    out = run_cli("validate", str(path), cwd=tmp_path)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert "stages[1].modle" in lines[0] and "did you mean 'model'" in lines[0]
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    path = write_spec(tmp_path, mutate(lambda d: d["stages"][1].__setitem__("modle", "x")))
    out = run_cli("validate", str(path), env_extra={"CASCADIA_DEBUG": "1"})
    assert out.returncode != 0
    assert "Traceback" in out.stderr


def test_cli_validate_ok(tmp_path: Path) -> None:
    out = run_cli("validate", str(write_spec(tmp_path, valid_spec())))
    assert out.returncode == 0, out.stderr
    assert "is valid" in out.stdout


def test_committed_schema_is_fresh() -> None:
    assert SCHEMA_PATH.read_text() == schema_text(), (
        "cascadia_sky/schema/cascade.schema.json is stale: run `python -m cascadia_sky.spec --write-schema`")


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_match_schema_and_validate(example: Path) -> None:
    import jsonschema

    data = yaml.safe_load(example.read_text())
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
    load_spec(example)


def test_local_resources_accept_only_bundled_models(tmp_path: Path) -> None:
    data = valid_spec()
    data["resources"] = {"local": {}}
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, data))
    assert info.value.field == "stages[0].model" and "bundled" in str(info.value)
    data["stages"] = [{"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "tp": 2}]
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, data))
    assert info.value.field == "stages[0].tp"
