"""The quality watch for real: the router in front of two llama.cpp engines on 127.0.0.1, every accepted answer
shadow-checked against the last stage. The bundled gemma-3-270m is a base model that echoes the question (it agrees
with nothing), so both stages serve SmolLM2-135M-Instruct and clients sample (temperature > 0): the grade is then
self-consistency, which is high where the model is sure (the shipped prompt set's `fact-*` capitals) and low where
it guesses (`arith-*`, `unit-*`). Easy prompts first (temperature 0.3): the promise holds. Then hard ones, sampled
hotter (temperature 1.0). Measured with these engines: accepted easy answers agreed 0.54-0.65 of the time at 0.5
(too near the promise for 24 checks to judge it held every time) and 0.71 at 0.3; accepted hard ones 0.38 at 0.5
(mixed with the easy checks of the same threshold, too near to be judged within a bounded number of requests) and
0.11-0.32 at 1.0. The drop is detected, the re-fit raises the threshold (hot swap through the real admin API), and
the quality of the returned answers, measured the same way, is back at the target; no client request fails, and
the router's own time per request (client latency minus the stage's time) is the same with the watch on as off."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import httpx
import pytest

from cascadia_sky.calibrate.prompts import load_prompts
from cascadia_sky.engines import start_bundled
from cascadia_sky.reschedule.quality import Promise, quality_verdict, refit_thresholds
from cascadia_sky.spec import QualityWatchSpec
from router import Secrets, create_app, parse_config
from tests.launch.helpers import REPO
from tests.router.helpers import engine_pair, serve_app

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(__import__("importlib").util.find_spec("xllamacpp") is None,
                                 reason="needs the llama.cpp engines (xllamacpp)")]

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMISE = 0.5        # agreement of accepted answers the plan promised (easy traffic measured 0.61-0.9, hard ~0.15)
THRESHOLD = -0.7     # accepts nearly every easy answer and most hard ones
MIN_CHECKS = 16      # the documented number of checks within which a drop is detected (quality.watch.min_checks)
SETTINGS = QualityWatchSpec(enabled=True, windows_s=[3600], min_checks=MIN_CHECKS, margin=0.05, level=0.9)
ADMIN = "admin-key-for-this-test"
EASY_TEMPERATURE = 0.3
HARD_TEMPERATURE = 1.0
# hard prompts asked at most before the drop must have been judged (the 136 hard prompts, cycled). The verdict window
# (an hour) keeps the easy checks, so the mean falls toward the hard traffic's quality as hard checks add up: in runs,
# judged after 10-60 hard prompts; the cap leaves room for a hard quality near 0.38 (temperature 0.5's)
MAX_HARD = 260


def _prompts(kinds: tuple[str, ...]) -> list[list[dict]]:
    return [list(p.messages) for p in load_prompts(REPO / "examples" / "prompts" / "basic.jsonl")
            if p.id.split("-")[0] in kinds]


def _config(small: str, large: str, watch: bool) -> dict:
    doc = {"name": "cascade", "early_decision": None,
           "stages": [{"name": "small", "served_model_name": "small", "endpoints": [small], "threshold": THRESHOLD,
                       "promise": PROMISE, "timeout_s": 120},
                      {"name": "large", "served_model_name": "large", "endpoints": [large], "timeout_s": 120}]}
    if watch:
        doc["quality_watch"] = {"fraction": 1.0, "max_per_s": 100, "max_in_flight": 1, "windows_s": [3600],
                                "level": 0.9}
    return doc


class Client:
    """One request at a time; records failures, the answering stage and the router's own time per request."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=300)
        self.failed: list[str] = []
        self.overhead_s: list[float] = []
        self.stages: list[str] = []

    def ask(self, messages: list[dict], temperature: float = EASY_TEMPERATURE) -> None:
        t0 = time.perf_counter()
        r = self.http.post("/v1/chat/completions", json={"model": "cascade", "messages": messages,
                                                         "max_tokens": 10, "temperature": temperature})
        total = time.perf_counter() - t0
        if r.status_code != 200:
            self.failed.append(f"{r.status_code} {r.text[:200]}")
            return
        stage_s = sum(float(x.split("=")[1]) for x in r.headers["x-cascadia-stage-seconds"].split(","))
        self.overhead_s.append(total - stage_s)
        self.stages.append(r.headers["x-cascadia-stage"])

    def stats(self) -> dict:
        return self.http.get("/stats").json()


def _settle(app) -> None:
    deadline = time.monotonic() + 300
    while app.state.watch.in_flight and time.monotonic() < deadline:
        time.sleep(0.1)


def test_easy_then_hard_prompts_detected_repaired(tmp_path: Path) -> None:
    easy = _prompts(("fact",))
    hard = _prompts(("arith", "unit"))
    with engine_pair(lambda: start_bundled(MODEL, alias="small", log_dir=tmp_path / "s"),
                     lambda: start_bundled(MODEL, alias="large", log_dir=tmp_path / "l")) as (small, large):
        small.wait_ready()
        large.wait_ready()
        # the router's own time without the watch (the same prompts)
        off = create_app(parse_config(_config(small.url, large.url, watch=False), "test"))
        with serve_app(off) as base:
            plain = Client(base)
            for m in easy[:12]:
                plain.ask(m)
        app = create_app(parse_config(_config(small.url, large.url, watch=True), "test"), Secrets(admin_key=ADMIN))
        with serve_app(app) as base:
            c = Client(base)
            for m in easy:   # until the verdict window holds MIN_CHECKS + 8 checks of easy traffic
                c.ask(m)
                _settle(app)   # one check at a time (max_in_flight 1): none skipped
                if app.state.watch.counts["graded"] >= MIN_CHECKS + 8:
                    break
            easy_verdict = quality_verdict(c.stats(), SETTINGS)
            # hard prompts until the promise is judged (every MIN_CHECKS-th check is the earliest it can be)
            detected_after, i = None, 0
            while detected_after is None and i < MAX_HARD:
                c.ask(hard[i % len(hard)], HARD_TEMPERATURE)
                i += 1
                _settle(app)
                v = quality_verdict(c.stats(), SETTINGS)
                # checks made under the current threshold include the easy ones: the drop shows in the mean
                if v.slipped:
                    detected_after = i
            snap = c.stats()
            verdict = quality_verdict(snap, SETTINGS)
            new = refit_thresholds(snap, verdict, SETTINGS)
            assert detected_after is not None and "small" in new, verdict.describe()
            cfg = httpx.get(f"{base}/admin/config", headers={"Authorization": f"Bearer {ADMIN}"}).json()["config"]
            cfg["stages"][0]["threshold"] = new["small"]
            swapped = httpx.post(f"{base}/admin/config", json=cfg, headers={"Authorization": f"Bearer {ADMIN}"})
            # more hard prompts under the raised threshold: what the client gets now
            before = len(c.stages)
            for k in range(i, i + 24):
                c.ask(hard[k % len(hard)], HARD_TEMPERATURE)
            _settle(app)
            after_snap = c.stats()
        counts = dict(app.state.watch.counts)
    print(f"easy: {easy_verdict.describe()}")
    print(f"hard: detected after {detected_after} hard prompts: {verdict.describe()}; re-fit {new}")
    after = after_snap["quality"]["windows"]["3600"]["stages"]["small"]
    late = c.stages[before:]
    share_small = late.count("small") / len(late)
    # the quality of the returned answers against the last stage: escalated ones are the last stage's own answer
    returned = 1 - share_small * (1 - (after["quality"] if after["checks"] else 0.0))
    print(f"after: small answers {share_small:.2f} of hard prompts, its checks {after}, returned quality "
          f"{returned:.2f}; router overhead median {statistics.median(c.overhead_s) * 1e3:.1f} ms with the watch, "
          f"{statistics.median(plain.overhead_s) * 1e3:.1f} ms without; shadow {counts}")
    assert not c.failed and not plain.failed
    assert easy_verdict.state is Promise.HELD, easy_verdict.describe()
    assert detected_after is not None and verdict.slipped, verdict.describe()
    assert swapped.status_code == 200 and new["small"] > THRESHOLD
    assert returned >= PROMISE - SETTINGS.margin
    assert counts["failed"] == 0 and counts["graded"] > MIN_CHECKS
    # the router's own time per request (client latency minus the stage's time) is not changed by shadow traffic
    assert statistics.median(c.overhead_s) <= statistics.median(plain.overhead_s) + 0.02
