"""Quality profiles: loading (and every kind of loading error), routing on a hand-computed profile, grids, splits,
bootstrap bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascadia_sky.errors import ProfileError, SpecError, UserInputError
from cascadia_sky.quality import QualityProfile, load_profile

MODELS = ["org/Small-1B", "org/Medium-10B", "org/Large-100B"]

# A hand-made profile: 4 prompts x 3 stages. Lengths encode (prompt, stage): input 10*(p+1)+s, output 100*(p+1)+s.
SCORES = [[0.9, 0.5, 0.1], [0.2, 0.8, 0.3], [0.1, 0.1, 0.9], [0.6, 0.4, 0.2]]
QUALITY = [[1, 0, 1], [0, 1, 1], [0, 0, 1], [1, 1, 0]]


def _rows() -> list[list[str]]:
    rows = []
    for p in range(4):
        for s in range(3):
            rows.append([f"q{p}", MODELS[s], str(SCORES[p][s]), str(QUALITY[p][s]), str(10 * (p + 1) + s),
                         str(100 * (p + 1) + s)])
    return rows


def _write(path: Path, rows: list[list[str]], header: str = "prompt_id,model,score,quality,input_tokens,"
                                                           "output_tokens", prefix: str = "") -> Path:
    path.write_text(prefix + header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def tiny(tmp_path: Path) -> QualityProfile:
    return load_profile(_write(tmp_path / "tiny.csv", _rows()), MODELS)


# --- loading ---------------------------------------------------------------------------------------

def test_load_builds_prompt_by_stage_arrays(tiny: QualityProfile) -> None:
    assert (tiny.n_prompts, tiny.n_stages) == (4, 3)
    np.testing.assert_allclose(tiny.scores, SCORES)
    np.testing.assert_allclose(tiny.quality, QUALITY)
    assert tiny.input_tokens[2, 1] == 31 and tiny.output_tokens[3, 2] == 402
    assert tiny.prompt_ids == ("q0", "q1", "q2", "q3")
    with pytest.raises(ValueError):
        tiny.scores[0, 0] = 5.0  # read-only: the search must not be able to corrupt the profile


def test_load_matches_case_insensitive_aliases_comments_extra_rows_and_columns(tmp_path: Path) -> None:
    rows = _rows()[::-1]  # any row order
    for r in rows:
        if r[1] == MODELS[0]:
            r[1] = "small-alias"  # named by an alias in the profile
        elif r[1] == MODELS[2]:
            r[1] = r[1].upper()  # case differs
        r.append("note")
    rows.append(["q0", "org/Unused-5B", "0.3", "1", "5", "5", "x"])  # a model not in the cascade: ignored
    path = _write(tmp_path / "p.csv", rows, header="prompt_id, Model ,score,quality,input_tokens,output_tokens,notes",
                  prefix="# synthetic\n\n")
    prof = load_profile(path, MODELS, aliases={"small-alias": MODELS[0]})
    order = [prof.prompt_ids.index(f"q{p}") for p in range(4)]
    np.testing.assert_allclose(prof.scores[order], SCORES)
    # aliases work in the other direction too ({stage_model: profile_name})
    prof2 = load_profile(path, MODELS, aliases={MODELS[0]: "SMALL-ALIAS"})
    np.testing.assert_allclose(prof2.quality, prof.quality)


def _error(path: Path, models: list[str] = MODELS, **kw: object) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(path, models, **kw)  # type: ignore[arg-type]
    assert isinstance(info.value, SpecError) and isinstance(info.value, UserInputError)
    assert info.value.exit_code == 2
    msg = str(info.value)
    assert msg.startswith(str(path))  # every message names the file
    return msg


def test_error_missing_file(tmp_path: Path) -> None:
    msg = _error(tmp_path / "nope.csv")
    assert "file not found" in msg and "prompt_id" in msg


def test_error_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("# only a comment\n")
    assert "no header" in _error(path)


def test_error_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", [r[:3] + r[4:] for r in _rows()],
                  header="prompt_id,model,score,input_tokens,output_tokens")
    msg = _error(path)
    assert "line 1" in msg and "missing column(s) 'quality'" in msg


@pytest.mark.parametrize("col, value, expect", [
    (2, "abc", "column 'score': not a number: 'abc'"),
    (3, "nan", "column 'quality': must be a finite number"),
    (4, "1.5", "column 'input_tokens': not a whole token count: '1.5'"),
    (5, "-3", "column 'output_tokens': negative token count -3"),
    (0, " ", "column 'prompt_id': empty prompt id"),
])
def test_error_bad_cell_names_line_and_column(tmp_path: Path, col: int, value: str, expect: str) -> None:
    rows = _rows()
    rows[4][col] = value  # data row 5 = line 6
    msg = _error(_write(tmp_path / "b.csv", rows))
    assert "line 6" in msg and expect in msg


def test_token_counts_written_as_whole_floats_are_accepted(tmp_path: Path) -> None:
    rows = _rows()
    rows[0][4] = "11.0"
    assert load_profile(_write(tmp_path / "f.csv", rows), MODELS).input_tokens[0, 0] == 11


def test_error_short_row(tmp_path: Path) -> None:
    rows = _rows()
    rows[2] = rows[2][:4]
    msg = _error(_write(tmp_path / "s.csv", rows))
    assert "line 4" in msg and "expected 6 cells" in msg


def test_error_prompt_missing_a_stage(tmp_path: Path) -> None:
    rows = [r for r in _rows() if not (r[0] == "q2" and r[1] == MODELS[1])]
    msg = _error(_write(tmp_path / "m.csv", rows))
    assert "prompt 'q2'" in msg and "stage 2 model 'org/Medium-10B'" in msg and "line 8" in msg


def test_error_unknown_stage_model_suggests_the_profile_name(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path / "u.csv", _rows()), models=[MODELS[0], "org/Medium-10B-Instruct", MODELS[2]])
    assert "stage 2 model 'org/Medium-10B-Instruct' has no rows" in msg
    assert "did you mean 'org/Medium-10B'?" in msg and "aliases" in msg


def test_error_duplicate_row(tmp_path: Path) -> None:
    rows = _rows()
    rows.append(rows[1])
    msg = _error(_write(tmp_path / "d.csv", rows))
    assert "line 14" in msg and "already has a row" in msg and "(line 3)" in msg


def test_error_no_stages(tmp_path: Path) -> None:
    assert "no stages" in _error(_write(tmp_path / "n.csv", _rows()), models=[])


# --- routing ---------------------------------------------------------------------------------------

def test_evaluate_hand_computed(tiny: QualityProfile) -> None:
    # thresholds (0.7, 0.9): q0 accepted at stage 1 (0.9 >= 0.7); q1, q2, q3 fall through to stage 3.
    out = tiny.evaluate([0.7, 0.9])
    np.testing.assert_allclose(out.answered, [0.25, 0.0, 0.75])
    np.testing.assert_allclose(out.reach, [1.0, 0.75, 0.75])
    assert out.quality == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert out.n_prompts == 4
    np.testing.assert_array_equal(out.stage_input_tokens[0], [10, 20, 30, 40])
    np.testing.assert_array_equal(out.stage_input_tokens[1], [21, 31, 41])
    np.testing.assert_array_equal(out.stage_output_tokens[2], [202, 302, 402])
    # thresholds (0.6, 0.8): q0, q3 at stage 1; q1 at stage 2; q2 at stage 3. Score == threshold accepts (q3, q1).
    out = tiny.evaluate([0.6, 0.8])
    np.testing.assert_allclose(out.answered, [0.5, 0.25, 0.25])
    assert out.quality == pytest.approx(1.0)
    np.testing.assert_array_equal(tiny.route([0.6, 0.8]), [0, 1, 2, 0])


def test_evaluate_on_a_subset_uses_only_those_prompts(tiny: QualityProfile) -> None:
    out = tiny.evaluate([0.7, 0.9], idx=np.array([0, 3]))
    np.testing.assert_allclose(out.answered, [0.5, 0.0, 0.5])
    assert out.quality == pytest.approx(0.5)
    np.testing.assert_array_equal(out.stage_output_tokens[1], [401])


def test_extreme_thresholds_give_z1_and_z2(tiny: QualityProfile) -> None:
    assert tiny.evaluate([np.inf, np.inf]).quality == pytest.approx(tiny.z1()) == pytest.approx(0.75)
    assert tiny.evaluate([-np.inf, 0.0]).quality == pytest.approx(tiny.z2()) == pytest.approx(0.5)
    np.testing.assert_allclose(tiny.evaluate([-np.inf, 0.0]).reach, [1, 0, 0])
    assert tiny.z1(np.array([3])) == 0.0


def test_raising_a_threshold_sends_more_requests_on(tiny: QualityProfile) -> None:
    reach = [tiny.evaluate([t, 0.5]).reach for t in (0.0, 0.15, 0.4, 0.7, 1.0)]
    later = np.array([r[1] for r in reach])
    assert (np.diff(later) >= 0).all() and later[0] == 0.0 and later[-1] == 1.0


def test_bad_thresholds_are_rejected(tiny: QualityProfile) -> None:
    with pytest.raises(ValueError, match="need 2 thresholds"):
        tiny.evaluate([0.5])
    with pytest.raises(ValueError, match="NaN"):
        tiny.evaluate([0.5, float("nan")])
    with pytest.raises(ValueError, match="idx"):
        tiny.evaluate([0.5, 0.5], idx=np.array([], dtype=int))


def test_evaluate_many_equals_evaluate() -> None:
    rng = np.random.default_rng(3)
    p, s = 300, 4
    prof = QualityProfile(np.round(rng.normal(size=(p, s)), 1), rng.integers(0, 11, (p, s)),
                          rng.integers(1, 50, (p, s)), rng.integers(1, 50, (p, s)))
    thr = rng.normal(size=(57, s - 1))
    thr[::7, 1] = np.inf
    thr[::5, 0] = -np.inf
    idx = np.arange(0, p, 2)
    for sub in (None, idx):
        batch = prof.evaluate_many(thr, sub)
        for k in range(thr.shape[0]):
            one = prof.evaluate(thr[k], sub)
            np.testing.assert_allclose(batch.reach[k], one.reach)
            np.testing.assert_allclose(batch.answered[k], one.answered)
            assert batch.quality[k] == pytest.approx(one.quality)


def test_single_stage_profile_always_answers_at_stage_one() -> None:
    prof = QualityProfile([[0.1], [0.2]], [[1], [0]], [[1], [2]], [[3], [4]])
    out = prof.evaluate([])
    np.testing.assert_allclose(out.answered, [1.0])
    assert out.quality == 0.5


# --- grid, split, bootstrap ------------------------------------------------------------------------

def test_threshold_grid_spans_all_routings(tiny: QualityProfile) -> None:
    grid = tiny.threshold_grid(0, 3)
    assert grid[0] == -np.inf and grid[-1] == np.inf and (np.diff(grid) > 0).all() and len(grid) <= 5
    np.testing.assert_allclose(grid[1:-1], np.quantile([0.9, 0.2, 0.1, 0.6], [0.25, 0.5, 0.75]))
    with pytest.raises(ValueError, match="last stage"):
        tiny.threshold_grid(2, 3)


def test_split_is_disjoint_complete_and_deterministic() -> None:
    prof = QualityProfile(np.zeros((101, 2)), np.zeros((101, 2)), np.ones((101, 2)), np.ones((101, 2)))
    train, hold = prof.split(0.3, seed=5)
    assert len(hold) == 30 and len(train) == 71
    assert not set(train) & set(hold) and sorted(set(train) | set(hold)) == list(range(101))
    again = prof.split(0.3, seed=5)
    np.testing.assert_array_equal(again[0], train)
    assert not np.array_equal(prof.split(0.3, seed=6)[1], hold)
    assert len(prof.split(0.0, seed=1)[1]) == 0
    with pytest.raises(ValueError):
        prof.split(1.0, seed=1)


def test_bootstrap_bound_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(11)
    p = 2000
    q = (rng.random((p, 2)) < [0.6, 0.8]).astype(float)
    prof = QualityProfile(rng.normal(size=(p, 2)), q, np.ones((p, 2)), np.ones((p, 2)))
    thr = [0.3]
    point = prof.evaluate(thr).quality
    per = q[np.arange(p), prof.route(thr)]
    normal = point - 1.6449 * per.std() / np.sqrt(p)
    bound = prof.quality_lower_bound(thr, 0.95, 2000, seed=1)
    assert bound < point and bound == pytest.approx(normal, abs=0.004)
    assert prof.quality_lower_bound(thr, 0.95, 2000, seed=1) == bound  # deterministic
    assert prof.quality_lower_bound(thr, 0.99, 2000, seed=1) < bound
    assert prof.quality_lower_bound(thr, 0.5, 2000, seed=1) == pytest.approx(point, abs=0.003)
    with pytest.raises(ValueError):
        prof.quality_lower_bound(thr, 1.0, 100, seed=1)


def test_subset_profile_equals_indexed_evaluation(tiny: QualityProfile) -> None:
    idx = np.array([3, 1])
    sub = tiny.subset(idx)
    assert sub.prompt_ids == ("q3", "q1") and sub.stage_models == tiny.stage_models
    a, b = sub.evaluate([0.7, 0.9]), tiny.evaluate([0.7, 0.9], idx)
    np.testing.assert_allclose(a.reach, b.reach)
    assert a.quality == b.quality
    np.testing.assert_array_equal(a.stage_input_tokens[2], b.stage_input_tokens[2])
