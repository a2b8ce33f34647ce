"""Confidence scorers: one number per answer from the stage's own token logprobs; accept when score >= threshold.

Exact definitions (the calibration profile must compute the same statistic over the same tokens). Let the answer be
the generated tokens t = 1..T of one choice (prompt tokens never count), lp_t the logprob of the token actually
generated, and top_t the logprobs of the alternatives the engine returned for position t, sorted descending.

- `mean_logprob`: (1/T) * sum_t lp_t. The default; "score" in the quality profile CSV is this.
- `quantile_logprob` (arg `q`, default 0.1): the q-quantile of {lp_t} with linear interpolation between order
  statistics (numpy.quantile's default "linear" method): sorted ascending x_0..x_{T-1}, h = q*(T-1),
  score = x_floor(h) + (h - floor(h)) * (x_floor(h)+1 - x_floor(h)). q=0 is the minimum.
- `margin`: (1/T) * sum_t (top_t[0] - top_t[1]), the mean gap between the two most likely tokens (needs 2 top
  logprobs; a position with fewer alternatives counts as margin 0, i.e. not confident).
- An empty answer (T = 0) scores -inf for every scorer: a non-final stage never accepts an empty answer.
- With n > 1 choices, the response's score is the minimum over its choices.

Scores are computed on the logprobs the engine reports (its sampling temperature applied or not, as the engine does).
Both wire layouts are read: OpenAI chat / llama.cpp `{"content": [{"logprob", "top_logprobs": [{"logprob"}]}]}` and
the legacy completions layout `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}` (vLLM).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(slots=True, frozen=True)
class TokenLogprob:
    """One generated token: its logprob and the alternatives' logprobs (descending)."""

    logprob: float
    top: tuple[float, ...] = ()


def parse_logprobs(logprobs: Any) -> list[TokenLogprob]:
    """Read a choice's `logprobs` object in either layout; tolerate null and missing parts."""
    if not isinstance(logprobs, dict):
        return []
    content = logprobs.get("content")
    if isinstance(content, list):
        out = []
        for item in content:
            if not isinstance(item, dict) or item.get("logprob") is None:
                continue
            alts = item.get("top_logprobs") or ()
            top = tuple(sorted((float(a["logprob"]) for a in alts if isinstance(a, dict)
                               and a.get("logprob") is not None), reverse=True))
            out.append(TokenLogprob(float(item["logprob"]), top))
        return out
    token_lps = logprobs.get("token_logprobs")
    if isinstance(token_lps, list):
        tops = logprobs.get("top_logprobs") or []
        out = []
        for i, lp in enumerate(token_lps):
            if lp is None:
                continue
            alts = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
            out.append(TokenLogprob(float(lp), tuple(sorted((float(v) for v in alts.values()), reverse=True))))
        return out
    return []


class Scorer:
    """Base: a scorer folds tokens into a running state; `value` is the score of the tokens seen so far."""

    name: ClassVar[str] = ""
    top_logprobs_needed: ClassVar[int] = 0  # alternatives per position the scorer reads

    def __init__(self) -> None:
        self.count = 0

    def update(self, tokens: Iterable[TokenLogprob]) -> None:
        raise NotImplementedError

    @property
    def value(self) -> float:
        raise NotImplementedError

    def fresh(self) -> Scorer:
        """A new scorer with the same arguments and no tokens (one per choice and attempt)."""
        return type(self)(**self.args())

    def args(self) -> dict[str, float]:
        return {}

    def score(self, tokens: Sequence[TokenLogprob]) -> float:
        """Score a complete answer (a convenience for calibration code)."""
        s = self.fresh()
        s.update(tokens)
        return s.value


class MeanLogprob(Scorer):
    name = "mean_logprob"

    def __init__(self) -> None:
        super().__init__()
        self._sum = 0.0

    def update(self, tokens: Iterable[TokenLogprob]) -> None:
        for t in tokens:
            self._sum += t.logprob
            self.count += 1

    @property
    def value(self) -> float:
        return self._sum / self.count if self.count else -math.inf


class QuantileLogprob(Scorer):
    name = "quantile_logprob"

    def __init__(self, q: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile_logprob: q must be in [0, 1], got {q}")
        self.q = q
        self._sorted: list[float] = []

    def args(self) -> dict[str, float]:
        return {"q": self.q}

    def update(self, tokens: Iterable[TokenLogprob]) -> None:
        for t in tokens:
            bisect.insort(self._sorted, t.logprob)
            self.count += 1

    @property
    def value(self) -> float:
        return quantile_sorted(self._sorted, self.q) if self._sorted else -math.inf


class Margin(Scorer):
    name = "margin"
    top_logprobs_needed = 2

    def __init__(self) -> None:
        super().__init__()
        self._sum = 0.0

    def update(self, tokens: Iterable[TokenLogprob]) -> None:
        for t in tokens:
            self._sum += (t.top[0] - t.top[1]) if len(t.top) >= 2 else 0.0
            self.count += 1

    @property
    def value(self) -> float:
        return self._sum / self.count if self.count else -math.inf


SCORERS: dict[str, type[Scorer]] = {cls.name: cls for cls in (MeanLogprob, QuantileLogprob, Margin)}


def make_scorer(name: str, args: dict[str, float] | None = None) -> Scorer:
    """Build a scorer from the registry; ValueError names the known scorers when the name is unknown."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known: {', '.join(sorted(SCORERS))}")
    try:
        return SCORERS[name](**(args or {}))
    except TypeError as exc:
        raise ValueError(f"scorer {name!r}: bad arguments {args}: {exc}") from exc


def quantile_sorted(xs: Sequence[float], q: float) -> float:
    """q-quantile of an ascending sequence, linear interpolation (numpy's default); NaN when empty."""
    if not xs:
        return math.nan
    h = q * (len(xs) - 1)
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])
