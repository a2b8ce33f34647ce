"""Graders: turn (prompt, answer) into a quality in [0, 1]. A registry keyed by name.

- `exact`: the normalised answer (or its first line) equals the normalised reference.
- `contains`: the normalised reference appears in the normalised answer as whole words.
- `numeric`: the answer's number equals the reference within a tolerance (the prompt's `tolerance`, else
  `NUMERIC_DEFAULT_TOLERANCE` relative). The answer's number is the one after the last "answer is" / "answer:" when
  there is one, else the last number of the answer (the usual lenient reading: "17 * 23 = 391" is 391, and a
  worked answer ends with its result).
- `choice`: a multiple-choice letter: "answer is (B)", a leading "B", "B.", "(B)", or the text of exactly one choice;
  the reference is a letter or the text of a choice.
- `judge`: an LLM judge through any OpenAI-compatible endpoint; the rubric (a text file with {question},
  {reference} and {answer} placeholders) asks for a score 0..scale, normalised to [0, 1].
- `auto`: per prompt: its own `grader` field, else `choice` when it has choices, `numeric` when the reference is a
  number, `contains` otherwise.
- `module:function`: a custom grader, called as function(prompt, answer) -> float in [0, 1] (a bool is fine).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cascadia_sky.calibrate.client import chat
from cascadia_sky.calibrate.prompts import CHOICE_LETTERS, Prompt
from cascadia_sky.constants import CALIBRATE_JUDGE_MAX_TOKENS, CALIBRATE_JUDGE_SCALE
from cascadia_sky.errors import UserInputError

Grader = Callable[[Prompt, str], float]
NUMERIC_DEFAULT_TOLERANCE = 1e-6  # relative (and absolute near 0) when the prompt gives none
DEFAULT_RUBRIC = Path(__file__).with_name("judge_rubric.txt")



class GradeError(UserInputError):
    """A grader cannot grade a prompt (no reference, unknown grader, bad custom grader)."""


def normalise(text: str) -> str:
    """Lower case, punctuation (but '.' inside numbers and '-') to spaces, no articles, single spaces (one
    implementation with the router's quality watch: router/grading.py)."""
    from router.grading import normalise as _normalise

    return _normalise(text)


def _need_ref(prompt: Prompt, grader: str) -> str:
    if prompt.reference is None:
        raise GradeError(f"prompt '{prompt.id}': grader '{grader}' needs a 'reference'; add one or use --grader "
                         "judge")
    return prompt.reference


def grade_exact(prompt: Prompt, answer: str) -> float:
    ref = normalise(_need_ref(prompt, "exact"))
    first = answer.strip().splitlines()[0] if answer.strip() else ""
    return float(normalise(answer) == ref or normalise(first) == ref)


def grade_contains(prompt: Prompt, answer: str) -> float:
    ref = normalise(_need_ref(prompt, "contains"))
    return float(bool(ref) and f" {ref} " in f" {normalise(answer)} ")


def parse_number(text: str) -> float | None:
    """The first number in text ('1,234', '-3.5', '3/4'); None when there is none (router/grading.py)."""
    from router.grading import parse_number as _parse_number

    return _parse_number(text)


def answer_number(answer: str) -> float | None:
    """The answer's number: after the last 'answer is' / 'answer:', else the last number in the answer
    (router/grading.py)."""
    from router.grading import answer_number as _answer_number

    return _answer_number(answer)


def grade_numeric(prompt: Prompt, answer: str) -> float:
    ref_text = _need_ref(prompt, "numeric")
    ref = parse_number(ref_text)
    if ref is None:
        raise GradeError(f"prompt '{prompt.id}': numeric reference '{ref_text}' is not a number")
    got = answer_number(answer)
    if got is None:
        return 0.0
    tol = prompt.tolerance if prompt.tolerance is not None else NUMERIC_DEFAULT_TOLERANCE * max(1.0, abs(ref))
    return float(abs(got - ref) <= tol)


def _letter(text: str, n: int) -> str | None:
    letters = CHOICE_LETTERS[:n]
    m = re.search(rf"answer\s*(?:is|:)?\s*[\(\[]?([{letters}])\b", text, re.IGNORECASE)
    if m and m.group(1).isupper():
        return m.group(1)
    m = re.match(rf"\s*[\(\[]?([{letters}])(?:[\)\].:,\s]|$)", text)
    return m.group(1) if m else None


def grade_choice(prompt: Prompt, answer: str) -> float:
    ref = _need_ref(prompt, "choice").strip()
    n = len(prompt.choices) or 4
    if len(ref) == 1 and ref.upper() in CHOICE_LETTERS[:n]:
        want = ref.upper()
    else:
        texts = [normalise(c) for c in prompt.choices]
        if normalise(ref) not in texts:
            raise GradeError(f"prompt '{prompt.id}': choice reference '{ref}' is neither a letter nor one of the "
                             "choices")
        want = CHOICE_LETTERS[texts.index(normalise(ref))]
    got = _letter(answer, n)
    if got is None and prompt.choices:
        hits = [i for i, c in enumerate(prompt.choices) if f" {normalise(c)} " in f" {normalise(answer)} "]
        got = CHOICE_LETTERS[hits[0]] if len(hits) == 1 else None
    return float(got == want)


AGREEMENT_MAX_CONTAINED_WORDS = 8   # a longer answer inside another is a coincidence of phrasing, not agreement


def grade_agreement(answer: str, other: str) -> float:
    """Does `answer` agree with `other` (the last stage's answer to the same prompt, taken as the reference)?
    `numeric` when `other` carries a number (its answer number is the reference); else `exact` either way round,
    or the shorter normalised answer (at most AGREEMENT_MAX_CONTAINED_WORDS words) `contains`-matches the longer.
    The router's quality watch grades with a copy of this (router/grading.py; a test holds them equal)."""
    number = answer_number(other)
    if number is not None:
        ref = Prompt(id="agreement", messages=({"role": "user", "content": ""},), reference=repr(number))
        return grade_numeric(ref, answer)
    a, b = normalise(answer), normalise(other)
    if not a or not b:
        return float(a == b)
    if grade_exact(Prompt(id="agreement", messages=({"role": "user", "content": ""},), reference=other), answer):
        return 1.0
    if normalise(answer.strip().splitlines()[0]) == normalise(other.strip().splitlines()[0]):
        return 1.0
    short, long_ = (answer, other) if len(a) <= len(b) else (other, answer)
    if len(normalise(short).split()) > AGREEMENT_MAX_CONTAINED_WORDS:
        return 0.0
    return grade_contains(Prompt(id="agreement", messages=({"role": "user", "content": ""},), reference=short),
                          long_)


def auto_grader_name(prompt: Prompt) -> str:
    """The grader `auto` uses for this prompt."""
    if prompt.grader:
        return prompt.grader
    if prompt.choices:
        return "choice"
    from router.grading import NUMBER

    if prompt.reference is not None and re.fullmatch(r"\s*" + NUMBER.pattern + r"\s*", prompt.reference):
        return "numeric"
    return "contains"


@dataclass(frozen=True)
class Judge:
    """LLM-as-a-judge: the rubric filled in, sent to an OpenAI-compatible endpoint, its number / scale."""

    url: str
    model: str
    rubric: str
    scale: float = CALIBRATE_JUDGE_SCALE
    api_key: str = ""

    @classmethod
    def from_file(cls, url: str, model: str, rubric_path: str | Path | None = None, **kw: object) -> Judge:
        path = Path(rubric_path) if rubric_path else DEFAULT_RUBRIC
        try:
            rubric = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserInputError(f"judge rubric {path}: cannot read it ({exc})") from None
        for key in ("{question}", "{answer}"):
            if key not in rubric:
                raise UserInputError(f"judge rubric {path}: must contain the placeholder {key}")
        return cls(url=url, model=model, rubric=rubric, **kw)  # type: ignore[arg-type]

    def prompt_text(self, prompt: Prompt, answer: str) -> str:
        return (self.rubric.replace("{question}", prompt.question)
                .replace("{reference}", prompt.reference or "(none given)").replace("{answer}", answer)
                .replace("{scale}", f"{self.scale:g}"))

    def __call__(self, prompt: Prompt, answer: str) -> float:
        reply = chat(self.url, self.model, [{"role": "user", "content": self.prompt_text(prompt, answer)}],
                     temperature=0.0, max_tokens=CALIBRATE_JUDGE_MAX_TOKENS, api_key=self.api_key)
        return parse_judge_score(reply.text, self.scale)


def parse_judge_score(text: str, scale: float) -> float:
    """The judge's first number, clamped to 0..scale, divided by scale; 0 when it gave no number."""
    value = parse_number(text)
    if value is None or not math.isfinite(value):
        return 0.0
    return min(max(value, 0.0), scale) / scale


GRADERS: dict[str, Grader] = {
    "exact": grade_exact,
    "contains": grade_contains,
    "numeric": grade_numeric,
    "choice": grade_choice,
}
GRADER_NAMES = (*GRADERS, "judge", "auto")


def _custom(spec: str) -> Grader:
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise GradeError(f"custom grader '{spec}': cannot import it ({exc}); give module:function on the "
                         "Python path") from None
    if not callable(fn):
        raise GradeError(f"custom grader '{spec}' is not callable")
    return fn  # type: ignore[no-any-return]


def make_grader(name: str, judge: Judge | None = None) -> Grader:
    """The grading function for a --grader value (a registry name, judge, auto, or module:function)."""
    if ":" in name:
        custom = _custom(name)
        return lambda p, a: _checked(custom(p, a), name, p)
    if name == "judge":
        if judge is None:
            raise GradeError("grader 'judge' needs a judge endpoint (--judge-endpoint URL, or a cascade whose "
                             "last stage is reachable)")
        return judge
    if name == "auto":
        def auto(p: Prompt, a: str) -> float:
            sub = auto_grader_name(p)
            return make_grader(sub, judge)(p, a) if sub != "auto" else grade_contains(p, a)
        return auto
    if name not in GRADERS:
        raise GradeError(f"unknown grader '{name}'; known: {', '.join(GRADER_NAMES)} or module:function")
    return GRADERS[name]


def _checked(value: object, name: str, prompt: Prompt) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise GradeError(f"custom grader '{name}' returned {value!r} for prompt '{prompt.id}'; return a number "
                         "in [0, 1]") from None
    if not 0.0 <= v <= 1.0:
        raise GradeError(f"custom grader '{name}' returned {v} for prompt '{prompt.id}'; return a number in "
                         "[0, 1]")
    return v
