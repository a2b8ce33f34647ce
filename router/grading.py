"""Grading inside the router, for the quality watch (router/quality.py): plain functions, no web framework.

The router imports nothing of cascadia_sky, so the text pieces live here and the calibration graders
(`cascadia_sky/calibrate/graders.py`) call them: `normalise`, `parse_number`, `answer_number`, `NUMBER`. `agreement`
restates calibrate's `grade_agreement` on these pieces; `tests/test_quality_watch.py` checks that both give the same
grade on a corpus of answers (real calibration answers included):

- `agreement(answer, reference)`: does an earlier stage's answer agree with the last stage's answer to the same
  request? `calibrate.graders.grade_agreement`: numeric when the reference answer carries a number (the same
  lenient reading as the numeric grader), else the normalised texts are equal, or the shorter one (at most
  `AGREEMENT_MAX_CONTAINED_WORDS` words) appears in the other as whole words.
- `parse_judge_score(text, scale)`: a judge's first number, clamped to 0..scale, divided by scale.
- `judge_prompt(rubric, question, answer, scale)`: the rubric with its placeholders filled in.
"""

from __future__ import annotations

import math
import re
import string
from statistics import NormalDist

AGREEMENT_NUMERIC_TOLERANCE = 1e-6   # relative (absolute near 0), as calibrate's NUMERIC_DEFAULT_TOLERANCE
AGREEMENT_MAX_CONTAINED_WORDS = 8    # a longer answer inside another is a coincidence of phrasing, not agreement

# The calibration judge's rubric (cascadia_sky/calibrate/judge_rubric.txt), word for word: a test holds them equal.
DEFAULT_JUDGE_RUBRIC = """You are grading an answer to a question. Compare the answer with the reference answer.
Give a score from 0 to {scale}: {scale} if the answer is correct and states the reference answer, 0 if it is wrong
or does not answer the question, values between for partly correct answers.

Question: {question}
Reference answer: {reference}
Answer to grade: {answer}

Reply with the score only, a single number.
Score:
"""
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in ".-"})
NUMBER = re.compile(  # a number in text; calibrate's graders read numbers with it too
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_ANSWER_MARK = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lower case, punctuation (but '.' inside numbers and '-') to spaces, no articles, single spaces."""
    t = text.lower().translate(_PUNCT)
    t = re.sub(r"\.(?!\d)", " ", t)
    return " ".join(w for w in t.split() if w not in ("a", "an", "the"))


def parse_number(text: str) -> float | None:
    """The first number in text ('1,234', '-3.5', '3/4'); None when there is none."""
    m = NUMBER.search(text)
    if not m:
        return None
    tok = m.group(0).replace(",", "")
    if "/" in tok:
        num, den = tok.split("/")
        return float(num) / float(den) if float(den) else None
    return float(tok)


def answer_number(answer: str) -> float | None:
    """The answer's number: after the last 'answer is' / 'answer:', else the last number in the answer."""
    marks = list(_ANSWER_MARK.finditer(answer))
    if marks:
        value = parse_number(answer[marks[-1].end():])
        if value is not None:
            return value
    numbers = list(NUMBER.finditer(answer))
    return parse_number(numbers[-1].group(0)) if numbers else None


def agreement(answer: str, reference: str) -> float:
    """1.0 when `answer` agrees with `reference` (the last stage's answer), else 0.0 (see the module docstring)."""
    ref_number = answer_number(reference)
    if ref_number is not None:
        got = answer_number(answer)
        return float(got is not None and abs(got - ref_number)
                     <= AGREEMENT_NUMERIC_TOLERANCE * max(1.0, abs(ref_number)))
    a, b = normalise(answer), normalise(reference)
    if not a or not b:
        return float(a == b)
    first_a = normalise(answer.strip().splitlines()[0])
    first_b = normalise(reference.strip().splitlines()[0])
    if a == b or first_a == first_b:
        return 1.0
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return float(len(short.split()) <= AGREEMENT_MAX_CONTAINED_WORDS and f" {short} " in f" {long_} ")


def parse_judge_score(text: str, scale: float) -> float:
    """The judge's first number, clamped to 0..scale, divided by scale; 0 when it gave no number."""
    value = parse_number(text)
    if value is None or not math.isfinite(value):
        return 0.0
    return min(max(value, 0.0), scale) / scale


def judge_prompt(rubric: str, question: str, answer: str, scale: float) -> str:
    """The rubric with {question}, {reference} (none at serving time), {answer} and {scale} filled in."""
    return (rubric.replace("{question}", question).replace("{reference}", "(none given)")
            .replace("{answer}", answer).replace("{scale}", f"{scale:g}"))


def wilson_interval(successes: float, n: int, level: float) -> tuple[float, float]:
    """Two-sided Wilson score interval of a proportion at `level` (e.g. 0.9), as calibrate's report computes it
    for 0/1 grades; (0, 1) when n is 0. Grades in [0, 1] that are not 0/1 (a judge's) enter as their sum."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = min(1.0, max(0.0, successes / n))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
