"""The cache of finished (prompt, stage) answers, so an interrupted or extended run continues where it stopped.

One append-only JSONL file per cascade under $CASCADIA_HOME/calibrate/ (default ~/.cascadia/calibrate/), written by
one thread only, one complete line per answer, flushed at once; a torn last line (a killed process) is skipped
when read. The key is the stage *model* (not its URL), the messages sent and the sampling parameters, so the same
model behind another port, or the same prompts in a longer file, are not asked again. Judge grades are cached the
same way (they cost a model call too).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from cascadia_sky.constants import DEFAULT_HOME_DIRNAME, HOME_ENV_VAR


def calibrate_home() -> Path:
    """$CASCADIA_HOME/calibrate, else ~/.cascadia/calibrate."""
    home = os.environ.get(HOME_ENV_VAR) or str(Path.home() / DEFAULT_HOME_DIRNAME)
    return Path(home) / "calibrate"


def answer_key(model: str, prompt_key: str, sampling: str, top_logprobs: int) -> str:
    raw = json.dumps([model.lower(), prompt_key, sampling, top_logprobs])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def grade_key(judge: str, prompt_key: str, reference: str | None, answer: str) -> str:
    raw = json.dumps([judge, prompt_key, reference, answer])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class JsonlCache:
    """key -> record, backed by an append-only JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue  # a line torn by a kill: that answer is simply asked again
                if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                    self._data[rec["key"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        rec = {"key": key, **record}
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
            self._data[key] = rec


def cache_dir_for(name: str, root: Path | None = None) -> Path:
    """The cache folder of one cascade name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name) or "cascade"
    return (root or calibrate_home()) / safe
