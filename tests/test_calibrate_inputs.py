"""Prompt files, graders and profile provenance (no engines; the judge against a real engine is in
test_calibrate_engines.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cascadia_sky.calibrate.graders import (GradeError, Judge, answer_number, auto_grader_name, make_grader,
                                            parse_judge_score)
from cascadia_sky.calibrate.prompts import Prompt, PromptFileError, load_prompts
from cascadia_sky.errors import UserInputError
from cascadia_sky.quality import ProfileProvenance, ProfileRow, load_profile, read_provenance, write_profile

ROOT = Path(__file__).resolve().parent.parent


def _p(ref: str | None, choices: tuple[str, ...] = (), **kw) -> Prompt:
    return Prompt(id="p", messages=({"role": "user", "content": "q"},), reference=ref, choices=choices, **kw)


def test_jsonl_and_csv_prompts(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "Which?", "choices": ["x", "y"], "reference": "B"}) + "\n\n"
                 + json.dumps({"id": "b", "messages": [{"role": "system", "content": "s"},
                                                       {"role": "user", "content": "u"}], "tolerance": 0.5}) + "\n")
    a, b = load_prompts(f)
    assert a.messages[0]["content"] == "Which?\n\nA. x\nB. y" and a.choices == ("x", "y")
    assert b.question == "u" and b.tolerance == 0.5 and b.reference is None
    c = tmp_path / "p.csv"
    c.write_text("id,prompt,reference,choices\nq1,What is 2+2?,4,\nq2,Pick,A,yes|no\n")
    q1, q2 = load_prompts(c)
    assert q1.reference == "4" and q2.choices == ("yes", "no")
    assert len(load_prompts(c, limit=1)) == 1


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "x"}', "missing 'id'"),
    ('{"id": "a"}', "neither 'prompt'"),
    ('not json', "not valid JSON"),
    ('{"id": "a", "prompt": "x", "choices": "ab"}\n{"id": "a", "prompt": "y"}', "appears twice"),
])
def test_bad_prompt_files_name_the_problem(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(PromptFileError, match=message):
        load_prompts(f)


def test_exact_contains_numeric() -> None:
    exact, contains, numeric = make_grader("exact"), make_grader("contains"), make_grader("numeric")
    assert exact(_p("Paris"), "Paris.") == 1.0 and exact(_p("Paris"), "It is Paris") == 0.0
    assert exact(_p("Paris"), "paris\nmore text") == 1.0
    assert contains(_p("Paris"), "It is Paris.") == 1.0 and contains(_p("Paris"), "Parisian") == 0.0
    assert contains(_p("blue whale"), "The Blue Whale!") == 1.0
    assert numeric(_p("391"), "17 * 23 = 391") == 1.0
    assert numeric(_p("391"), "The answer is 391.") == 1.0
    assert numeric(_p("1000"), "1,000 metres") == 1.0
    assert numeric(_p("391"), "381") == 0.0 and numeric(_p("391"), "no idea") == 0.0
    assert numeric(_p("0.75"), "3/4") == 1.0
    assert numeric(_p("10", tolerance=0.5), "10.4") == 1.0 and numeric(_p("10", tolerance=0.5), "10.6") == 0.0
    assert answer_number("First 5, so the answer is 7; later 9") == 7.0
    assert answer_number("Add 10 to 91.\n\nSo, 91 + 10 = 101.") == 101.0
    with pytest.raises(GradeError, match="needs a 'reference'"):
        exact(_p(None), "x")


def test_choice_grader() -> None:
    g = make_grader("choice")
    p = _p("C", ("trout", "octopus", "dolphin", "shark"))
    for ans, want in [("C", 1), ("C. dolphin", 1), ("(C)", 1), ("The answer is C", 1), ("dolphin", 1),
                      ("B", 0), ("B. dolphin", 0), ("a dolphin or a shark", 0), ("", 0)]:
        assert g(p, ans) == want, ans
    assert g(_p("dolphin", ("trout", "dolphin")), "B") == 1.0            # the reference may be the option text
    with pytest.raises(GradeError, match="neither a letter"):
        g(_p("whale", ("trout", "dolphin")), "A")


def test_auto_and_custom_graders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_grader_name(_p("4")) == "numeric" and auto_grader_name(_p("Paris")) == "contains"
    assert auto_grader_name(_p("A", ("x", "y"))) == "choice" and auto_grader_name(_p("x", grader="exact")) == "exact"
    (tmp_path / "mygrader.py").write_text("def g(p, a):\n    return len(a) == 3\n"
                                          "def bad(p, a):\n    return 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert make_grader("mygrader:g")(_p("x"), "abc") == 1.0
    with pytest.raises(GradeError, match="in \\[0, 1\\]"):
        make_grader("mygrader:bad")(_p("x"), "abc")
    with pytest.raises(GradeError, match="cannot import"):
        make_grader("mygrader:nope")
    with pytest.raises(GradeError, match="unknown grader"):
        make_grader("fuzzy")


def test_judge_rubric_and_score_parsing(tmp_path: Path) -> None:
    assert parse_judge_score("Score: 7", 10) == 0.7 and parse_judge_score("12", 10) == 1.0
    assert parse_judge_score("none", 10) == 0.0
    j = Judge.from_file("http://127.0.0.1:9", "m")
    text = j.prompt_text(_p("Paris"), "Lyon")
    assert "Reference answer: Paris" in text and "Answer to grade: Lyon" in text and "{" not in text
    bad = tmp_path / "r.txt"
    bad.write_text("no placeholders")
    with pytest.raises(UserInputError, match="placeholder"):
        Judge.from_file("http://x", "m", bad)


def test_provenance_round_trip_and_old_files(tmp_path: Path) -> None:
    prov = ProfileProvenance({"kind": "measured", "models": "a, b", "scorer": "margin", "prompts": "2"})
    rows = [ProfileRow("p1", "a", -0.5, 1, 10, 3, {"latency_s": "0.1"}), ProfileRow("p1", "b", -0.2, 0, 10, 4),
            ProfileRow("p2", "a", -1.5, 0, 12, 5), ProfileRow("p2", "b", -0.1, 1, 12, 6)]
    path = write_profile(tmp_path / "x.csv", rows, prov, extra_columns=["latency_s"])
    assert path.read_text().startswith("# kind: measured\n# models: a, b\n# scorer: margin\n# prompts: 2\n")
    prof = load_profile(path, ["a", "b"])
    assert prof.provenance.fields == prov.fields and not prof.provenance.synthetic
    assert prof.scores[:, 0].tolist() == [-0.5, -1.5] and prof.quality[:, 1].tolist() == [0, 1]
    assert prof.subset(__import__("numpy").array([1])).provenance == prof.provenance
    old = tmp_path / "old.csv"
    old.write_text("prompt_id,model,score,quality,input_tokens,output_tokens\np,a,-1,1,1,1\n")
    assert read_provenance(old) == ProfileProvenance() and read_provenance(old).kind == ""


def test_example_profiles_say_what_they_are() -> None:
    for name in ("deepseek.csv", "llama3.csv", "multicloud.csv", "local-synthetic.csv"):
        prov = read_provenance(ROOT / "examples" / "profiles" / name)
        assert prov.synthetic and prov.get("kind") == "synthetic", name
    local = read_provenance(ROOT / "examples" / "profiles" / "local.csv")
    assert local.kind == "measured" and local.get("tool") == "cascadia calibrate"
    assert int(local.get("prompts")) >= 300


def test_prompt_set_is_reproducible() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_calibration_prompts.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    prompts = load_prompts(ROOT / "examples" / "prompts" / "basic.jsonl")
    assert len(prompts) >= 300
    graders = {auto_grader_name(p) for p in prompts}
    assert graders == {"numeric", "contains", "choice"}
    for p in prompts:                    # every reference is gradable by the grader auto picks
        make_grader("auto")(p, p.reference or "")
        assert make_grader("auto")(p, p.reference or "") == 1.0, p.id
