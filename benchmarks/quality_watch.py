"""The quality watch on a prompt-mix shift, simulated on a quality profile: returned quality over time against the
target, with and without the watch.

Requests are drawn from the profile's prompts (per prompt and stage: the serving score and the judged quality).
The thresholds are fitted on the whole profile for the spec's quality target (the lowest first-stage threshold, then
second, ... on a grid, whose returned quality meets it: what the plan promises), each stage's promise is its
accepted quality there (`QualityProfile.accepted`, as the plan's `accepted_quality`). Then the traffic comes from an
easy mix (categories the small models answer well) and, from `--shift-at`, from a hard mix. With the watch, a
`--fraction` of accepted answers is checked (grader judge: the grade is the profile's quality of the answer, what a
judge that agrees with the calibration grades would say), through the router's own aggregation
(`router.quality.QualityWatch.snapshot`), verdict and re-fit (`cascadia_sky.reschedule.quality`), every `--pass-every`
requests (the loop's interval); a re-fit replaces the thresholds at once (the router's hot swap).

    python benchmarks/quality_watch.py [--profile examples/llama3.yaml] [--requests 20000] [--shift-at 5000]

Prints a table of windows and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cascadia_sky.planner.planner import build_context
from cascadia_sky.quality import QualityProfile
from cascadia_sky.reschedule.quality import quality_verdict, refit_thresholds
from cascadia_sky.spec import QualityWatchSpec, load_spec

EASY = {"llama3": ("syn-gsm8k", "syn-mmlu-pro"), "deepseek": ("syn-math500",)}
HARD = {"llama3": ("syn-gpqa", "syn-math"), "deepseek": ("syn-aime2024", "syn-gpqa-diamond")}


def fit_thresholds(p: QualityProfile, target: float, grid: int = 60) -> list[float]:
    """Greedy: for each early stage in turn, the lowest threshold on a grid whose returned quality meets the target
    (later stages at -inf meanwhile accept everything: the fit raises them only when needed)."""
    n = p.n_stages - 1
    theta = [-np.inf] * n
    for i in range(n):
        for h in np.quantile(p.scores[:, i], np.linspace(0, 1, grid + 1)):
            trial = theta[:i] + [float(h)] + theta[i + 1:]
            if p.evaluate(trial).quality >= target:
                theta[i] = float(h)
                break
        else:
            theta[i] = float(np.max(p.scores[:, i])) + 1e-9
        if p.evaluate(theta).quality >= target:
            break
    return theta


class Sim:
    """One run: a threshold vector, the router's watch (real aggregation) and the loop's verdict/re-fit."""

    def __init__(self, p: QualityProfile, theta: list[float], promise: list[float | None], watch: bool,
                 settings: QualityWatchSpec, fraction: float, seed: int) -> None:
        from router.config import parse_config
        from router.quality import QualityWatch
        from router.serving import Runtime

        self.p, self.theta, self.watch_on = p, list(theta), watch
        self.settings, self.fraction = settings, fraction
        self.rng = np.random.default_rng(seed)
        self.names = [f"s{i}" for i in range(p.n_stages)]
        self.promise = promise
        self.watch = QualityWatch(seed=seed)
        self.clock = 0.0
        self.watch_time = lambda: self.clock
        self._runtime = lambda: Runtime(parse_config(self._config(), "sim"))
        self.rt = self._runtime()
        self.swaps: list[tuple[int, list[float]]] = []
        self.detected_after_checks: int | None = None

    def _config(self) -> dict:
        w = self.settings
        stages = [{"name": n, "served_model_name": n, "endpoints": ["http://127.0.0.1:9"],
                   "threshold": (self.theta[i] if i < len(self.theta) else None),
                   **({"promise": self.promise[i]} if i < len(self.theta) and self.promise[i] is not None else {})}
                  for i, n in enumerate(self.names)]
        return {"name": "sim", "stages": stages,
                "quality_watch": {"fraction": self.fraction, "grader": "last_stage", "windows_s": w.windows_s,
                                  "level": w.level, "keep": 1_000_000}}

    def request(self, k: int, prompt: int) -> tuple[int, float]:
        from router.quality import Check

        scores, quality = self.p.scores[prompt], self.p.quality[prompt]
        stage = next((i for i, h in enumerate(self.theta) if scores[i] >= h), len(self.theta))
        self.clock += 1.0
        if self.watch_on and stage < len(self.theta) and self.rng.random() < self.fraction:
            self.watch.checks.append(Check(self.clock, self.names[stage], float(scores[stage]),
                                           float(self.theta[stage]), float(quality[stage])))
        return stage, float(quality[stage])

    def loop_pass(self, k: int) -> None:
        import router.quality as rq

        real = rq.time.monotonic
        rq.time.monotonic = self.watch_time   # the simulated clock (one request per second)
        try:
            snap = {"quality": self.watch.snapshot(self.rt)}
        finally:
            rq.time.monotonic = real
        v = quality_verdict(snap, self.settings)
        new = refit_thresholds(snap, v, self.settings) if v.slipped else {}
        if new:
            if self.detected_after_checks is None:
                self.detected_after_checks = sum(s.checks for s in v.stages)
            for name, h in new.items():
                self.theta[self.names.index(name)] = h
            self.rt = self._runtime()
            self.swaps.append((k, list(self.theta)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(REPO / "examples" / "llama3.yaml"))
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--shift-at", type=int, default=5_000)
    ap.add_argument("--fraction", type=float, default=0.03)
    ap.add_argument("--pass-every", type=int, default=300, help="requests between loop passes")
    ap.add_argument("--window", type=int, default=1_000, help="requests per reported window")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    spec = load_spec(args.spec)
    ctx = build_context(spec)
    p: QualityProfile = ctx.profile
    target = float(ctx.q_min)
    theta = fit_thresholds(p, target)
    promise_q, _ = p.accepted(theta)
    settings = QualityWatchSpec(enabled=True, windows_s=[args.pass_every * 4], min_checks=30, margin=0.02)
    key = next(k for k in EASY if k in Path(args.spec).stem)
    ids = np.array([pid.rsplit("-", 1)[0] for pid in p.prompt_ids])
    easy = np.flatnonzero(np.isin(ids, EASY[key]))
    hard = np.flatnonzero(np.isin(ids, HARD[key]))
    rng = np.random.default_rng(args.seed)
    stream = np.concatenate([rng.choice(easy, args.shift_at), rng.choice(hard, args.requests - args.shift_at)])
    runs = {}
    for watch in (False, True):
        sim = Sim(p, theta, promise_q, watch, settings, args.fraction, args.seed)
        q_by_window, last_share = [], []
        qs, stages = [], []
        for k, prompt in enumerate(stream):
            stage, q = sim.request(k, int(prompt))
            qs.append(q)
            stages.append(stage)
            if (k + 1) % args.pass_every == 0:
                sim.loop_pass(k + 1)
            if (k + 1) % args.window == 0:
                q_by_window.append(float(np.mean(qs[-args.window:])))
                last_share.append(float(np.mean(np.array(stages[-args.window:]) == p.n_stages - 1)))
        tail = slice(args.shift_at + 3 * args.window, None)
        runs["with" if watch else "without"] = {
            "quality_by_window": [round(x, 4) for x in q_by_window],
            "last_stage_share_by_window": [round(x, 4) for x in last_share],
            "quality_before_shift": round(float(np.mean(qs[:args.shift_at])), 4),
            "quality_after_shift": round(float(np.mean(qs[args.shift_at:])), 4),
            "quality_settled": round(float(np.mean(qs[tail])), 4),
            "swaps": [(k, [round(h, 4) for h in th]) for k, th in sim.swaps],
            "detected_after_checks": sim.detected_after_checks,
            "shadow_checks": len(sim.watch.checks)}
    print(f"target quality {target:.4f}; thresholds {[round(h, 4) for h in theta]}; promise per stage "
          f"{[None if x is None else round(x, 4) for x in promise_q]}; shift at request {args.shift_at}")
    print(f"{'window':>7} {'without':>9} {'with':>9} {'last share (with)':>18}")
    for i, (a, b, s) in enumerate(zip(runs["without"]["quality_by_window"], runs["with"]["quality_by_window"],
                                      runs["with"]["last_stage_share_by_window"], strict=True)):
        print(f"{(i + 1) * args.window:>7} {a:>9.4f} {b:>9.4f} {s:>18.3f}")
    result = {"benchmark": "quality_watch", "spec": Path(args.spec).name, "target": round(target, 4),
              "thresholds": [round(h, 4) for h in theta], "shift_at": args.shift_at, "fraction": args.fraction,
              "pass_every": args.pass_every,
              **{f"{k}_{m}": runs[k][m] for k in runs for m in ("quality_before_shift", "quality_after_shift",
                                                                 "quality_settled")},
              "detected_after_checks": runs["with"]["detected_after_checks"], "swaps": runs["with"]["swaps"],
              "shadow_checks": runs["with"]["shadow_checks"],
              "hard_mix_quality_all_last": round(float(p.quality[hard, -1].mean()), 4),   # the ceiling after the shift
              "wall_s": round(time.perf_counter() - t0, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
