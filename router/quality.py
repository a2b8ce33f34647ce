"""The quality watch: shadow checks of accepted answers while serving (docs/quality-watch.md).

For a `fraction` of the requests that an earlier stage answered (not the last stage, not a fallback, not a request
pinned to a stage), once the client has its whole answer, the router sends the same request in the background to
the last stage (`grader: last_stage`; the grade is `grading.agreement` of the two answers) or the accepted answer
to a judge (`grader: judge`; the grade is the judge's score / scale). What it costs the client's path: one random
number per accepted answer, and for the few sampled, creating one task after the response went out.

Bounds, all counted in /stats and /metrics (`cascadia_router_shadow_checks{stage, result}`):
- a token bucket of `max_per_s` (burst: one second's worth) and at most `max_in_flight` checks at once: a check
  beyond either is skipped (`skipped_rate`, `skipped_busy`), never queued;
- every check is a task the watch holds; `close()` (the app's shutdown) cancels them (`cancelled`);
- a failed shadow request (`failed`) touches only the pool's passive health, as any failed attempt would.

What /stats reports (`quality`), per window and stage: the number of checks made under the stage's *current*
threshold, the mean grade (the measured quality of accepted answers) with its Wilson interval at `level`, and the
promise of the plan (`StageConfig.promise`); a hot swap that moves a threshold starts that stage's count afresh
(checks made under another threshold measured another set of accepted answers). `checks` lists the recent checks
themselves (age, score, threshold, grade; no prompt text) for the re-schedule loop's threshold re-fit.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.config import QualityWatchConfig, StageConfig
from router.grading import agreement, judge_prompt, parse_judge_score, wilson_interval
from router.protocol import Wants
from router.serving import Cascade, Trace, stage_payload
from router.upstream import (
    Endpoint,
    UpstreamAuth,
    UpstreamError,
    post_json,
    upstream_auth,
)

RESULTS = ("graded", "failed", "skipped_rate", "skipped_busy", "cancelled")
_NO_WANTS = Wants(logprobs=False, top=0, usage=False, n=1)


@dataclass(frozen=True, slots=True)
class Check:
    """One graded shadow check."""

    t: float            # monotonic time it finished
    stage: str          # the stage whose accepted answer was checked
    score: float        # that answer's score
    threshold: float    # the stage's threshold when it was accepted
    grade: float        # agreement (0/1) or the judge's score in [0, 1]


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def answer_text(kind: str, data: dict | None = None, events: list[dict] | None = None) -> str:
    """The first choice's text, from a complete response or from the stream's chunk events."""
    if data is not None:
        choices = data.get("choices") or [{}]
        c = choices[0] if isinstance(choices[0], dict) else {}
        if kind == "chat":
            msg = c.get("message") if isinstance(c.get("message"), dict) else {}
            return str(msg.get("content") or "")
        return str(c.get("text") or "")
    parts = []
    for ev in events or ():
        for c in ev.get("choices") or ():
            if not isinstance(c, dict) or int(c.get("index") or 0) != 0:
                continue
            if kind == "chat":
                delta = c.get("delta") if isinstance(c.get("delta"), dict) else {}
                parts.append(str(delta.get("content") or ""))
            else:
                parts.append(str(c.get("text") or ""))
    return "".join(parts)


def question_text(kind: str, body: dict) -> str:
    """What a judge is shown as the question: the last user message, or the completion prompt."""
    if kind == "chat":
        users = [m.get("content") for m in body.get("messages") or () if isinstance(m, dict)
                 and m.get("role") == "user"]
        content = users[-1] if users else ""
        if isinstance(content, list):   # content parts: keep the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content or "")
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else str(prompt[0]) if isinstance(prompt, list) and prompt else ""


class QualityWatch:
    """Shadow checks and their results for one router app (on `app.state.watch`); the config comes from the
    runtime of each request (hot-swappable), the checks and counters live as long as the app."""

    def __init__(self, metrics: Any = None, seed: int | None = None) -> None:
        self.metrics = metrics
        self.rng = random.Random(seed)
        self.checks: deque[Check] = deque(maxlen=5000)
        self.tasks: set[asyncio.Task] = set()
        self.in_flight = 0
        self.counts: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self._bucket: TokenBucket | None = None
        self._bucket_cfg: tuple[float, float] | None = None
        self._judge: tuple[Endpoint, UpstreamAuth] | None = None
        self._closed = False

    # ---- the client's path: cheap -----------------------------------------------------------------------------
    def offer(self, rt: Any, client: aiohttp.ClientSession, kind: str, body: dict, stage: str | None,
              score: float | None, answer: str) -> None:
        """Maybe start a shadow check of `answer` (accepted at `stage` with `score`). Call it only once the client
        has the whole answer; returns at once."""
        cfg: QualityWatchConfig | None = rt.config.quality_watch
        stages = rt.config.stages
        if cfg is None or self._closed or stage is None or stage == stages[-1].name or score is None \
                or not math.isfinite(score):
            return
        if self.rng.random() >= cfg.fraction:
            return
        if self.in_flight >= cfg.max_in_flight:
            self._count(stage, "skipped_busy")
            return
        if not self._bucket_for(cfg).take():
            self._count(stage, "skipped_rate")
            return
        if self.checks.maxlen != cfg.keep:
            self.checks = deque(self.checks, maxlen=cfg.keep)
        accepted = rt.stages[stage]
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._check(rt, client, cfg, kind, body, accepted, float(score), answer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _bucket_for(self, cfg: QualityWatchConfig) -> TokenBucket:
        key = (cfg.max_per_s, max(1.0, cfg.max_per_s))
        if self._bucket is None or self._bucket_cfg != key:
            self._bucket, self._bucket_cfg = TokenBucket(*key), key
        return self._bucket

    def _count(self, stage: str, result: str) -> None:
        self.counts[result] += 1
        if self.metrics is not None:
            self.metrics.shadow.labels(stage, result).inc()

    # ---- in the background ------------------------------------------------------------------------------------
    async def _check(self, rt: Any, client: aiohttp.ClientSession, cfg: QualityWatchConfig, kind: str, body: dict,
                     accepted: StageConfig, score: float, answer: str) -> None:
        try:
            if cfg.grader == "judge":
                grade = await self._judge_grade(client, cfg, kind, body, answer)
            else:
                grade = agreement(answer, await self._last_stage_answer(rt, client, kind, body))
        except UpstreamError:
            self._count(accepted.name, "failed")
            return
        except asyncio.CancelledError:
            self._count(accepted.name, "cancelled")
            raise
        finally:
            self.in_flight -= 1
        assert accepted.threshold is not None
        self.checks.append(Check(time.monotonic(), accepted.name, score, float(accepted.threshold), grade))
        self._count(accepted.name, "graded")

    async def _last_stage_answer(self, rt: Any, client: aiohttp.ClientSession, kind: str, body: dict) -> str:
        last = rt.config.stages[-1]
        payload = stage_payload(kind, body, last, rt.scorers[last.name], _NO_WANTS, False)
        data, _score = await Cascade(rt, client)._call(last, kind, payload, Trace(model="shadow"))
        return answer_text(kind, data)

    async def _judge_grade(self, client: aiohttp.ClientSession, cfg: QualityWatchConfig, kind: str, body: dict,
                           answer: str) -> float:
        judge = cfg.judge
        assert judge is not None
        if self._judge is None or self._judge[0].url != judge.url:
            import os

            key = os.environ.get(judge.api_key_env, "").strip() if judge.api_key_env else ""
            self._judge = (Endpoint(judge.url), upstream_auth(key or None))
        ep, auth = self._judge
        text = judge_prompt(judge.rubric, question_text(kind, body), answer, judge.scale)
        data = await post_json(client, ep, "/v1/chat/completions",
                               {"model": judge.model, "messages": [{"role": "user", "content": text}],
                                "temperature": 0.0, "max_tokens": judge.max_tokens}, judge.timeout_s,
                               judge.timeout_s, auth)
        return parse_judge_score(answer_text("chat", data), judge.scale)

    async def close(self) -> None:
        """Cancel the checks in flight (the app is shutting down); new offers are ignored."""
        self._closed = True
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- what /stats and /metrics report ----------------------------------------------------------------------
    def snapshot(self, rt: Any) -> dict[str, Any] | None:
        """The `quality` part of /stats (None when the watch is off)."""
        cfg: QualityWatchConfig | None = rt.config.quality_watch
        if cfg is None:
            return None
        now = time.monotonic()
        horizon = max(cfg.windows_s)
        while self.checks and now - self.checks[0].t > horizon:
            self.checks.popleft()
        early = rt.config.stages[:-1]
        windows = {}
        for w in sorted(cfg.windows_s):
            per_stage = {}
            for st in early:
                grades = [c.grade for c in self.checks if c.stage == st.name and now - c.t <= w
                          and c.threshold == st.threshold]
                n = len(grades)
                lo, hi = wilson_interval(sum(grades), n, cfg.level)
                per_stage[st.name] = {"checks": n, "quality": sum(grades) / n if n else None,
                                      "interval": [lo, hi], "promise": st.promise, "threshold": st.threshold}
            windows[str(w)] = {"window_s": w, "stages": per_stage}
        recent = {st.name: [[round(now - c.t, 3), c.score, c.threshold, c.grade] for c in self.checks
                            if c.stage == st.name] for st in early}
        return {"grader": cfg.grader, "fraction": cfg.fraction, "level": cfg.level,
                "shadow": {**self.counts, "in_flight": self.in_flight}, "windows": windows, "checks": recent}

    def export(self, rt: Any) -> None:
        """Set the quality gauges of /metrics from a snapshot (called when /metrics is read)."""
        if self.metrics is None:
            return
        snap = self.snapshot(rt)
        if snap is None:
            return
        for w in snap["windows"].values():
            for name, s in w["stages"].items():
                labels = (name, str(w["window_s"]))
                self.metrics.shadow_checked.labels(*labels).set(s["checks"])
                for stat, value in (("mean", s["quality"]), ("lower", s["interval"][0]),
                                    ("upper", s["interval"][1]), ("promise", s["promise"])):
                    self.metrics.accepted_quality.labels(*labels, stat).set(math.nan if value is None else value)
