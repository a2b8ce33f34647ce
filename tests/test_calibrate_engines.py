"""`cascadia calibrate` for real: two llama.cpp engines (xllamacpp, bundled SmolLM2-135M-Instruct and gemma-3-270m)
on loopback, a small subset of examples/prompts/basic.jsonl, the router's own scoring code, a judge that is a
real engine, Ctrl-C and a dead endpoint in the middle of a run, and the resumed runs after them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascadia_sky.calibrate import (CalibrationError, CalibrationInterrupted, Sampling, calibrate, load_prompts)
from cascadia_sky.calibrate.report import report_from_run
from cascadia_sky.engines import EngineProcess, free_port, start_bundled
from cascadia_sky.quality import load_profile
from cascadia_sky.spec import parse_spec
from tests.router.helpers import engine_pair

ROOT = Path(__file__).resolve().parent.parent
PROMPT_FILE = ROOT / "examples" / "prompts" / "basic.jsonl"
IDS = ("arith-001", "fact-001", "mc-001a", "unit-001")
SAMPLING = Sampling(temperature=0.0, max_tokens=12)
MODELS = ["HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m"]


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[EngineProcess, EngineProcess]]:
    with engine_pair(lambda: start_bundled("smollm2-135m-instruct", alias="small", parallel=2, ctx=4096),
                     lambda: start_bundled("gemma-3-270m", alias="large", parallel=2, ctx=4096)) as pair:
        yield pair


@pytest.fixture(scope="module")
def prompts():
    by_id = {p.id: p for p in load_prompts(PROMPT_FILE)}
    return [by_id[i] for i in IDS]


def _spec(tmp_path: Path):
    spec = parse_spec({"name": "cal-test", "stages": [{"name": "small", "model": MODELS[0]},
                                                      {"name": "large", "model": MODELS[1]}],
                       "quality": {"profile": "profile.csv", "relative_target": 0.9},
                       "workload": {"rate_rps": 0.1, "input_tokens": {"dist": "fixed", "value": 50}},
                       "resources": {"local": {"threads": 1}}}, "cal-test.yaml")
    spec._source = tmp_path / "cal-test.yaml"
    return spec


def _eps(engines) -> dict[str, str]:
    return {"small": engines[0].url, "large": engines[1].url}


def _cache_lines(root: Path, name: str = "answers.jsonl") -> list[dict]:
    path = root / "cal-test" / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_end_to_end_profile_scored_by_the_router_code(engines, prompts, tmp_path: Path) -> None:
    from router.scorers import make_scorer
    from router.serving import score_choices   # the function the router applies to a stage's response

    run = calibrate(_spec(tmp_path), prompts, endpoints=_eps(engines), output=tmp_path / "p.csv",
                    sampling=SAMPLING, cache_root=tmp_path / "cache", concurrency=2)
    assert run.asked == 8 and [s.origin for s in run.stages] == ["--endpoint", "--endpoint"]
    prof = load_profile(run.profile_path, MODELS)
    assert prof.n_prompts == 4 and prof.provenance.kind == "measured"
    assert prof.provenance.get("sampling") == "temperature=0, max_tokens=12"
    assert prof.provenance.get("prompts") == "4" and prof.provenance.get("scorer") == "mean_logprob"
    raw = {(r["prompt_id"], r["stage"]): r for r in _cache_lines(tmp_path / "cache")}
    for i, pid in enumerate(IDS):
        for j, stage in enumerate(("small", "large")):
            r = raw[(pid, stage)]
            assert 1 <= r["output_tokens"] <= 12 and r["input_tokens"] > 5
            router_score = score_choices(make_scorer("mean_logprob"), {"choices": [{"logprobs": r["logprobs"]}]})
            assert prof.scores[i, j] == pytest.approx(router_score, abs=5e-7)   # 6 decimals in the CSV
            a = next(x for x in run.answers if x.prompt_id == pid and x.stage == stage)
            for name in ("quantile_logprob", "margin"):
                assert a.scores[name] == score_choices(make_scorer(name), {"choices": [{"logprobs": r["logprobs"]}]})
            assert a.quality in (0.0, 1.0) and prof.quality[i, j] == a.quality
    rep = report_from_run(run)
    assert [s.quality for s in rep.stages] == pytest.approx(prof.quality.mean(axis=0).tolist())
    header = run.profile_path.read_text().splitlines()[:10]
    assert "# tool: cascadia calibrate" in header
    again = calibrate(_spec(tmp_path), prompts, output=tmp_path / "p2.csv", sampling=SAMPLING, scorer="margin",
                      cache_root=tmp_path / "cache")           # all cached: no engine is started
    assert again.asked == 0 and [s.origin for s in again.stages] == ["cache", "cache"]
    prof2 = load_profile(again.profile_path, MODELS)
    assert prof2.provenance.get("scorer") == "margin"
    assert prof2.scores[0, 0] == pytest.approx(run.answers[0].scores["margin"], abs=5e-7)


def test_local_spec_engines_are_started_and_stopped_by_calibrate(prompts, tmp_path: Path) -> None:
    run = calibrate(_spec(tmp_path), prompts[:2], output="", sampling=SAMPLING, cache_root=tmp_path / "c")
    assert [s.origin for s in run.stages] == ["local engine", "local engine"] and run.asked == 4
    assert run.profile_path is None
    for st in run.stages:   # gone afterwards
        with pytest.raises(OSError):
            urllib.request.urlopen(st.url + "/v1/models", timeout=2)


def test_dead_endpoint_names_the_stage_and_the_run_resumes(engines, prompts, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CalibrationError, match=r"stage 'large' \(google/gemma-3-270m at " + dead):
        calibrate(_spec(tmp_path), prompts, endpoints={"small": engines[0].url, "large": dead}, output="",
                  sampling=SAMPLING, cache_root=tmp_path / "c", concurrency=2)
    done = _cache_lines(tmp_path / "c")
    assert {r["stage"] for r in done} == {"small"} and len(done) == 4
    run = calibrate(_spec(tmp_path), prompts, endpoints=_eps(engines), output="", sampling=SAMPLING,
                    cache_root=tmp_path / "c", concurrency=2)
    assert run.asked == 4 and len(run.answers) == 8          # only the large stage's answers were asked


def test_interrupt_then_resume(engines, prompts, tmp_path: Path) -> None:
    def stop_after_three(done: int, total: int, what: str) -> None:
        if done >= 3 and what != "starting":
            raise KeyboardInterrupt

    with pytest.raises(CalibrationInterrupted, match="run the same command again") as info:
        calibrate(_spec(tmp_path), prompts, endpoints=_eps(engines), output="", sampling=SAMPLING,
                  cache_root=tmp_path / "c", concurrency=1, progress=stop_after_three)
    assert info.value.exit_code == 130
    n_cached = len(_cache_lines(tmp_path / "c"))
    assert 3 <= n_cached < 8
    run = calibrate(_spec(tmp_path), prompts, endpoints=_eps(engines), output="", sampling=SAMPLING,
                    cache_root=tmp_path / "c", concurrency=1)
    assert run.asked == 8 - len({r["key"] for r in _cache_lines(tmp_path / "c")[:n_cached]})
    assert len(run.answers) == 8
    longer = calibrate(_spec(tmp_path), prompts, endpoints=_eps(engines), output="",
                       sampling=Sampling(0.0, 13), cache_root=tmp_path / "c")
    assert longer.asked == 8                                   # other sampling parameters: other answers


def test_judge_is_a_real_engine_and_its_grades_are_cached(engines, prompts, tmp_path: Path) -> None:
    kw = dict(endpoints=_eps(engines), output="", sampling=SAMPLING, cache_root=tmp_path / "c", grader="judge")
    run = calibrate(_spec(tmp_path), prompts[:2], **kw)
    grades = _cache_lines(tmp_path / "c", "grades.jsonl")
    assert len(grades) == 4                                    # judged by the last stage (the default judge)
    for a in run.answers:
        assert a.grader == "judge" and 0.0 <= a.quality <= 1.0
        assert round(a.quality * 10, 9) == round(a.quality * 10)  # a 0..10 score, normalised
    again = calibrate(_spec(tmp_path), prompts[:2], **kw)
    assert len(_cache_lines(tmp_path / "c", "grades.jsonl")) == 4
    assert [a.quality for a in again.answers] == [a.quality for a in run.answers]
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CalibrationError, match="the judge"):
        calibrate(_spec(tmp_path), prompts[2:3], **{**kw, "judge_endpoint": dead})


def test_cli_ctrl_c_then_resume_writes_profile_and_report(engines, tmp_path: Path) -> None:
    spec_file = tmp_path / "cal-test.yaml"
    spec_file.write_text(f"""name: cal-test
stages:
  - {{name: small, model: {MODELS[0]}}}
  - {{name: large, model: {MODELS[1]}}}
quality: {{profile: profile.csv, relative_target: 0.9}}
workload: {{rate_rps: 0.1, input_tokens: {{dist: fixed, value: 50}}}}
resources: {{local: {{threads: 1}}}}
""")
    env = {**os.environ, "CASCADIA_HOME": str(tmp_path / "home")}
    argv = [sys.executable, "-m", "cascadia_sky.cli", "calibrate", str(spec_file), "--prompts", str(PROMPT_FILE),
            "--limit", "6", "--max-tokens", "12", "-c", "1", "-e", f"small={engines[0].url}",
            "-e", f"large={engines[1].url}"]
    cache = tmp_path / "home" / "calibrate" / "cal-test" / "answers.jsonl"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not cache.is_file() or len(cache.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    n_cached = len(cache.read_text().splitlines())
    assert 2 <= n_cached < 12
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"({12 - n_cached} answers asked" in done.stdout.replace("\n", " ")
    assert "recommended scorer:" in done.stdout
    assert (tmp_path / "profile.csv").is_file() and (tmp_path / "profile.report.png").is_file()
    assert len(load_profile(tmp_path / "profile.csv", MODELS).prompt_ids) == 6


def test_local_engine_answers_are_bounded_without_max_tokens(engines) -> None:
    """A request without max_tokens to the base model (which never stops on its own) ends at the engine default."""
    from cascadia_sky.constants import LOCAL_ENGINE_MAX_TOKENS

    body = {"model": "large", "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}]}
    req = urllib.request.Request(engines[1].url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        out = json.loads(resp.read())
    assert out["usage"]["completion_tokens"] <= LOCAL_ENGINE_MAX_TOKENS
    if out["choices"][0]["finish_reason"] == "length":
        assert out["usage"]["completion_tokens"] == LOCAL_ENGINE_MAX_TOKENS


def test_served_model_name_comes_from_the_endpoint(engines) -> None:
    from cascadia_sky.calibrate.stages import served_name

    assert served_name(engines[0].url, MODELS[0], "small") == "small"          # the one model it serves
    assert served_name(engines[0].url + "/v1", MODELS[0], "x") == "small"
    assert served_name(f"http://127.0.0.1:{free_port()}", MODELS[0], "small") == "small"   # unreachable: the name
