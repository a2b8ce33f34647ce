"""`cascadia calibrate`: every prompt through every stage, scored by the router's own scorer code, then graded.

The work is (prompt, stage) pairs. Finished pairs go to the cache as they finish (cache.py), so Ctrl-C, a failing
endpoint or a longer prompt file later costs only the pairs not yet done. Requests run `concurrency` at a time
per stage, all stages at once. Scores are computed when the profile is written, from the cached raw logprobs, with
`router.scorers` (parse_logprobs + the registered Scorer classes): the same code, on the same tokens, as the router
at serving time.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cascadia_sky.calibrate.cache import JsonlCache, answer_key, cache_dir_for, grade_key
from cascadia_sky.calibrate.client import EndpointError, chat
from cascadia_sky.calibrate.graders import Judge, auto_grader_name, make_grader
from cascadia_sky.calibrate.prompts import Prompt, Sampling
from cascadia_sky.calibrate.stages import StageTarget, stage_targets
from cascadia_sky.constants import (CALIBRATE_CONCURRENCY, CALIBRATE_EMPTY_ANSWER_SCORE, CALIBRATE_TOP_LOGPROBS)
from cascadia_sky.errors import CascadiaError
from cascadia_sky.quality import ProfileProvenance, ProfileRow, write_profile
from cascadia_sky.spec import CascadeSpec

Progress = Callable[[int, int, str], None]   # (done, total, what)


class CalibrationError(CascadiaError):
    """A stage's endpoint failed; the message names the stage and says that the finished pairs are kept."""


class CalibrationInterrupted(CascadiaError):
    """Ctrl-C: the finished pairs are cached; the same command continues."""

    exit_code = 130


@dataclass(frozen=True)
class Answer:
    """One stage's answer to one prompt, with every registered scorer's value and its grade."""

    prompt_id: str
    stage: str
    model: str
    text: str
    scores: dict[str, float]
    input_tokens: int
    output_tokens: int
    latency_s: float
    quality: float
    grader: str


@dataclass
class CalibrationRun:
    """What calibrate did: the answers (prompt-major, stage-minor), where the profile went, timings."""

    stages: list[StageTarget]
    prompts: list[Prompt]
    answers: list[Answer]
    scorer: str
    grader: str
    sampling: Sampling
    profile_path: Path | None
    cache_path: Path
    wall_s: float
    asked: int                     # pairs sent to an endpoint in this run (the rest came from the cache)
    provenance: ProfileProvenance | None = None
    notes: list[str] = field(default_factory=list)


def scorer_values(logprobs: Any) -> dict[str, float]:
    """Every registered scorer (default arguments) on one answer's logprobs, via the router's code."""
    from router.scorers import SCORERS, parse_logprobs

    tokens = parse_logprobs(logprobs)
    return {name: cls().score(tokens) for name, cls in SCORERS.items()}


def _ask(target: StageTarget, prompt: Prompt, sampling: Sampling, top: int) -> dict[str, Any]:
    ans = chat(target.url, target.served_model_name, list(prompt.messages), temperature=sampling.temperature,
               max_tokens=sampling.max_tokens, top_logprobs=top, api_key=target.api_key)
    return {"prompt_id": prompt.id, "model": target.model, "text": ans.text, "logprobs": ans.logprobs,
            "input_tokens": ans.input_tokens, "output_tokens": ans.output_tokens, "latency_s": ans.latency_s,
            "finish_reason": ans.finish_reason}


def _run_pairs(todo: list[tuple[Prompt, StageTarget, str]], cache: JsonlCache, sampling: Sampling, top: int,
               concurrency: int, n_stages: int, progress: Progress | None, done0: int, total: int) -> int:
    """Ask every pair not cached; store each answer as it finishes. Stop at the first failing stage."""
    if not todo:
        return 0
    per_stage: dict[str, list[tuple[Prompt, StageTarget, str]]] = {}
    for item in todo:
        per_stage.setdefault(item[1].name, []).append(item)
    queues = {k: list(reversed(v)) for k, v in per_stage.items()}
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency * n_stages), thread_name_prefix="calibrate")
    running: dict[Future, tuple[Prompt, StageTarget, str]] = {}
    done = done0
    asked = 0
    failure: tuple[StageTarget, Prompt, BaseException] | None = None

    def submit_next(stage: str) -> None:
        q = queues.get(stage)
        if q and failure is None:
            item = q.pop()
            running[pool.submit(_ask, item[1], item[0], sampling, top)] = item

    try:
        for stage in queues:
            for _ in range(concurrency):
                submit_next(stage)
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                prompt, target, key = running.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    failure = failure or (target, prompt, exc)
                    continue
                cache.put(key, {"stage": target.name, **fut.result()})
                asked += 1
                done += 1
                if progress:
                    progress(done, total, f"{target.name}: {prompt.id}")
                submit_next(target.name)
    except KeyboardInterrupt:
        for fut in running:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        raise CalibrationInterrupted(f"interrupted: {done} of {total} (prompt, stage) answers are cached in "
                                     f"{cache.path}; run the same command again to continue") from None
    pool.shutdown(wait=True)
    if failure is not None:
        target, prompt, exc = failure
        raise CalibrationError(f"stage '{target.name}' ({target.model} at {target.url}, {target.origin}) failed on "
                               f"prompt '{prompt.id}': {exc}. {done} of {total} answers are cached in {cache.path}; "
                               "fix or replace the endpoint (--endpoint STAGE=URL) and run the same command again "
                               "to continue")
    return asked


def _grade_all(prompts: list[Prompt], stages: list[StageTarget], raw: dict[tuple[str, str], dict[str, Any]],
               grader_name: str, judge: Judge | None, grade_cache: JsonlCache,
               progress: Progress | None) -> dict[tuple[str, str], tuple[float, str]]:
    grader = make_grader(grader_name, judge)
    out: dict[tuple[str, str], tuple[float, str]] = {}
    total = len(prompts) * len(stages)
    n = 0
    judge_id = (f"{judge.model}@{judge.url}|{hashlib.sha256(judge.rubric.encode()).hexdigest()[:16]}"
                if judge else "")
    for p in prompts:
        sub = auto_grader_name(p) if grader_name == "auto" else grader_name
        for st in stages:
            text = raw[(p.id, st.name)]["text"]
            if sub == "judge":
                key = grade_key(judge_id, p.key(), p.reference, text)
                hit = grade_cache.get(key)
                if hit is None:
                    try:
                        q = grader(p, text)
                    except EndpointError as exc:
                        raise CalibrationError(f"the judge ({judge_id.split('|')[0]}) failed on prompt '{p.id}': "
                                               f"{exc}; answers are cached, run again to continue") from None
                    grade_cache.put(key, {"quality": q})
                else:
                    q = float(hit["quality"])
            else:
                q = grader(p, text)
            out[(p.id, st.name)] = (q, sub)
            n += 1
            if progress and sub == "judge":
                progress(n, total, f"judging {st.name}: {p.id}")
    return out


def _measure(spec: CascadeSpec, prompts: list[Prompt], keys: dict[tuple[str, str], str], cache: JsonlCache,
             grade_cache: JsonlCache, endpoints: dict[str, str], sampling: Sampling, top: int, concurrency: int,
             needed: bool, wants_judge: bool, grader: str, judge_endpoint: str | None, judge_model: str | None,
             rubric: str | None, progress: Progress | None, status: Callable[[str], None] | None):  # noqa: ANN202
    """Stages up (or not), missing answers asked, all graded: (stages, raw answers, grades, answers asked)."""
    with stage_targets(spec, endpoints, concurrency=concurrency, progress=status, needed=needed) as stages:
        todo = [(p, st, keys[(p.id, st.name)]) for p in prompts for st in stages
                if keys[(p.id, st.name)] not in cache]
        total = len(keys)
        if progress:
            progress(total - len(todo), total, "cached" if len(todo) < total else "starting")
        asked = _run_pairs(todo, cache, sampling, top, concurrency, len(stages), progress, total - len(todo), total)
        raw = {k: cache.get(v) or {} for k, v in keys.items()}
        judge = None
        if wants_judge:
            url = judge_endpoint or stages[-1].url
            judge = Judge.from_file(url, judge_model or (stages[-1].served_model_name if not judge_endpoint
                                                         else "judge"), rubric)
        grades = _grade_all(prompts, stages, raw, grader, judge, grade_cache, progress)
    return stages, raw, grades, asked


def calibrate(spec: CascadeSpec, prompts: list[Prompt], *, endpoints: dict[str, str] | None = None,
              output: str | Path | None = None, sampling: Sampling, grader: str = "auto", scorer: str | None = None,
              judge_endpoint: str | None = None, judge_model: str | None = None, rubric: str | None = None,
              concurrency: int = CALIBRATE_CONCURRENCY, cache_root: Path | None = None,
              prompt_source: str = "", progress: Progress | None = None,
              status: Callable[[str], None] | None = None) -> CalibrationRun:
    """Run, cache, grade and (unless output is "") write the profile; the report is built from the result."""
    from router.scorers import SCORERS

    scorer = scorer or spec.quality.scorer
    if scorer not in SCORERS:
        raise CalibrationError(f"unknown scorer '{scorer}'; known: {', '.join(sorted(SCORERS))}")
    if concurrency < 1:
        raise CalibrationError("--concurrency must be at least 1")
    make_grader(grader, Judge("x", "x", "{question}{answer}") if grader == "judge" else None)  # fail fast
    top = max(CALIBRATE_TOP_LOGPROBS, max(cls.top_logprobs_needed for cls in SCORERS.values()))
    t0 = time.monotonic()
    cdir = cache_dir_for(spec.name, cache_root)
    cache = JsonlCache(cdir / "answers.jsonl")
    grade_cache = JsonlCache(cdir / "grades.jsonl")
    names = spec.stage_names()
    keys = {(p.id, n): answer_key(st.model, p.key(), sampling.header(), top)
            for p in prompts for st, n in zip(spec.stages, names)}
    wants_judge = grader == "judge" or any(p.grader == "judge" for p in prompts)
    needed = wants_judge or any(k not in cache for k in keys.values())
    try:
        stages, raw, grades, asked = _measure(spec, prompts, keys, cache, grade_cache, endpoints or {}, sampling,
                                              top, concurrency, needed, wants_judge, grader, judge_endpoint,
                                              judge_model, rubric, progress, status)
    except KeyboardInterrupt:  # while engines start or the judge grades (the answer loop has its own message)
        raise CalibrationInterrupted(f"interrupted: what finished is cached in {cache.path.parent}; run the same "
                                     "command again to continue") from None
    answers = []
    for p in prompts:
        for st in stages:
            r = raw[(p.id, st.name)]
            q, sub = grades[(p.id, st.name)]
            answers.append(Answer(prompt_id=p.id, stage=st.name, model=st.model, text=r["text"],
                                  scores=scorer_values(r.get("logprobs")), input_tokens=int(r["input_tokens"]),
                                  output_tokens=int(r["output_tokens"]), latency_s=float(r["latency_s"]),
                                  quality=q, grader=sub))
    run = CalibrationRun(stages=stages, prompts=prompts, answers=answers, scorer=scorer, grader=grader,
                         sampling=sampling, profile_path=None, cache_path=cache.path, wall_s=time.monotonic() - t0,
                         asked=asked)
    graders_used = sorted({a.grader for a in answers})
    run.provenance = ProfileProvenance(fields={
        "kind": "measured",
        "models": ", ".join(st.model for st in stages),
        "scorer": scorer,
        "grader": grader + (f" ({', '.join(graders_used)})" if grader == "auto" else ""),
        "sampling": sampling.header(),
        "prompts": str(len(prompts)),
        "prompt_set": prompt_source,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": "cascadia calibrate",
    })
    if output != "":
        path = Path(output) if output else spec.resolve(spec.quality.profile)
        run.profile_path = write_profile(path, profile_rows(run), run.provenance,
                                         extra_columns=[f"score_{n}" for n in SCORERS] + ["latency_s", "grader"])
    return run


def profile_rows(run: CalibrationRun) -> list[ProfileRow]:
    """One profile row per answer; `score` is the chosen scorer, every scorer also in its own column."""
    rows = []
    for a in run.answers:
        score = finite_score(a.scores[run.scorer])
        extra = {f"score_{k}": f"{finite_score(v):.6f}" for k, v in a.scores.items()}
        extra.update(latency_s=f"{a.latency_s:.4f}", grader=a.grader)
        rows.append(ProfileRow(a.prompt_id, a.model, score, a.quality, a.input_tokens, a.output_tokens, extra))
    return rows


def finite_score(x: float) -> float:
    """An empty answer scores -inf (never accepted); the CSV stores that as a very low finite number."""
    return x if math.isfinite(x) else CALIBRATE_EMPTY_ANSWER_SCORE
