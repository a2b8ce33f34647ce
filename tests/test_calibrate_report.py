"""The calibration report's numbers, checked against hand computations (no engines)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cascadia_sky.calibrate.report import (auroc, build_report, isotonic_apply, isotonic_fit, prompts_needed,
                                           quality_interval, reliability, report_png, report_table,
                                           suggested_max_tokens)


def test_wilson_interval_by_hand() -> None:
    q = np.array([1] * 8 + [0] * 2, dtype=float)        # 8 of 10 right
    mean, lo, hi = quality_interval(q)
    z = 1.959964
    n, p = 10, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert mean == 0.8
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # the textbook values


def test_graded_qualities_use_the_normal_interval() -> None:
    q = np.array([0.0, 0.5, 1.0, 0.5])
    mean, lo, hi = quality_interval(q)
    s = math.sqrt(((0 - .5) ** 2 + 0 + .25 + 0) / 3)
    assert mean == 0.5 and hi - mean == pytest.approx(1.959964 * s / 2)


def test_auroc_equals_the_pair_count_with_ties_as_half() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        s = rng.integers(0, 5, size=17).astype(float)    # many ties
        y = rng.random(17) < 0.5
        if y.all() or not y.any():
            continue
        pairs = [(a, b) for a, b in itertools.product(s[y], s[~y])]
        hand = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
        assert auroc(s, y) == pytest.approx(hand)
    assert auroc(np.array([1.0, 2.0, 3.0]), np.array([False, True, True])) == 1.0
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([True, True])))


def test_prompts_needed_matches_the_issue_example() -> None:
    assert prompts_needed(0.8, 0.03) == 683                     # "about 700 prompts for +-3 points at 80 %"
    assert prompts_needed(0.5, 0.05) == math.ceil(1.959964 ** 2 * 0.25 / 0.0025)


def test_reliability_bins_are_equal_count_and_ordered() -> None:
    s = np.array([5.0, 1, 4, 2, 3, 6])
    q = np.array([1.0, 0, 1, 0, 1, 1])
    bins = reliability(s, q, bins=3)
    assert bins == [(1.5, 0.0, 2), (3.5, 1.0, 2), (5.5, 1.0, 2)]


def test_isotonic_fit_by_hand() -> None:
    x = np.array([1.0, 2, 3, 4, 5])
    y = np.array([0.0, 1, 0, 1, 1])
    model = isotonic_fit(x, y)                                  # PAV pools (1, 0) at x = 2, 3 into 0.5
    assert isotonic_apply(model, x).tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert isotonic_apply(model, np.array([0.0, 2.5, 9.0])).tolist() == [0.0, 0.5, 1.0]


def _two_stage(p: int = 40):
    rng = np.random.default_rng(1)
    right0 = rng.random(p) < 0.5
    right1 = right0 | (rng.random(p) < 0.5)
    quality = np.column_stack([right0, right1]).astype(float)
    good = quality + rng.normal(0, 0.3, size=quality.shape)    # informative scorer
    noise = rng.normal(0, 1, size=quality.shape)                # uninformative scorer
    return quality, {"mean_logprob": noise, "margin": good}


def test_report_recommends_the_separating_scorer_and_warns() -> None:
    quality, scores = _two_stage()
    out = np.full(quality.shape, 10.0)
    rep = build_report(["small", "large"], ["m1", "m2"], scores, quality, out, np.ones(quality.shape),
                       "mean_logprob")
    assert rep.recommended == "margin"
    st0 = rep.stages[0]
    assert st0.quality == quality[:, 0].mean()
    assert st0.auroc["margin"] == pytest.approx(auroc(scores["margin"][:, 0], quality[:, 0] >= 0.5))
    assert any("needs about" in w for w in rep.warnings)        # 40 prompts: far from +-3 points
    assert any("'margin' separates" in w for w in rep.warnings)
    assert not any("not better" in w for w in rep.warnings)
    worse = build_report(["small", "large"], ["m1", "m2"], scores, quality[:, ::-1], out, np.ones(quality.shape),
                         "margin")
    assert any("'large'" in w and "not better" in w for w in worse.warnings)


def test_isotonic_check_uses_a_held_out_split() -> None:
    quality, scores = _two_stage(200)
    rep = build_report(["small", "large"], ["m1", "m2"], scores, quality, np.ones(quality.shape),
                       np.ones(quality.shape), "margin", holdout=0.3, seed=5)
    st = rep.stages[0]
    perm = np.random.default_rng(5).permutation(200)
    hold, train = perm[:60], perm[60:]
    y = quality[:, 0]
    const = np.mean((y[train].mean() - y[hold]) ** 2)
    assert st.brier_constant == pytest.approx(const)
    assert st.brier_isotonic < st.brier_constant                 # an informative score helps


def test_table_and_png(tmp_path) -> None:
    quality, scores = _two_stage()
    rep = build_report(["small", "large"], ["m1", "m2"], scores, quality, np.ones(quality.shape),
                       np.ones(quality.shape), "margin")
    assert report_table(rep).row_count == 2
    path = report_png(rep, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_suggested_max_tokens() -> None:
    assert suggested_max_tokens(64) == 128 and suggested_max_tokens(85) == 128 and suggested_max_tokens(86) == 256
    assert suggested_max_tokens(3) == 16 and suggested_max_tokens(0) == 16
