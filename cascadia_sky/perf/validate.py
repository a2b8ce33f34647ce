"""Predicted against measured: closed-loop vLLM benchmarks (aiconfigurator's silicon CSV format).

A row is one closed-loop benchmark: `batch_size` clients, fixed `isl`/`osl`, on `tp_size` x `pp_size` GPUs of
`system`, with measured `silicon_ttft_ms` and `silicon_tpot_ms`. Rows the model cannot describe (disaggregated
serving, attention data parallelism, MoE layouts that differ from the TP group, unknown models or GPUs, ...) are
listed with the reason instead of failing the run. An empty precision means the model's checkpoint precision.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cascadia_sky.constants import BENCHMARK_PROMPTS_PER_CLIENT
from cascadia_sky.errors import CascadiaError, PerfError

if TYPE_CHECKING:
    from cascadia_sky.perf.step import Deployment

REQUIRED_COLUMNS: tuple[str, ...] = ("model_path", "system", "precision", "isl", "osl", "batch_size", "tp_size",
                                     "pp_size", "silicon_ttft_ms", "silicon_tpot_ms")


@dataclass(frozen=True)
class RowResult:
    """One modelled row: measured and predicted milliseconds."""

    id: str
    model: str
    system: str
    precision: str
    tp: int
    pp: int
    concurrency: int
    isl: int
    osl: int
    ttft_ms: float
    ttft_pred_ms: float
    tpot_ms: float
    tpot_pred_ms: float

    @property
    def ttft_ape(self) -> float:
        return abs(self.ttft_pred_ms / self.ttft_ms - 1.0)

    @property
    def tpot_ape(self) -> float:
        return abs(self.tpot_pred_ms / self.tpot_ms - 1.0)


@dataclass(frozen=True)
class SkippedRow:
    """A row the model does not cover, and why."""

    id: str
    line: int
    reason: str


@dataclass(frozen=True)
class ValidationReport:
    """All rows of one file: modelled ones, skipped ones, and the error summary."""

    file: str
    rows: list[RowResult]
    skipped: list[SkippedRow]

    def summary(self) -> dict[str, Any]:
        """Median, p90 and mean absolute percentage error (fractions) of TTFT and TPOT."""
        out: dict[str, Any] = {"rows": len(self.rows), "skipped": len(self.skipped)}
        for key in ("ttft", "tpot"):
            ape = np.array([getattr(r, f"{key}_ape") for r in self.rows])
            out[key] = {"median_ape": _q(ape, 50), "p90_ape": _q(ape, 90),
                        "mean_ape": float(ape.mean()) if ape.size else math.nan}
        return out

    def by_group(self) -> list[dict[str, Any]]:
        """The same errors per (model, system), to see where the model is weak."""
        groups: dict[tuple[str, str], list[RowResult]] = {}
        for r in self.rows:
            groups.setdefault((r.model, r.system), []).append(r)
        return [{"model": m, "system": s, "rows": len(rs),
                 "ttft_median_ape": _q(np.array([r.ttft_ape for r in rs]), 50),
                 "tpot_median_ape": _q(np.array([r.tpot_ape for r in rs]), 50)}
                for (m, s), rs in sorted(groups.items())]

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready object: summary, rows (with their errors) and skipped rows."""
        return {"file": self.file, "summary": self.summary(), "groups": self.by_group(),
                "rows": [{**asdict(r), "ttft_ape": r.ttft_ape, "tpot_ape": r.tpot_ape} for r in self.rows],
                "skipped": [asdict(s) for s in self.skipped]}


def _q(values: np.ndarray, pct: float) -> float:
    return float(np.percentile(values, pct)) if values.size else math.nan


def _num(row: dict[str, str], column: str) -> float:
    raw = (row.get(column) or "").strip()
    if not raw:
        raise PerfError(f"column {column} is empty")
    try:
        return float(raw)
    except ValueError:
        raise PerfError(f"column {column}: {raw!r} is not a number") from None


def _opt(row: dict[str, str], column: str) -> float:
    raw = (row.get(column) or "").strip()
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


Estimator = Callable[["Deployment", int, int, int], tuple[float, float]]


def predict_row(row: dict[str, str], estimator: Estimator | None = None) -> RowResult:
    """Model one measured row; PerfError/CascadiaError says why a row cannot be modelled.

    `estimator(deployment, concurrency, isl, osl) -> (ttft_s, tpot_s)` replaces the analytical closed-loop model
    (the simulator validates itself this way against the same rows).
    """
    from cascadia_sky.catalog import get_gpu
    from cascadia_sky.models import get_model, normalize_precision
    from cascadia_sky.perf.serving import closed_loop
    from cascadia_sky.perf.step import Deployment

    mode = (row.get("mode") or "agg").strip()
    if mode != "agg":
        raise PerfError(f"mode={mode}: disaggregated prefill/decode serving is not modelled")
    tp, pp, conc = int(_num(row, "tp_size")), int(_num(row, "pp_size")), int(_num(row, "batch_size"))
    dp = _opt(row, "attention_dp_size")
    if dp > 1:
        raise PerfError(f"attention_dp_size={dp:g}: attention data parallelism is not modelled")
    model = get_model(row["model_path"].strip())
    moe_tp, moe_ep = _opt(row, "moe_tp_size"), _opt(row, "moe_ep_size")
    if model.is_moe and moe_tp > 0 and moe_ep > 0 and moe_tp * moe_ep != tp:
        raise PerfError(f"MoE layout moe_tp={moe_tp:g} x moe_ep={moe_ep:g} differs from the TP group ({tp}): "
                        f"expert layouts wider than attention TP are not modelled")
    gpu = get_gpu(row["system"].strip())
    precision = normalize_precision(row.get("precision", ""), model)
    ttft, tpot = _num(row, "silicon_ttft_ms"), _num(row, "silicon_tpot_ms")
    if ttft <= 0 or tpot <= 0:
        raise PerfError("measured TTFT/TPOT must be positive")
    isl, osl = int(_num(row, "isl")), int(_num(row, "osl"))
    dep = Deployment(model=model, gpu=gpu, tp=tp, pp=pp, precision=precision)
    if estimator is None:
        est = closed_loop(dep, conc, isl, osl, prompts_per_client=BENCHMARK_PROMPTS_PER_CLIENT)
        ttft_s, tpot_s = est.ttft_s, est.tpot_s
    else:
        ttft_s, tpot_s = estimator(dep, conc, isl, osl)
    return RowResult(id=(row.get("id") or "").strip(), model=model.name, system=gpu.name, precision=precision,
                     tp=tp, pp=pp, concurrency=conc, isl=isl, osl=osl, ttft_ms=ttft, ttft_pred_ms=ttft_s * 1e3,
                     tpot_ms=tpot, tpot_pred_ms=tpot_s * 1e3)


def validate_csv(path: str | Path, estimator: Estimator | None = None) -> ValidationReport:
    """Predict every row of a measured-benchmark CSV; unmodellable rows are skipped with their reason."""
    p = Path(path).expanduser()
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise PerfError(f"{p}: missing column(s) {', '.join(missing)}; expected the format of "
                                f"aiconfigurator's silicon CSV ({', '.join(REQUIRED_COLUMNS)})")
            raw_rows = list(reader)
    except FileNotFoundError:
        raise PerfError(f"{p}: file not found; pass a CSV of measured benchmarks") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PerfError(f"{p}: unreadable CSV ({exc})") from None
    rows: list[RowResult] = []
    skipped: list[SkippedRow] = []
    for line, row in enumerate(raw_rows, start=2):
        try:
            rows.append(predict_row(row, estimator))
        except CascadiaError as exc:
            skipped.append(SkippedRow(id=(row.get("id") or "").strip(), line=line, reason=str(exc)))
    return ValidationReport(file=str(p), rows=rows, skipped=skipped)
