"""Quality profiles: per calibration prompt and per stage model, the serving-time score, the judged quality and the
token lengths. From a profile, any threshold vector gives the share of requests each stage handles, the lengths of
the requests that reach it, and the quality of the answers actually returned.

CSV format (one row per prompt and stage model; extra columns are ignored, leading `#` lines are comments)::

    # kind: measured
    # models: HuggingFaceTB/SmolLM2-135M-Instruct, google/gemma-3-270m
    # scorer: mean_logprob
    prompt_id,model,score,quality,input_tokens,output_tokens

Provenance: leading comment lines of the form `# key: value` (lower-case key of letters, digits, `_` and `-`) are
the profile's provenance (`read_provenance`, `QualityProfile.provenance`): `kind` (measured | synthetic), `models`,
`scorer`, `grader`, `sampling`, `date`, `prompts`, `prompt_set`, `tool`. Other comment lines are free text. A file
without such lines still loads (empty provenance); one whose free text says SYNTHETIC counts as synthetic.

`score` is the confidence of that model's answer as the router computes it live (higher = more confident, any real
number; default statistic: mean token logprob). `quality` is the judged quality on any scale consistent with the
target (0/1 correctness, a 0-10 judge, ...). Rows of models that are not in the cascade are ignored, so one profile
can serve several cascades; every prompt must have a row for every stage model.

Routing rule (the paper's): a request starts at stage 0; stage i's answer is accepted when its score is
>= thresholds[i]; the last stage always answers. Everything is stored as numpy arrays by stage so that the threshold
search can evaluate thousands of threshold vectors per second.
"""

from __future__ import annotations

import csv
import difflib
import math
import re
from collections.abc import Mapping, Sequence
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cascadia_sky.constants import CALIBRATE_QUALITY_FLOOR_FRACTION, PROFILE_CONFIDENCE_Z, PROFILE_MARGIN_POINTS
from cascadia_sky.errors import ProfileError

PROFILE_COLUMNS = ("prompt_id", "model", "score", "quality", "input_tokens", "output_tokens")
PROVENANCE_KEYS = ("kind", "models", "scorer", "grader", "sampling", "date", "prompts", "prompt_set", "tool")
_PROVENANCE_LINE = re.compile(r"^#\s*([a-z][a-z0-9_-]*)\s*:\s?(.*)$")
_BATCH_CELLS = 262_144  # evaluate_many / bootstrap: (vector x prompt) cells per chunk, sized to stay in cache


@dataclass(frozen=True, eq=False)
class RoutingOutcome:
    """What one threshold vector does to the profile's prompts (fractions are of all evaluated prompts)."""

    reach: np.ndarray  # (S,) fraction of requests that reach stage i; reach[0] == 1
    answered: np.ndarray  # (S,) fraction of requests whose returned answer comes from stage i
    quality: float  # mean quality of the returned answers
    stage_input_tokens: tuple[np.ndarray, ...]  # per stage: input lengths of the requests that reach it
    stage_output_tokens: tuple[np.ndarray, ...]  # per stage: that stage's output lengths for those requests
    n_prompts: int


@dataclass(frozen=True, eq=False)
class BatchOutcome:
    """`evaluate_many` for K threshold vectors at once: shares and quality only (no length arrays)."""

    reach: np.ndarray  # (K, S)
    answered: np.ndarray  # (K, S)
    quality: np.ndarray  # (K,)


@dataclass(frozen=True)
class ProfileProvenance:
    """Where a profile's numbers come from: its `# key: value` header lines (and its free-text comments)."""

    fields: dict[str, str] = field(default_factory=dict)
    comments: tuple[str, ...] = ()

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    @property
    def kind(self) -> str:
        """'measured', 'synthetic', or '' when the file does not say."""
        kind = self.fields.get("kind", "").strip().lower()
        if not kind and any("synthetic" in c.lower() for c in self.comments):
            return "synthetic"
        return kind

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    def header_lines(self) -> list[str]:
        """The `# key: value` lines, known keys first in their documented order."""
        order = [k for k in PROVENANCE_KEYS if k in self.fields] + sorted(set(self.fields) - set(PROVENANCE_KEYS))
        return [f"# {k}: {self.fields[k]}" for k in order] + [f"# {c}" if c else "#" for c in self.comments]

    def summary(self) -> str:
        """One line for plan output: kind, prompts, scorer, grader, models, date."""
        parts = [self.kind or "unknown provenance"]
        for key, label in (("prompts", "prompts"), ("scorer", "scorer"), ("grader", "grader"),
                           ("sampling", ""), ("date", "")):
            if self.fields.get(key):
                parts.append(f"{self.fields[key]} {label}".strip() if key == "prompts"
                             else f"{label} {self.fields[key]}".strip())
        return ", ".join(parts)


@dataclass(frozen=True)
class ProfileRow:
    """One (prompt, model) row for `write_profile`."""

    prompt_id: str
    model: str
    score: float
    quality: float
    input_tokens: int
    output_tokens: int
    extra: dict[str, str] = field(default_factory=dict)


def read_provenance(path: str | Path) -> ProfileProvenance:
    """The provenance header of a profile CSV (the leading comment lines; empty for a file without any)."""
    fields: dict[str, str] = {}
    comments: list[str] = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for raw in f:
                line = raw.strip()
                if not line:
                    continue
                if not line.startswith("#"):
                    break
                m = _PROVENANCE_LINE.match(line)
                if m:
                    fields[m.group(1)] = m.group(2).strip()
                else:
                    comments.append(line.lstrip("#").strip())
    except (OSError, UnicodeDecodeError):
        return ProfileProvenance()
    return ProfileProvenance(fields, tuple(comments))


def write_profile(path: str | Path, rows: Sequence[ProfileRow], provenance: ProfileProvenance,
                  extra_columns: Sequence[str] = ()) -> Path:
    """Write a profile CSV: the provenance header, the columns, then the rows (atomically: tmp + rename)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        for line in provenance.header_lines():
            f.write(line + "\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*PROFILE_COLUMNS, *extra_columns])
        for r in rows:
            w.writerow([r.prompt_id, r.model, f"{r.score:.6f}", f"{r.quality:g}", r.input_tokens, r.output_tokens,
                        *(r.extra.get(c, "") for c in extra_columns)])
    os.replace(tmp, path)
    return path


class QualityProfile:
    """Per-prompt, per-stage scores, qualities and lengths; arrays are read-only, shape (prompts, stages)."""

    def __init__(self, scores: np.ndarray, quality: np.ndarray, input_tokens: np.ndarray,
                 output_tokens: np.ndarray, *, prompt_ids: Sequence[str] | None = None,
                 stage_models: Sequence[str] | None = None, source: str = "") -> None:
        arrays = [np.asarray(a, dtype=float) for a in (scores, quality, input_tokens, output_tokens)]
        shape = arrays[0].shape
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"profile arrays must be 2-D (prompts, stages) and non-empty, got shape {shape}")
        if any(a.shape != shape for a in arrays):
            raise ValueError(f"profile arrays differ in shape: {[a.shape for a in arrays]}")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("profile arrays must be finite")
        p, s = shape
        # Stored by stage (S, P), C-contiguous: the routing loop reads one stage's column at a time.
        self._s, self._q, self._in, self._out = (np.ascontiguousarray(a.T) for a in arrays)
        self._in = self._in.astype(np.int64)
        self._out = self._out.astype(np.int64)
        for a in (self._s, self._q, self._in, self._out):
            a.flags.writeable = False
        self.prompt_ids: tuple[str, ...] = tuple(prompt_ids) if prompt_ids is not None else tuple(
            str(i) for i in range(p))
        self.stage_models: tuple[str, ...] = tuple(stage_models) if stage_models is not None else tuple(
            f"stage{i + 1}" for i in range(s))
        if len(self.prompt_ids) != p or len(self.stage_models) != s:
            raise ValueError("prompt_ids / stage_models do not match the array shape")
        self.source = source
        self.provenance = ProfileProvenance()  # load_profile fills it from the file's header
        self._boot_key: tuple | None = None
        self._boot_weights: np.ndarray | None = None

    # --- shape and raw data ------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return self._s.shape[1]

    @property
    def n_stages(self) -> int:
        return self._s.shape[0]

    @property
    def scores(self) -> np.ndarray:
        """(P, S) score of stage j's answer to prompt i."""
        return self._s.T

    @property
    def quality(self) -> np.ndarray:
        """(P, S) judged quality of stage j's answer to prompt i."""
        return self._q.T

    @property
    def input_tokens(self) -> np.ndarray:
        return self._in.T

    @property
    def output_tokens(self) -> np.ndarray:
        return self._out.T

    # --- routing -----------------------------------------------------------------------------
    def route(self, thresholds: Sequence[float], idx: np.ndarray | None = None) -> np.ndarray:
        """The stage whose answer is returned, per prompt (of `idx`, or all prompts)."""
        thr = self._check_thresholds(thresholds)
        s = self._s if idx is None else self._s[:, self._check_idx(idx)]
        last = self.n_stages - 1
        stage = np.full(s.shape[1], last, dtype=np.intp)
        for i in range(last - 1, -1, -1):  # earlier stages overwrite: the first accepting stage wins
            stage[s[i] >= thr[i]] = i
        return stage

    def evaluate(self, thresholds: Sequence[float], idx: np.ndarray | None = None) -> RoutingOutcome:
        """Shares per stage, returned quality and the lengths each stage sees, for one threshold vector."""
        stage = self.route(thresholds, idx)
        _s, q, tin, tout = self._subset(idx)
        m = stage.shape[0]
        n_st = self.n_stages
        counts = np.bincount(stage, minlength=n_st)
        answered = counts / m
        reach = np.cumsum(counts[::-1])[::-1] / m  # integer sums first: reach[0] is exactly 1
        quality = float(q.ravel()[stage * m + np.arange(m)].mean())
        ins, outs = [tin[0]], [tout[0]]  # every request reaches stage 0
        for i in range(1, n_st):
            mask = stage >= i
            ins.append(tin[i][mask])
            outs.append(tout[i][mask])
        return RoutingOutcome(reach=reach, answered=answered, quality=quality, stage_input_tokens=tuple(ins),
                              stage_output_tokens=tuple(outs), n_prompts=m)

    def accepted(self, thresholds: Sequence[float],
                 idx: np.ndarray | None = None) -> tuple[list[float | None], list[float | None]]:
        """Per stage, over the prompts it answers: (mean quality, mean of min(quality, last stage's quality));
        None for a stage that answers none. The second is a lower bound of the agreement with the last stage for
        0/1 grades: two right answers agree, a right and a wrong one do not (two wrong ones may or may not)."""
        stage = self.route(thresholds, idx)
        _s, q, _in, _out = self._subset(idx)
        quality: list[float | None] = []
        agreement: list[float | None] = []
        for i in range(self.n_stages):
            mask = stage == i
            if not mask.any():
                quality.append(None)
                agreement.append(None)
                continue
            quality.append(float(q[i][mask].mean()))
            agreement.append(float(np.minimum(q[i][mask], q[-1][mask]).mean()))
        return quality, agreement

    def evaluate_many(self, thresholds: np.ndarray, idx: np.ndarray | None = None) -> BatchOutcome:
        """Shares and quality for K threshold vectors (a (K, S-1) array) at once: for grids and frontiers."""
        thr = np.asarray(thresholds, dtype=float)
        n_st = self.n_stages
        if thr.ndim != 2 or thr.shape[1] != n_st - 1:
            raise ValueError(f"thresholds must have shape (K, {n_st - 1}), got {thr.shape}")
        if np.isnan(thr).any():
            raise ValueError("thresholds must not be NaN")
        s, q, _in, _out = self._subset(idx)
        m = s.shape[1]
        k_all = thr.shape[0]
        answered = np.empty((k_all, n_st))
        qsum = np.zeros(k_all)
        chunk = max(1, _BATCH_CELLS // m)
        for a in range(0, k_all, chunk):
            t = thr[a:a + chunk]
            rest = np.ones((t.shape[0], m), dtype=bool)  # not yet accepted
            for i in range(n_st):
                acc = rest if i == n_st - 1 else rest & (s[i][None, :] >= t[:, i][:, None])
                answered[a:a + chunk, i] = acc.sum(axis=1)
                qsum[a:a + chunk] += acc @ q[i]  # bool @ float: BLAS-speed masked sum
                if i < n_st - 1:
                    rest &= ~acc
        reach = np.cumsum(answered[:, ::-1], axis=1)[:, ::-1] / m  # counts are integers: exact sums
        answered /= m
        return BatchOutcome(reach=reach, answered=answered, quality=qsum / m)

    def subset(self, idx: np.ndarray) -> QualityProfile:
        """A profile of only the prompts in idx: copy once, then evaluate without per-call indexing (the search
        evaluates the training part thousands of times)."""
        _s, q, tin, tout = self._subset(idx)
        ii = np.asarray(idx)
        sub = QualityProfile(_s.T, q.T, tin.T, tout.T, prompt_ids=[self.prompt_ids[i] for i in ii],
                             stage_models=self.stage_models, source=self.source)
        sub.provenance = self.provenance
        return sub

    def z1(self, idx: np.ndarray | None = None) -> float:
        """Quality when every request goes to the last (largest) stage."""
        return float(self._stage_quality(self.n_stages - 1, idx))

    def z2(self, idx: np.ndarray | None = None) -> float:
        """Quality when every request is answered by the first (smallest) stage."""
        return float(self._stage_quality(0, idx))

    def threshold_grid(self, stage: int, n: int, idx: np.ndarray | None = None) -> np.ndarray:
        """Candidate thresholds for `stage`: -inf (accept all), n score quantiles, +inf (accept none); sorted, unique.

        Quantiles of the scores make the grid follow the data: each step moves about 1/(n+1) of the requests.
        """
        if not 0 <= stage < self.n_stages - 1:
            raise ValueError(f"stage must be in 0..{self.n_stages - 2} (the last stage has no threshold), got {stage}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        s = self._s[stage] if idx is None else self._s[stage, self._check_idx(idx)]
        levels = np.arange(1, n + 1) / (n + 1)
        qs = np.quantile(s, levels) if n else np.empty(0)
        return np.unique(np.concatenate(([-np.inf], qs, [np.inf])))

    def split(self, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Disjoint sorted (train, holdout) prompt indices: thresholds are chosen on train, quality reported on
        holdout, so the reported quality is not the optimiser's own (optimistic) estimate."""
        if not 0 <= holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
        p = self.n_prompts
        n_hold = int(round(holdout_fraction * p))
        if holdout_fraction > 0:
            n_hold = max(1, n_hold)
        if p - n_hold < 1:
            raise ValueError(f"holdout_fraction {holdout_fraction} leaves no training prompts out of {p}")
        perm = np.random.default_rng(seed).permutation(p)
        return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])

    def quality_lower_bound(self, thresholds: Sequence[float], confidence: float, n_boot: int, seed: int,
                            idx: np.ndarray | None = None) -> float:
        """The quality that the returned answers reach with probability `confidence` under bootstrap resampling of
        the prompts (percentile bootstrap: the (1 - confidence) quantile of the resampled means).

        The resampling weights depend only on (n_boot, seed, prompts) and are reused across calls, so the bound is
        a smooth function of the thresholds (common random numbers) and each call after the first is one mat-vec.
        """
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {n_boot}")
        stage = self.route(thresholds, idx)
        m = stage.shape[0]
        q = self._subset(idx)[1]
        per_prompt = q.ravel()[stage * m + np.arange(m)]
        means = self._bootstrap_weights(n_boot, seed, idx, m) @ per_prompt / m
        return float(np.quantile(means, 1.0 - confidence))

    # --- helpers -----------------------------------------------------------------------------
    def _subset(self, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(scores, quality, input, output), each (S, m), for the prompts in idx (all when None)."""
        if idx is None:
            return self._s, self._q, self._in, self._out
        ii = self._check_idx(idx)
        return self._s[:, ii], self._q[:, ii], self._in[:, ii], self._out[:, ii]

    def _stage_quality(self, stage: int, idx: np.ndarray | None) -> float:
        q = self._q[stage] if idx is None else self._q[stage, self._check_idx(idx)]
        return q.mean()

    def _check_thresholds(self, thresholds: Sequence[float]) -> np.ndarray:
        thr = np.asarray(thresholds, dtype=float).reshape(-1)
        if thr.shape[0] != self.n_stages - 1:
            raise ValueError(f"need {self.n_stages - 1} thresholds (one per stage but the last), got {thr.shape[0]}")
        if np.isnan(thr).any():
            raise ValueError("thresholds must not be NaN")
        return thr

    def _check_idx(self, idx: np.ndarray) -> np.ndarray:
        arr = np.asarray(idx)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ValueError("idx must be a non-empty 1-D array of prompt indices")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"idx must hold integer prompt indices, got dtype {arr.dtype}")
        return arr

    def _bootstrap_weights(self, n_boot: int, seed: int, idx: np.ndarray | None, m: int) -> np.ndarray:
        """(n_boot, m) multiplicity of each prompt in each resample; one cached entry."""
        key = (n_boot, seed, m, None if idx is None else np.asarray(idx).tobytes())
        if self._boot_key != key:
            rng = np.random.default_rng(seed)
            w = np.empty((n_boot, m))
            rows = max(1, _BATCH_CELLS // m)
            for a in range(0, n_boot, rows):
                b = min(n_boot, a + rows)
                draw = rng.integers(0, m, size=(b - a, m)) + (np.arange(b - a) * m)[:, None]
                w[a:b] = np.bincount(draw.ravel(), minlength=(b - a) * m).reshape(b - a, m)
            self._boot_key, self._boot_weights = key, w
        assert self._boot_weights is not None
        return self._boot_weights


# --- loading ---------------------------------------------------------------------------------

def load_profile(path: str | Path, stage_models: Sequence[str],
                 aliases: Mapping[str, str] | None = None) -> QualityProfile:
    """Read a profile CSV for a cascade whose stages serve `stage_models` (smallest first).

    A row's `model` matches a stage by the stage's model id or an alias, case-insensitively. `aliases` pairs say
    that two names denote the same model, in either direction ({profile_name: stage_model} or the reverse).
    Every error names the file, the line and column, and the fix.
    """
    path = Path(path)
    file = str(path)
    if not stage_models:
        raise ProfileError(file, "", "the cascade has no stages; list at least one stage model")
    if not path.is_file():
        raise ProfileError(file, "", "file not found; pass a quality profile CSV with columns "
                                     f"{', '.join(PROFILE_COLUMNS)} (see examples/profiles/README.md)")
    lookup = _name_lookup(stage_models, aliases or {})
    n_st = len(stage_models)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(file, "", f"cannot read the file ({exc}); save it as UTF-8 CSV") from None
    lines = text.splitlines()
    skip = 0
    while skip < len(lines) and (not lines[skip].strip() or lines[skip].lstrip().startswith("#")):
        skip += 1
    reader = csv.reader(lines[skip:])
    header = next(reader, None)
    if header is None:
        raise ProfileError(file, "", f"no header line; the first line must be: {','.join(PROFILE_COLUMNS)}")
    cols = [h.strip().lower() for h in header]
    missing = [c for c in PROFILE_COLUMNS if c not in cols]
    if missing:
        header_like = all(re.fullmatch(r"[a-z_][a-z0-9_]{0,39}", c) for c in cols) and len(cols) <= 32
        found = ", ".join(cols) if header_like else "a line that is not a CSV header (not shown)"
        raise ProfileError(file, f"line {skip + 1}", f"missing column(s) {', '.join(repr(c) for c in missing)}; "
                                                     f"the header must name {', '.join(PROFILE_COLUMNS)} "
                                                     f"(found: {found})")
    pos = {c: cols.index(c) for c in PROFILE_COLUMNS}
    prompt_index: dict[str, int] = {}
    first_line: list[int] = []
    rows: list[tuple[int, int, int, float, float, int, int]] = []  # (line, prompt, stage, s, q, in, out)
    seen: dict[tuple[int, int], int] = {}
    stage_rows = [0] * n_st
    other_models: dict[str, str] = {}  # lower-case -> spelling, for did-you-mean
    for cells in reader:
        line = skip + reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) < len(cols):
            raise ProfileError(file, f"line {line}", f"expected {len(cols)} cells like the header, found "
                                                     f"{len(cells)}; fill in every column")
        pid = cells[pos["prompt_id"]].strip()
        if not pid:
            raise ProfileError(file, f"line {line}, column 'prompt_id'", "empty prompt id; give every prompt an id")
        model = cells[pos["model"]].strip()
        score = _real(cells[pos["score"]], file, line, "score")
        qual = _real(cells[pos["quality"]], file, line, "quality")
        tin = _count(cells[pos["input_tokens"]], file, line, "input_tokens")
        tout = _count(cells[pos["output_tokens"]], file, line, "output_tokens")
        stages = lookup.get(model.lower())
        if stages is None:
            other_models.setdefault(model.lower(), model)
            continue
        if pid not in prompt_index:
            prompt_index[pid] = len(prompt_index)
            first_line.append(line)
        p = prompt_index[pid]
        for st in stages:
            if (p, st) in seen:
                raise ProfileError(file, f"line {line}", f"prompt {_shown(pid)} already has a row for stage {st + 1} "
                                                         f"model '{stage_models[st]}' (line {seen[(p, st)]}); "
                                                         "keep one row per prompt and model")
            seen[(p, st)] = line
            stage_rows[st] += 1
            rows.append((line, p, st, score, qual, tin, tout))
    for st, count in enumerate(stage_rows):
        if count == 0:
            raise ProfileError(file, "model", _no_rows_message(st, stage_models[st], other_models))
    n_p = len(prompt_index)
    arrays = np.zeros((4, n_p, n_st))
    for _line, p, st, score, qual, tin, tout in rows:
        arrays[:, p, st] = (score, qual, tin, tout)
    if len(seen) != n_p * n_st:
        pids = list(prompt_index)
        for p in range(n_p):
            for st in range(n_st):
                if (p, st) not in seen:
                    raise ProfileError(file, f"line {first_line[p]}",
                                       f"prompt {_shown(pids[p])} has no row for stage {st + 1} model "
                                       f"'{stage_models[st]}'; every prompt needs one row per stage model "
                                       "(add the row or drop the prompt)")
    prof = QualityProfile(arrays[0], arrays[1], arrays[2], arrays[3], prompt_ids=list(prompt_index),
                          stage_models=list(stage_models), source=file)
    prof.provenance = read_provenance(path)
    return prof


def _name_lookup(stage_models: Sequence[str], aliases: Mapping[str, str]) -> dict[str, list[int]]:
    """Lower-case profile name -> stage indices it stands for."""
    lookup: dict[str, list[int]] = {}
    for i, m in enumerate(stage_models):
        lookup.setdefault(m.strip().lower(), []).append(i)
    base = {k: list(v) for k, v in lookup.items()}
    for a, b in aliases.items():
        a_l, b_l = a.strip().lower(), b.strip().lower()
        for src, dst in ((b_l, a_l), (a_l, b_l)):
            for st in base.get(src, []):
                if st not in lookup.setdefault(dst, []):
                    lookup[dst].append(st)
    return lookup


def _no_rows_message(stage: int, model: str, other_models: Mapping[str, str]) -> str:
    names = sorted(n for n in other_models.values() if _plain(n))
    listing = ", ".join(f"'{n}'" for n in names[:8]) + (" ..." if len(names) > 8 else "")
    msg = f"stage {stage + 1} model '{model}' has no rows"
    msg += f" (models in the profile: {listing})" if names else " (the profile has no data rows)"
    low = model.strip().lower()
    close = difflib.get_close_matches(low, list(other_models), n=1, cutoff=0.6)
    tail = low.rsplit("/", 1)[-1]
    close = close or [k for k in other_models if k.rsplit("/", 1)[-1] == tail][:1]
    if close:
        msg += f"; did you mean {_shown(other_models[close[0]])}?"
    return msg + " Use the profile's model name in the stage, or add it to the stage's aliases"


_PLAIN_CELL = re.compile(r"[\w.+\-/]{1,64}")    # a number, a model id, a prompt id: no ':', '=', spaces, quotes


def _plain(text: str) -> bool:
    """A cell that is plainly CSV data (a name, a number), safe to repeat in an error message."""
    return bool(_PLAIN_CELL.fullmatch(text.strip()))


def _shown(cell: str) -> str:
    """A cell as an error message may quote it: plain cells in quotes, anything else only by its length (a file
    that is not a profile, e.g. one full of secrets, must not be echoed)."""
    return f"'{cell.strip()}'" if _plain(cell) else f"a value of {len(cell)} characters (not shown)"


def prompts_needed(p: float, half_width: float = PROFILE_MARGIN_POINTS, z: float = PROFILE_CONFIDENCE_Z) -> int:
    """Prompts for a 95 % interval of +-half_width around a quality p in [0, 1] (normal approximation of the
    binomial, n = z^2 p (1 - p) / half_width^2: about 683 for +-3 points at 80 %). Used by validate and calibrate."""
    return max(1, math.ceil(z * z * p * (1 - p) / (half_width * half_width)))


def profile_warnings(profile: QualityProfile, stage_names: Sequence[str]) -> list[str]:
    """What makes a profile's promise weak: too few prompts for +-3 points at 95 %, or a later stage that is not
    better than an earlier one (escalating to it buys nothing)."""
    out = []
    q = profile.quality
    means = [float(np.mean(q[:, i])) for i in range(profile.n_stages)]
    binary = bool(np.all((q >= 0) & (q <= 1)))
    if binary:
        floor = CALIBRATE_QUALITY_FLOOR_FRACTION
        need = prompts_needed(min(max(means[-1], floor), 1 - floor))
        if profile.n_prompts < need:
            out.append(f"{profile.n_prompts} prompts: the last stage's quality {means[-1]:.3f} is known only to "
                       f"about +-{_half_width(means[-1], profile.n_prompts):.3f} at 95 %; "
                       f"+-{PROFILE_MARGIN_POINTS:.2f} needs about {need} prompts (calibrate on more)")
    for j in range(1, profile.n_stages):
        for i in range(j):
            if means[j] <= means[i]:
                out.append(f"stage {stage_names[j]!r} scores {means[j]:.3f} on the profile, not above stage "
                           f"{stage_names[i]!r} ({means[i]:.3f}): requests escalated to it get no better answers; "
                           f"check the profile's model names and grades")
                break
    return out


def _half_width(q: float, n: int) -> float:
    return PROFILE_CONFIDENCE_Z * math.sqrt(max(q * (1 - q), 0.0) / max(n, 1))


def _real(cell: str, file: str, line: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise ProfileError(file, f"line {line}, column '{column}'",
                           f"not a number: {_shown(cell)}; write a decimal number like -0.25") from None
    if not math.isfinite(value):
        raise ProfileError(file, f"line {line}, column '{column}'",
                           f"must be a finite number, got {_shown(cell)}")
    return value


def _count(cell: str, file: str, line: int, column: str) -> int:
    text = cell.strip()
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            f = math.nan
        if not (math.isfinite(f) and f.is_integer()):
            raise ProfileError(file, f"line {line}, column '{column}'",
                               f"not a whole token count: {_shown(text)}; write a non-negative integer") from None
        value = int(f)
    if value < 0:
        raise ProfileError(file, f"line {line}, column '{column}'",
                           f"negative token count {value}; write a non-negative integer")
    return value
