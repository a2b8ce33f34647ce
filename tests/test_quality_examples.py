"""The committed SYNTHETIC example profiles: reproducible byte for byte by their generator, true to the published
accuracies they are built from, and behaving like a cascade profile should."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascadia_sky.quality import QualityProfile, load_profile

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_synthetic_profiles.py"
PROFILE_DIR = ROOT / "examples" / "profiles"


def _generator():  # the script is not a package module: load it by path
    spec = importlib.util.spec_from_file_location("make_synthetic_profiles", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


GEN = _generator()
PROFILES = {p.file: p for p in GEN.PROFILES}


@pytest.fixture(scope="module")
def loaded() -> dict[str, QualityProfile]:
    return {f: load_profile(PROFILE_DIR / f, [m.name for m in p.models]) for f, p in PROFILES.items()}


def test_expected_files_exist_small_and_labelled_synthetic() -> None:
    assert set(PROFILES) == {"deepseek.csv", "llama3.csv", "multicloud.csv", "local-synthetic.csv"}
    for name in PROFILES:
        data = (PROFILE_DIR / name).read_bytes()
        assert len(data) < 1_000_000
        assert data.startswith(b"# SYNTHETIC quality profile")
    assert "SYNTHETIC" in (PROFILE_DIR / "README.md").read_text()


def test_generator_reproduces_committed_csvs_byte_for_byte(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                         check=True)
    assert "wrote" in run.stdout
    for name in PROFILES:
        assert (tmp_path / name).read_bytes() == (PROFILE_DIR / name).read_bytes(), name
    assert GEN.main(["--check", "--out", str(PROFILE_DIR)]) == 0


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    GEN.main(["--out", str(tmp_path)])
    path = tmp_path / "local-synthetic.csv"
    path.write_bytes(path.read_bytes().replace(b",1,", b",0,", 1))
    assert GEN.main(["--check", "--out", str(tmp_path)]) == 1


def test_shapes_and_model_ids(loaded: dict[str, QualityProfile]) -> None:
    assert loaded["deepseek.csv"].stage_models == ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                                                   "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
                                                   "deepseek-ai/DeepSeek-R1")
    assert loaded["llama3.csv"].stage_models[2] == "meta-llama/Llama-3.1-405B"
    assert loaded["local-synthetic.csv"].stage_models == ("HuggingFaceTB/SmolLM2-135M", "google/gemma-3-270m")
    assert loaded["deepseek.csv"].n_prompts == 2000 and loaded["local-synthetic.csv"].n_prompts == 500
    for f, prof in loaded.items():
        assert (prof.scores < 0).all(), f  # mean token logprob
        assert set(np.unique(prof.quality)) <= {0.0, 1.0}
        assert ((prof.input_tokens + prof.output_tokens) <= PROFILES[f].context_tokens).all()


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_accuracies_match_the_published_mixture(loaded: dict[str, QualityProfile], name: str) -> None:
    spec = PROFILES[name]
    prof = loaded[name]
    counts = GEN._counts(spec)
    for j, model in enumerate(spec.models):
        expected = sum(c * model.accuracy[b.key] for c, b in zip(counts, spec.benchmarks)) / spec.n_prompts
        se = np.sqrt(expected * (1 - expected) / spec.n_prompts)
        assert abs(prof.quality[:, j].mean() - expected) < 4 * se, model.name


def _auroc(score: np.ndarray, correct: np.ndarray) -> float:
    pos, neg = score[correct == 1], score[correct == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_scores_are_informative_with_the_stated_auroc(loaded: dict[str, QualityProfile], name: str) -> None:
    prof = loaded[name]
    for j, model in enumerate(PROFILES[name].models):
        auc = _auroc(prof.scores[:, j], prof.quality[:, j])
        assert abs(auc - model.auroc) < 0.05, (model.name, auc)


def test_correctness_is_correlated_across_stages(loaded: dict[str, QualityProfile]) -> None:
    for f, prof in loaded.items():
        small, large = prof.quality[:, 0] == 1, prof.quality[:, -1] == 1
        assert large[small].mean() > large.mean() + 0.02, f  # solving with the small model predicts the large
        assert large[small].mean() > 0.8, f  # superset-ish


def test_reasoning_models_write_long_answers(loaded: dict[str, QualityProfile]) -> None:
    assert np.median(loaded["deepseek.csv"].output_tokens) > 5 * np.median(loaded["llama3.csv"].output_tokens)
    ds = loaded["deepseek.csv"]
    wrong = ds.quality[:, 0] == 0
    assert np.median(ds.output_tokens[wrong, 0]) > np.median(ds.output_tokens[~wrong, 0])


def test_z1_at_least_z2(loaded: dict[str, QualityProfile]) -> None:
    for f, prof in loaded.items():
        assert prof.z1() >= prof.z2(), f
        assert prof.evaluate([np.inf] * (prof.n_stages - 1)).quality == pytest.approx(prof.z1())


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_raising_a_threshold_raises_later_reach_and_quality(loaded: dict[str, QualityProfile], name: str) -> None:
    prof = loaded[name]
    n_thr = prof.n_stages - 1
    mid = [float(np.median(prof.scores[:, j])) for j in range(n_thr)]
    for st in range(n_thr):
        grid = prof.threshold_grid(st, 9)
        outs = [prof.evaluate(mid[:st] + [t] + mid[st + 1:]) for t in grid]
        for later in range(st + 1, prof.n_stages):
            assert (np.diff([o.reach[later] for o in outs]) >= 0).all()
        # Quality rises while the forwarded answers are the less confident ones (the lower 60 % of scores); at
        # the very top the small model's most confident answers are about as good as the next stage's.
        low = [o.quality for o, t in zip(outs, grid) if t <= np.quantile(prof.scores[:, st], 0.6)]
        assert len(low) >= 4 and (np.diff(low) >= 0).all(), (st, low)
        assert outs[-1].quality > outs[0].quality


def test_split_then_bound_on_an_example(loaded: dict[str, QualityProfile]) -> None:
    prof = loaded["deepseek.csv"]
    train, hold = prof.split(0.3, seed=0)
    assert len(hold) == 600 and not set(train) & set(hold)
    thr = [float(np.quantile(prof.scores[:, j], 0.4)) for j in range(2)]
    point = prof.evaluate(thr, hold).quality
    bound = prof.quality_lower_bound(thr, 0.95, 1000, seed=0, idx=hold)
    assert bound < point
    assert point - bound < 0.05  # about 1.64 standard errors of a 600-prompt mean
