"""The calibration report: per stage quality with a 95 % interval, each scorer's AUROC (how well it separates right
from wrong answers), a reliability diagram (score vs quality), the scorer to use, warnings, and an optional check of
an isotonic score -> P(correct) map on held-out prompts.

Definitions (the tests recompute them by hand):
- quality interval: Wilson score interval when every quality is 0 or 1, else the normal interval mean +- z*s/sqrt(n).
- AUROC: P(score of a right answer > score of a wrong one), ties counting 1/2 (Mann-Whitney with mid-ranks);
  "right" is quality >= 0.5. NaN when a stage has only right or only wrong answers.
- prompts needed for +-h at quality p: ceil(z^2 p (1-p) / h^2) (about 683 for +-3 points at p = 0.8); the report
  warns when a stage's interval is wider than +-h, and names that count with p kept inside [0.05, 0.95].
- recommended scorer: the highest mean AUROC over the stages that have a threshold (all but the last; the only
  stage of a one-stage cascade).
- isotonic check, per stage: fit a monotone map (pool-adjacent-violators) from score to right/wrong on a random
  (1 - holdout) share of the prompts, and compare its Brier score on the rest with the constant map (the training
  share of right answers). "Helps" when its Brier score is lower.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cascadia_sky.constants import (CALIBRATE_HOLDOUT_FRACTION, CALIBRATE_QUALITY_FLOOR_FRACTION,
                                    CALIBRATE_RELIABILITY_BINS, CALIBRATE_SEED, PROFILE_CONFIDENCE_Z,
                                    PROFILE_MARGIN_POINTS)
from cascadia_sky.quality import prompts_needed

if TYPE_CHECKING:
    from rich.table import Table

    from cascadia_sky.calibrate.runner import Answer, CalibrationRun


def quality_interval(q: np.ndarray, z: float = PROFILE_CONFIDENCE_Z) -> tuple[float, float, float]:
    """(mean, low, high) of per-prompt qualities."""
    q = np.asarray(q, dtype=float)
    n = q.size
    mean = float(q.mean())
    if np.isin(q, (0.0, 1.0)).all():
        denom = 1 + z * z / n
        centre = (mean + z * z / (2 * n)) / denom
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / denom
        return mean, centre - half, centre + half
    half = z * float(q.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return mean, mean - half, mean + half


def auroc(scores: np.ndarray, right: np.ndarray) -> float:
    """Mann-Whitney AUROC with mid-ranks for ties; NaN without both classes."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(right, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size)
    sorted_s = s[order]
    i = 0
    while i < s.size:
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def suggested_max_tokens(p95_tokens: float) -> int:
    """The next power of two >= 1.5 x p95_tokens, at least 16: room above the usual answer, a bound on a runaway."""
    return max(16, 1 << max(0, math.ceil(math.log2(max(1.0, 1.5 * p95_tokens)))))


def reliability(scores: np.ndarray, q: np.ndarray, bins: int = CALIBRATE_RELIABILITY_BINS
                ) -> list[tuple[float, float, int]]:
    """Equal-count score bins: (mean score, mean quality, count) per bin, low scores first."""
    s = np.asarray(scores, dtype=float)
    order = np.argsort(s, kind="mergesort")
    out = []
    for part in np.array_split(order, min(bins, s.size)):
        if part.size:
            out.append((float(s[part].mean()), float(np.asarray(q)[part].mean()), int(part.size)))
    return out


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the non-decreasing step function of x closest to y (least squares).
    Returns (block upper x, block value), for `isotonic_apply`."""
    order = np.argsort(x, kind="mergesort")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    vals: list[float] = []
    wts: list[float] = []
    ends: list[float] = []
    for xi, yi in zip(xs, ys):
        vals.append(yi)
        wts.append(1.0)
        ends.append(xi)
        while len(vals) > 1 and vals[-2] >= vals[-1]:
            w = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            vals[-2:], wts[-2:], ends[-2:] = [v], [w], [ends[-1]]
    return np.array(ends), np.array(vals)


def isotonic_apply(model: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    ends, vals = model
    idx = np.searchsorted(ends, np.asarray(x, float), side="left")
    return vals[np.minimum(idx, vals.size - 1)]


@dataclass(frozen=True)
class StageReport:
    name: str
    model: str
    n: int
    quality: float
    low: float
    high: float
    auroc: dict[str, float]
    output_tokens_median: float
    output_tokens_p95: float
    latency_mean_s: float
    reliability: list[tuple[float, float, int]]     # for the report's scorer
    brier_constant: float = math.nan                # held-out Brier score of the constant map
    brier_isotonic: float = math.nan                # ... of the isotonic map fitted on the rest

    @property
    def suggested_max_tokens(self) -> int:
        """A max_tokens for this stage: the next power of two >= 1.5 x the p95 answer length (at least 16)."""
        return suggested_max_tokens(self.output_tokens_p95)


@dataclass
class CalibrationReport:
    stages: list[StageReport]
    scorer: str                 # the scorer written to the profile's score column
    recommended: str            # the scorer with the highest mean AUROC on thresholded stages
    n_prompts: int
    warnings: list[str] = field(default_factory=list)


def build_report(names: list[str], models: list[str], scores: dict[str, np.ndarray], quality: np.ndarray,
                 output_tokens: np.ndarray, latency_s: np.ndarray, scorer: str,
                 half_width: float = PROFILE_MARGIN_POINTS, holdout: float = CALIBRATE_HOLDOUT_FRACTION,
                 seed: int = CALIBRATE_SEED) -> CalibrationReport:
    """All arrays are (prompts, stages); `scores` maps every scorer name to one."""
    quality = np.asarray(quality, float)
    p, n_st = quality.shape
    right = quality >= 0.5
    perm = np.random.default_rng(seed).permutation(p)
    n_hold = int(round(holdout * p))
    hold, train = perm[:n_hold], perm[n_hold:]
    stages = []
    for j in range(n_st):
        mean, lo, hi = quality_interval(quality[:, j])
        aucs = {k: auroc(v[:, j], right[:, j]) for k, v in scores.items()}
        b_const = b_iso = math.nan
        if n_hold >= 2 and train.size >= 2:
            s_j, y_j = scores[scorer][:, j], right[:, j].astype(float)
            pred_iso = isotonic_apply(isotonic_fit(s_j[train], y_j[train]), s_j[hold])
            b_iso = float(np.mean((pred_iso - y_j[hold]) ** 2))
            b_const = float(np.mean((y_j[train].mean() - y_j[hold]) ** 2))
        stages.append(StageReport(
            name=names[j], model=models[j], n=p, quality=mean, low=lo, high=hi, auroc=aucs,
            output_tokens_median=float(np.median(output_tokens[:, j])),
            output_tokens_p95=float(np.quantile(output_tokens[:, j], 0.95)),
            latency_mean_s=float(np.mean(latency_s[:, j])),
            reliability=reliability(scores[scorer][:, j], quality[:, j]), brier_constant=b_const,
            brier_isotonic=b_iso))
    thresholded = stages[:-1] or stages
    mean_auc = {k: np.nanmean([s.auroc[k] for s in thresholded]) if not all(
        math.isnan(s.auroc[k]) for s in thresholded) else math.nan for k in scores}
    valid = {k: v for k, v in mean_auc.items() if not math.isnan(v)}
    recommended = max(valid, key=lambda k: valid[k]) if valid else scorer
    rep = CalibrationReport(stages=stages, scorer=scorer, recommended=recommended, n_prompts=p)
    for st in stages:
        floor = CALIBRATE_QUALITY_FLOOR_FRACTION
        need = prompts_needed(min(max(st.quality, floor), 1 - floor), half_width)
        if (st.high - st.low) / 2 > half_width:
            rep.warnings.append(f"stage '{st.name}': {p} prompts give quality {st.quality:.3f} "
                                f"[{st.low:.3f}, {st.high:.3f}]; +-{half_width * 100:g} points at 95 % needs about "
                                f"{need} prompts")
    for a, b in zip(stages, stages[1:]):
        if b.quality <= a.quality:
            rep.warnings.append(f"stage '{b.name}' ({b.model}, quality {b.quality:.3f}) is not better than the "
                                f"earlier stage '{a.name}' ({a.model}, {a.quality:.3f}): escalating cannot raise "
                                "quality; reorder the stages or use a stronger model")
    if recommended != scorer:
        rep.warnings.append(f"scorer '{recommended}' separates right from wrong answers better than '{scorer}' "
                            f"(mean AUROC {valid[recommended]:.3f} vs {mean_auc[scorer]:.3f}); set quality.scorer: "
                            f"{recommended} and run again with --scorer {recommended} (answers come from the cache)")
    return rep


def report_from_run(run: CalibrationRun) -> CalibrationReport:
    """The report of a calibration run (arrays rebuilt from its answers, prompt-major, stage-minor)."""
    from cascadia_sky.calibrate.runner import finite_score

    names = [s.name for s in run.stages]
    p, n_st = len(run.prompts), len(names)
    keys = list(run.answers[0].scores) if run.answers else []

    def grid(get: Callable[[Answer], float]) -> np.ndarray:
        return np.array([get(a) for a in run.answers], dtype=float).reshape(p, n_st)

    scores = {k: grid(lambda a, k=k: finite_score(a.scores[k])) for k in keys}
    return build_report(names, [s.model for s in run.stages], scores, grid(lambda a: a.quality),
                        grid(lambda a: a.output_tokens), grid(lambda a: a.latency_s), run.scorer)


def report_table(rep: CalibrationReport) -> Table:
    """The terminal table: one row per stage."""
    from rich.table import Table

    keys = list(rep.stages[0].auroc) if rep.stages else []
    t = Table(title=f"calibration: {rep.n_prompts} prompts (AUROC: right vs wrong; * = recommended scorer)")
    for col in ("stage", "model", "quality", "95 % interval", *[f"AUROC {k}{' *' if k == rep.recommended else ''}"
                                                               for k in keys],
                "out tokens p50/p95", "max_tokens", "latency s", "isotonic Brier (const)"):
        t.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for s in rep.stages:
        iso = "-" if math.isnan(s.brier_isotonic) else f"{s.brier_isotonic:.3f} ({s.brier_constant:.3f})"
        t.add_row(s.name, s.model, f"{s.quality:.3f}", f"[{s.low:.3f}, {s.high:.3f}]",
                  *["-" if math.isnan(s.auroc[k]) else f"{s.auroc[k]:.3f}" for k in keys],
                  f"{s.output_tokens_median:g}/{s.output_tokens_p95:g}", str(s.suggested_max_tokens),
                  f"{s.latency_mean_s:.3f}", iso)
    return t


def report_png(rep: CalibrationReport, path: str | Path) -> Path:
    """Three panels: quality per stage with its interval, AUROC per scorer and stage, reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    names = [s.name for s in rep.stages]
    q = [s.quality for s in rep.stages]
    err = [[s.quality - s.low for s in rep.stages], [s.high - s.quality for s in rep.stages]]
    ax1.bar(names, q, yerr=err, capsize=6, color="#4c72b0")
    ax1.set_ylim(0, 1)
    ax1.set_title(f"quality per stage (95 % interval, {rep.n_prompts} prompts)")
    keys = list(rep.stages[0].auroc) if rep.stages else []
    width = 0.8 / max(1, len(keys))
    for i, k in enumerate(keys):
        ax2.bar(np.arange(len(names)) + i * width, [s.auroc[k] for s in rep.stages], width,
                label=k + (" (recommended)" if k == rep.recommended else ""))
    ax2.axhline(0.5, color="grey", lw=1, ls="--")
    ax2.set_xticks(np.arange(len(names)) + width * (len(keys) - 1) / 2, names)
    ax2.set_ylim(0, 1)
    ax2.set_title("AUROC of each scorer (0.5 = no signal)")
    ax2.legend(fontsize=8)
    for s in rep.stages:
        xs, ys, _ = zip(*s.reliability) if s.reliability else ((), (), ())
        ax3.plot(xs, ys, marker="o", label=s.name)
    ax3.set_xlabel(f"score ({rep.scorer}), bin mean")
    ax3.set_ylabel("quality, bin mean")
    ax3.set_ylim(-0.02, 1.02)
    ax3.set_title("reliability: score vs quality (equal-count bins)")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
