"""The cascade: send a request to stage 1 with logprobs on, score the answer, accept or escalate; the last stage
always answers.

Non-streamed requests: each stage answers in full; score >= threshold accepts.

Streamed requests (`stream: true`), stage by stage:
- a non-final stage is streamed from the engine into a buffer while its running score is kept. With
  `early_decision` on (and n == 1), after `min_tokens` tokens the router escalates at once (closing the engine's
  stream, which stops its generation) when the running score is below threshold - reject_margin, or commits to the
  stage when it is at least threshold + accept_margin: the buffer is flushed to the client and the rest is streamed
  live. Otherwise the stage finishes, its full-answer score decides, and an accepted answer is replayed as SSE.
- the final stage (or a pinned stage) is streamed live.
- the response headers go out when the answering stage is known, so they carry the provenance; the final score of a
  live-streamed stage is sent as an SSE comment line (`: cascadia {...}`) before `data: [DONE]`.

Failures: an attempt that is refused, times out, answers 5xx or breaks before the answer is complete is retried on
another endpoint of the same stage; when all fail the request escalates; when the last stage fails the best answer
already obtained (from the latest stage that answered) is returned, marked `x-cascadia-fallback: true`. A 4xx from an
engine (a bad request) is returned to the client as is. A stream that breaks after bytes reached the client ends with
an OpenAI-style error event.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from router.config import RouterConfig, StageConfig
from router.errors import RouterError
from router.protocol import Wants
from router.scorers import Scorer, make_scorer, parse_logprobs
from router.upstream import Endpoint, StagePool, UpstreamAuth, UpstreamError, open_stream, post_json, upstream_auth

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class Runtime:
    """An immutable snapshot of the config with its pools and scorers. A hot swap installs a new one; a request
    keeps the one it started with."""

    def __init__(self, config: RouterConfig, version: int = 1, previous: Runtime | None = None) -> None:
        self.config = config
        self.version = version
        self.stages = {s.name: s for s in config.stages}
        self.pools = {s.name: StagePool.of(s.endpoints, config.health_cooldown_s,
                                           previous.pools.get(s.name) if previous else None)
                      for s in config.stages}
        self.scorers = {s.name: make_scorer(s.scorer, s.scorer_args) for s in config.stages}
        self.auth = {s.name: upstream_auth(s.upstream_key()) for s in config.stages}  # ConfigError if unset


@dataclass
class StageStep:
    """What one stage did for one request (provenance, metrics, stats)."""

    stage: str
    outcome: str  # accepted | escalated | early_escalated | committed | answered | failed | fallback
    score: float | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Trace:
    """Everything the router learned about one request."""

    model: str
    steps: list[StageStep] = field(default_factory=list)
    stage: str | None = None          # the answering stage
    score: float | None = None
    fallback: bool = False
    retries: int = 0                  # failed endpoint attempts
    failures: list[tuple[str, str]] = field(default_factory=list)  # (stage, kind) per failed attempt
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None          # set when a stream broke after bytes reached the client
    answer: list[dict] | None = None  # streamed: the chunk events of an accepted earlier stage (quality watch)

    def headers(self) -> dict[str, str]:
        """Provenance headers; stage times in seconds, path as stage=outcome(score)."""
        h = {"x-cascadia-stage": self.stage or "",
             "x-cascadia-escalations": str(sum(1 for s in self.steps if s.stage != self.stage)),
             "x-cascadia-stage-seconds": ",".join(f"{s.stage}={s.seconds:.4f}" for s in self.steps),
             "x-cascadia-path": ",".join(f"{s.stage}={s.outcome}" + (f"({s.score:.4f})" if _finite(s.score) else "")
                                         for s in self.steps),
             "x-cascadia-retries": str(self.retries)}
        if _finite(self.score):
            h["x-cascadia-score"] = f"{self.score:.4f}"
        if self.fallback:
            h["x-cascadia-fallback"] = "true"
        return h


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def stage_payload(kind: str, body: dict, stage: StageConfig, scorer: Scorer, wants: Wants, stream: bool) -> dict:
    """The client's body (unknown fields kept) with the stage's model name and the logprobs the scorer needs."""
    p = dict(body)
    p["model"] = stage.served_model_name
    top = max(wants.top, scorer.top_logprobs_needed, 1)  # llama.cpp returns no logprobs at all for 0
    if kind == "chat":
        p["logprobs"] = True
        p["top_logprobs"] = top
    else:
        p["logprobs"] = top
    p["stream"] = stream
    if stream:
        p["stream_options"] = {"include_usage": True}
    else:
        p.pop("stream_options", None)
    return p


def _trim_top(lp: dict, k: int) -> None:
    content = lp.get("content")
    if isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and isinstance(item.get("top_logprobs"), list):
                item["top_logprobs"] = item["top_logprobs"][:k]
    tops = lp.get("top_logprobs")
    if isinstance(tops, list):  # already parsed as numbers by the scorer (else the answer was refused)
        lp["top_logprobs"] = [dict(sorted(t.items(), key=lambda kv: -float(kv[1]))[:k]) if isinstance(t, dict)
                              else t for t in tops]


def strip_response(obj: dict, wants: Wants, model: str) -> dict:
    """Remove what the router added: logprobs the client did not ask for, extra top alternatives, usage."""
    obj["model"] = model
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict) or "logprobs" not in choice:
            continue
        if not wants.logprobs:
            choice["logprobs"] = None
        elif isinstance(choice["logprobs"], dict):
            _trim_top(choice["logprobs"], wants.top)
    return obj


def score_choices(scorer: Scorer, data: dict) -> float:
    """Score of a complete response: the minimum over its choices (see scorers.py)."""
    scores = []
    for choice in data.get("choices") or ():
        s = scorer.fresh()
        s.update(parse_logprobs(choice.get("logprobs") if isinstance(choice, dict) else None))
        scores.append(s.value)
    return min(scores) if scores else -math.inf


def _scored(scorer: Scorer, data: dict) -> float:
    try:
        return score_choices(scorer, data)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise UpstreamError("protocol", f"engine answered with malformed logprobs ({type(exc).__name__})") from None


def _usage(trace: Trace, data: dict, first_stage: bool) -> None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        if first_stage and isinstance(usage.get("prompt_tokens"), int):
            trace.input_tokens = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            trace.output_tokens = usage["completion_tokens"]


def _no_answer(trace: Trace) -> RouterError:
    kinds = {k for _, k in trace.failures}
    detail = "; ".join(f"{s.stage}: {s.error}" for s in trace.steps if s.error)
    if kinds == {"timeout"}:
        return RouterError(504, f"no stage answered in time ({detail})", "upstream_error", "upstream_timeout")
    return RouterError(502, f"no stage could answer ({detail})", "upstream_error", "upstream_unavailable")


def _client_error(e: UpstreamError) -> RouterError:
    return RouterError(e.status or 400, f"the engine rejected the request: {e}", "invalid_request_error",
                       "upstream_rejected")


@dataclass
class _Attempt:
    """One streamed attempt at one endpoint: running scores (one per choice), the buffered events, and whether the
    client is already receiving this attempt live."""

    scorers: dict[int, Scorer] = field(default_factory=dict)
    buffer: list[dict] = field(default_factory=list)
    live: bool = False

    @property
    def score(self) -> float:
        return min((s.value for s in self.scorers.values()), default=-math.inf)


@dataclass
class _StageRun:
    """One stage's part in a streamed request: `_stream_stage` fills it in, the driver loop reads it."""

    stage: StageConfig
    final: bool
    step: StageStep = None  # type: ignore[assignment]  # set in __post_init__
    t0: float = field(default_factory=time.perf_counter)
    finished: bool = False                          # the client has its whole answer (or an error event): stop
    answer: tuple[list[dict], float] | None = None  # a complete answer that was not accepted (fallback material)
    rejected: UpstreamError | None = None           # the engine refused the request itself (4xx)

    def __post_init__(self) -> None:
        self.step = StageStep(self.stage.name, "failed")


class Cascade:
    """Runs requests through the stages of one Runtime with one shared HTTP client."""

    def __init__(self, rt: Runtime, client: aiohttp.ClientSession) -> None:
        self.rt = rt
        self.client = client

    def stages_for(self, pinned: str | None) -> list[StageConfig]:
        return [self.rt.stages[pinned]] if pinned else list(self.rt.config.stages)

    def _fail(self, trace: Trace, stage: StageConfig, pool: StagePool, ep: Endpoint, e: UpstreamError) -> None:
        if e.retryable:
            pool.failed(ep)
        trace.retries += 1
        trace.failures.append((stage.name, e.kind))

    # ---- non-streamed -----------------------------------------------------------------------------------------
    async def _call(self, stage: StageConfig, kind: str, payload: dict, trace: Trace) -> tuple[dict, float]:
        """One stage's complete answer and its score, endpoint after endpoint; an answer that cannot be scored
        (malformed logprobs) is that endpoint failing, as a 5xx would be."""
        pool = self.rt.pools[stage.name]
        auth: UpstreamAuth = self.rt.auth[stage.name]
        tried: set[Endpoint] = set()
        last: UpstreamError | None = None
        while (ep := pool.pick(tried)) is not None:
            tried.add(ep)
            try:
                data = await post_json(self.client, ep, PATHS[kind], payload, stage.timeout_s,
                                       self.rt.config.connect_timeout_s, auth)
                score = _scored(self.rt.scorers[stage.name], data)
            except UpstreamError as e:
                self._fail(trace, stage, pool, ep, e)
                if not e.retryable:
                    raise
                last = e
                continue
            pool.succeeded(ep)
            return data, score
        assert last is not None
        raise last

    async def complete(self, kind: str, body: dict, wants: Wants, trace: Trace, pinned: str | None) -> dict:
        """Run the cascade for a non-streamed request; return the client's response body."""
        stages = self.stages_for(pinned)
        best: tuple[StageConfig, dict, float] | None = None
        for i, stage in enumerate(stages):
            final = i == len(stages) - 1
            scorer = self.rt.scorers[stage.name]
            t0 = time.perf_counter()
            try:
                data, score = await self._call(stage, kind, stage_payload(kind, body, stage, scorer, wants, False),
                                               trace)
            except UpstreamError as e:
                trace.steps.append(StageStep(stage.name, "failed", None, time.perf_counter() - t0, str(e)))
                if not e.retryable and best is None:
                    raise _client_error(e) from None
                continue
            _usage(trace, data, first_stage=trace.input_tokens is None)
            accepted = final or score >= (stage.threshold if stage.threshold is not None else -math.inf)
            trace.steps.append(StageStep(stage.name, ("answered" if final else "accepted") if accepted
                                         else "escalated", score, time.perf_counter() - t0))
            if accepted:
                trace.stage, trace.score = stage.name, score
                return strip_response(data, wants, trace.model)
            best = (stage, data, score)
        if best is None:
            raise _no_answer(trace)
        stage, data, score = best
        trace.stage, trace.score, trace.fallback = stage.name, score, True
        _usage(trace, data, first_stage=False)
        return strip_response(data, wants, trace.model)

    # ---- streamed ---------------------------------------------------------------------------------------------
    async def stream(self, kind: str, body: dict, wants: Wants, trace: Trace,
                     pinned: str | None) -> AsyncIterator[bytes | Trace]:
        """Yield the Trace once the answering stage is known (headers go out then), then SSE bytes.

        The driver loop: one `_stream_stage` per stage until one finishes the client's answer; then the best
        answer already obtained (fallback). Raises RouterError before the first yield when nothing can answer.
        """
        stages = self.stages_for(pinned)
        best: tuple[StageConfig, list[dict], float] | None = None
        for i, stage in enumerate(stages):
            run = _StageRun(stage, final=i == len(stages) - 1)
            async for item in self._stream_stage(run, kind, body, wants, trace):
                yield item
            if run.finished:
                return
            if run.rejected is not None and best is None:
                raise _client_error(run.rejected)
            run.step.seconds = time.perf_counter() - run.t0
            if run.step.outcome == "failed" and run.step.error is None:
                run.step.error = "no endpoint could answer"
            trace.steps.append(run.step)
            if run.answer is not None:
                best = (stage, *run.answer)
        if best is None:
            raise _no_answer(trace)
        stage, buffer, score = best
        trace.stage, trace.score, trace.fallback = stage.name, score, True
        yield trace
        yield _replay(buffer, wants, trace)

    async def _stream_stage(self, run: _StageRun, kind: str, body: dict, wants: Wants,
                            trace: Trace) -> AsyncIterator[bytes | Trace]:
        """One stage, endpoint after endpoint until an attempt completes; the outcome is left on `run`."""
        stage = run.stage
        pool = self.rt.pools[stage.name]
        proto = self.rt.scorers[stage.name]
        payload = stage_payload(kind, body, stage, proto, wants, True)
        tried: set[Endpoint] = set()
        while (ep := pool.pick(tried)) is not None:
            tried.add(ep)
            att = _Attempt()
            try:
                async with open_stream(self.client, ep, PATHS[kind], payload, stage.timeout_s,
                                       self.rt.config.connect_timeout_s, self.rt.auth[stage.name]) as events:
                    async for item in self._relay(events, run, att, proto, wants, trace):
                        yield item
            except UpstreamError as e:
                self._fail(trace, stage, pool, ep, e)
                if att.live:  # bytes already reached the client: end the stream with an error event
                    run.step.error = trace.error = str(e)
                    run.step.outcome = "failed"
                    run.step.seconds = time.perf_counter() - run.t0
                    run.finished = True
                    yield _error_event(e)
                    return
                run.step = StageStep(stage.name, "failed", error=str(e))
                if not e.retryable:
                    run.rejected = e
                    return
                continue
            pool.succeeded(ep)
            score = att.score
            if att.live:  # finished streaming live (final stage, pinned stage or committed)
                run.step.score = trace.score = score
                run.step.seconds = time.perf_counter() - run.t0
                run.finished = True
                yield _summary(trace)
                return
            if run.step.outcome == "early_escalated":
                return
            if score >= (stage.threshold if stage.threshold is not None else -math.inf):
                run.step = StageStep(stage.name, "accepted", score, time.perf_counter() - run.t0)
                trace.steps.append(run.step)
                trace.stage, trace.score = stage.name, score
                trace.answer = att.buffer
                run.finished = True
                yield trace
                yield _replay(att.buffer, wants, trace)
                return
            run.step = StageStep(stage.name, "escalated", score)
            run.answer = (att.buffer, score)
            return

    async def _relay(self, events: AsyncIterator[dict], run: _StageRun, att: _Attempt, proto: Scorer,
                     wants: Wants, trace: Trace) -> AsyncIterator[bytes | Trace]:
        """Read one attempt's events: score them, buffer them, and once the stage is the answer (final stage, or
        an early commit) send the headers and stream live. Returns early on an early escalation."""
        stage = run.stage
        async for ev in events:
            try:
                self._observe(ev, att.scorers, proto, trace)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:  # the engine's fault, not ours
                raise UpstreamError("protocol", f"engine sent malformed logprobs ({type(exc).__name__})") from None
            if att.live:
                if trace.answer is not None:   # a committed earlier stage: its text, for the quality watch
                    trace.answer.append(ev)
                if (chunk := _sse(ev, wants, trace.model)) is not None:
                    yield chunk
                continue
            att.buffer.append(ev)
            decision = "commit" if run.final else self._early(stage, att, wants)
            if decision == "reject":
                run.step = StageStep(stage.name, "early_escalated", att.scorers[0].value)
                return
            if decision == "commit":
                att.live = True
                run.step = StageStep(stage.name, "answered" if run.final else "committed")
                trace.stage = stage.name
                trace.steps.append(run.step)
                run.step.seconds = time.perf_counter() - run.t0
                yield trace
                yield b"".join(c for ev in att.buffer if (c := _sse(ev, wants, trace.model)))
                if not run.final:
                    trace.answer = att.buffer
                att.buffer = []

    def _early(self, stage: StageConfig, att: _Attempt, wants: Wants) -> str | None:
        """The early decision on a non-final stage's running score: "reject", "commit" or None (read on)."""
        early = self.rt.config.early_decision
        if early is None or wants.n != 1 or 0 not in att.scorers or att.scorers[0].count < early.min_tokens:
            return None
        running = att.scorers[0].value
        assert stage.threshold is not None
        if early.reject_margin is not None and running < stage.threshold - early.reject_margin:
            return "reject"
        if early.accept_margin is not None and running >= stage.threshold + early.accept_margin:
            return "commit"
        return None

    @staticmethod
    def _observe(ev: dict, scorers: dict[int, Scorer], proto: Scorer, trace: Trace) -> None:
        """Fold one chunk's logprobs into the running scores (one per choice index) and note usage."""
        for choice in ev.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            idx = int(choice.get("index") or 0)
            tokens = parse_logprobs(choice.get("logprobs"))
            if idx not in scorers:
                scorers[idx] = proto.fresh()
            scorers[idx].update(tokens)
        usage = ev.get("usage")
        if isinstance(usage, dict):
            if trace.input_tokens is None and isinstance(usage.get("prompt_tokens"), int):
                trace.input_tokens = usage["prompt_tokens"]
            if isinstance(usage.get("completion_tokens"), int):
                trace.output_tokens = usage["completion_tokens"]


def _sse(ev: dict, wants: Wants, model: str) -> bytes | None:
    if "usage" in ev and not wants.usage:
        if not ev.get("choices"):
            return None
        ev = dict(ev)
        del ev["usage"]
    return b"data: " + json.dumps(strip_response(ev, wants, model)).encode() + b"\n\n"


def _summary(trace: Trace) -> bytes:
    info = {"stage": trace.stage, "score": trace.score if _finite(trace.score) else None,
            "escalations": int(trace.headers()["x-cascadia-escalations"]), "fallback": trace.fallback}
    return b": cascadia " + json.dumps(info).encode() + b"\n\ndata: [DONE]\n\n"


def _replay(buffer: list[dict], wants: Wants, trace: Trace) -> bytes:
    return b"".join(c for ev in buffer if (c := _sse(ev, wants, trace.model))) + _summary(trace)


def _error_event(e: UpstreamError) -> bytes:
    err = RouterError(502, f"the engine failed mid-stream: {e}", "upstream_error", "upstream_stream_broken")
    return b"data: " + err.json_bytes() + b"\n\ndata: [DONE]\n\n"
