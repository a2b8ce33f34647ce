"""Workloads: a request trace (Azure LLM inference CSV format) or a rate with length distributions.

Both become a `Workload`: an arrival rate in requests per second plus samples of input and output lengths, which
is what the performance model and the planner consume. A trace also keeps its arrival times for the simulator.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np

from cascadia_sky.constants import WORKLOAD_SAMPLE_COUNT, WORKLOAD_SEED
from cascadia_sky.errors import SpecError

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class Workload:
    """What arrives at the cascade: a rate and length samples (one entry per request or per sample)."""

    rate_rps: float
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray | None = None  # seconds from the first request (traces only)
    source: str = ""

    @property
    def n(self) -> int:
        return int(self.input_tokens.shape[0])

    def summary(self) -> dict[str, float]:
        """Figures a person checks first: rate and length percentiles."""
        return {
            "rate_rps": round(self.rate_rps, 4),
            "requests": self.n,
            "input_p50": float(np.percentile(self.input_tokens, 50)),
            "input_p95": float(np.percentile(self.input_tokens, 95)),
            "output_p50": float(np.percentile(self.output_tokens, 50)),
            "output_p95": float(np.percentile(self.output_tokens, 95)),
        }


def _parse_timestamp(text: str) -> float:
    """Azure traces write 7 fractional digits; datetime accepts at most 6."""
    text = text.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return float(text)  # plain seconds are accepted too


def _columns(p: Path, rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TIMESTAMP (seconds), ContextTokens, GeneratedTokens as arrays: parsed by numpy in one go (ISO date-times,
    as the Azure traces write them), else row by row (plain seconds; a bad row's line number in the error)."""
    if not rows:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ts, ins, outs = zip(*rows)
    ts = [t.strip() for t in ts]
    try:
        if not all(len(t) >= 10 and t[4] == "-" for t in ts):   # numpy would read "2023" as a year
            raise ValueError("not ISO dates")
        stamps = np.array(ts, dtype="datetime64[ns]")
        if np.isnat(stamps).any():
            raise ValueError("empty timestamp")
        return ((stamps - stamps.min()).astype(np.int64) / 1e9, np.array(ins, dtype=np.int64),
                np.array(outs, dtype=np.int64))
    except (TypeError, ValueError, OverflowError):
        pass
    times: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    for row_no, (t, i, o) in enumerate(rows, start=2):
        try:
            times.append(_parse_timestamp(t))
            inputs.append(int(i))
            outputs.append(int(o))
        except (TypeError, ValueError):
            raise SpecError(str(p), f"line {row_no}",
                            "bad value: TIMESTAMP must be a date-time or seconds, token counts integers") from None
    return np.asarray(times, dtype=np.float64), np.asarray(inputs, dtype=np.int64), np.asarray(outputs, dtype=np.int64)


def load_trace(path: str | Path, rate_scale: float = 1.0, field: str = "workload.trace") -> Workload:
    """Read a trace CSV with columns TIMESTAMP, ContextTokens, GeneratedTokens.

    `rate_scale` compresses time: 2.0 replays the same requests twice as fast.
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError(str(p), "", f"trace file not found (set {field} to an existing CSV)")
    with p.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        missing = [c for c in TRACE_COLUMNS if c not in header]
        if missing:
            raise SpecError(str(p), "header", f"missing column(s) {', '.join(missing)}; a trace needs the columns "
                                              f"{','.join(TRACE_COLUMNS)}")
        cols = [header.index(c) for c in TRACE_COLUMNS]
        rows = [[row[i] if i < len(row) else "" for i in cols] for row in reader]
    times, inputs, outputs = _columns(p, rows)
    if len(times) < 2:
        raise SpecError(str(p), "", "a trace needs at least two requests to define a rate")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = (t[order] - t[order][0]) / rate_scale
    duration = float(t[-1])
    if duration <= 0:
        raise SpecError(str(p), "TIMESTAMP", "all requests have the same timestamp; the rate is undefined")
    rate = (len(t) - 1) / duration
    return Workload(rate_rps=rate,
                    input_tokens=np.maximum(np.asarray(inputs, dtype=np.int64)[order], 1),
                    output_tokens=np.maximum(np.asarray(outputs, dtype=np.int64)[order], 1),
                    arrival_s=t, source=str(p))


def sample_lengths(dist: str, *, value: float | None = None, mean: float | None = None, sigma: float | None = None,
                   values: Sequence[int] | None = None, n: int = WORKLOAD_SAMPLE_COUNT,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw token lengths from a named distribution (fixed, lognormal with the given mean, empirical)."""
    rng = rng or np.random.default_rng(WORKLOAD_SEED)
    if dist == "fixed":
        assert value is not None
        return np.full(n, max(int(value), 1), dtype=np.int64)
    if dist == "lognormal":
        assert mean is not None and sigma is not None
        mu = np.log(mean) - sigma**2 / 2  # so that E[X] = mean
        return np.maximum(np.rint(rng.lognormal(mu, sigma, n)), 1).astype(np.int64)
    if dist == "empirical":
        assert values
        return rng.choice(np.maximum(np.asarray(values, dtype=np.int64), 1), size=n, replace=True)
    raise ValueError(f"unknown distribution {dist!r}")
