"""Calibration prompts: JSONL or CSV files of questions, each with an optional reference answer and choices.

JSONL, one object a line::

    {"id": "arith-001", "prompt": "What is 17 * 23? Answer with the number only.", "reference": "391"}
    {"id": "mc-004", "messages": [{"role": "user", "content": "..."}], "reference": "B",
     "choices": ["Paris", "Rome", "Madrid", "Berlin"], "grader": "choice"}

CSV: a header with `id` and `prompt` (and optionally `reference`, `choices` as `|`-separated text, `grader`,
`tolerance`). `prompt` is sent as one user message; `messages` (JSONL only) is sent as is. `choices` are shown to
the model as lettered options (A., B., ...) after the question unless the prompt already lists them
(`"choices_in_prompt": true`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascadia_sky.errors import UserInputError

CHOICE_LETTERS = "ABCDEFGHIJ"


class PromptFileError(UserInputError):
    """A bad prompt file: names the file, the line and the fix."""

    def __init__(self, file: str, line: int | str, message: str) -> None:
        where = f"{file}: line {line}: " if line != "" else f"{file}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Prompt:
    """One calibration question: the chat messages sent to every stage and what a grader compares with."""

    id: str
    messages: tuple[dict[str, str], ...]
    reference: str | None = None
    choices: tuple[str, ...] = ()
    grader: str | None = None          # per-prompt grader name; None: the run's grader
    tolerance: float | None = None     # numeric grader: absolute tolerance for this prompt
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def question(self) -> str:
        """The last user message: what a judge is shown as the question."""
        users = [m["content"] for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else self.messages[-1]["content"]

    def key(self) -> str:
        """Content hash of what is sent to a model (id excluded): the cache key part that stands for the prompt."""
        return hashlib.sha256(json.dumps(list(self.messages), sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters every stage is called with (recorded in the profile header)."""

    temperature: float
    max_tokens: int

    def header(self) -> str:
        return f"temperature={self.temperature:g}, max_tokens={self.max_tokens}"


def _with_choices(text: str, choices: tuple[str, ...]) -> str:
    lines = [text, ""] + [f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines)


def _build(obj: dict[str, Any], file: str, line: int) -> Prompt:
    if not isinstance(obj, dict):
        raise PromptFileError(file, line, "each line must be a JSON object with 'id' and 'prompt' or 'messages'")
    pid = str(obj.get("id", "")).strip()
    if not pid:
        raise PromptFileError(file, line, "missing 'id'; give every prompt a unique id")
    choices = obj.get("choices") or ()
    if isinstance(choices, str):
        choices = [c.strip() for c in choices.split("|") if c.strip()]
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        raise PromptFileError(file, line, "'choices' must be a list of strings")
    if len(choices) > len(CHOICE_LETTERS):
        raise PromptFileError(file, line, f"at most {len(CHOICE_LETTERS)} choices")
    choices = tuple(choices)
    in_prompt = bool(obj.get("choices_in_prompt", False))
    if obj.get("messages") is not None:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise PromptFileError(file, line, "'messages' must be a non-empty list of {role, content} strings")
        messages = [dict(role=m["role"], content=m["content"]) for m in msgs]
    elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
        messages = [{"role": "user", "content": obj["prompt"]}]
    else:
        raise PromptFileError(file, line, f"prompt '{pid}' has neither 'prompt' (text) nor 'messages'")
    if choices and not in_prompt:
        last = messages[-1]
        messages[-1] = {"role": last["role"], "content": _with_choices(last["content"], choices)}
    ref = obj.get("reference")
    tol = obj.get("tolerance")
    try:
        tol_f = None if tol in (None, "") else float(tol)
    except (TypeError, ValueError):
        raise PromptFileError(file, line, f"'tolerance' must be a number, got {tol!r}") from None
    grader = obj.get("grader") or None
    known = {"id", "prompt", "messages", "reference", "choices", "choices_in_prompt", "grader", "tolerance"}
    return Prompt(id=pid, messages=tuple(messages), reference=None if ref in (None, "") else str(ref),
                  choices=choices, grader=str(grader) if grader else None, tolerance=tol_f,
                  meta={k: v for k, v in obj.items() if k not in known})


def load_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Read a JSONL (.jsonl/.json) or CSV prompt file; ids must be unique. `limit` keeps the first N prompts."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise PromptFileError(file, "", "file not found; pass a JSONL or CSV prompt file (see examples/prompts/)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(file, "", f"cannot read it ({exc}); save it as UTF-8") from None
    prompts: list[Prompt] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if "id" not in cols or "prompt" not in cols:
            raise PromptFileError(file, 1, "the CSV header must name at least 'id' and 'prompt'")
        for row in reader:
            obj = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not any(obj.values()):
                continue
            prompts.append(_build(obj, file, reader.line_num))
    else:
        for n, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip() or raw.lstrip().startswith("//"):
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise PromptFileError(file, n, f"not valid JSON ({exc}); one JSON object per line") from None
            prompts.append(_build(obj, file, n))
    if not prompts:
        raise PromptFileError(file, "", "no prompts found")
    seen: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if p.id in seen:
            raise PromptFileError(file, "", f"prompt id '{p.id}' appears twice; ids must be unique")
        seen[p.id] = i
    return prompts[:limit] if limit else prompts
