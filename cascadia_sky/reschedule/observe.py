"""Observe: the router's /stats window turned into a typed `Observation`, and the workload a plan was made for.

The rate that matters per stage is the rate that *reaches* it: a shift of the score distribution moves load onto
stage 2 even when the total requests/s stay flat, so every observation carries each stage's reach (share of all
requests that got there) and escalation share next to the arrival rate and the length quantiles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cascadia_sky.errors import LaunchError
from cascadia_sky.planner.plan import Plan


@dataclass(frozen=True)
class StageObservation:
    """One stage in one window."""

    name: str
    reached: int                   # requests that reached the stage
    reach: float                   # reached / requests of the window (stage 1: 1.0)
    escalated_share: float         # of those that reached it, the share it passed on
    failed: int


@dataclass(frozen=True)
class Observation:
    """One window of live traffic, as the router saw it."""

    t: float                       # when it was taken (seconds; monotonic or wall, the caller's clock)
    window_s: float
    requests: int
    rate_rps: float
    errors: int
    input_p50: float | None
    input_p95: float | None
    output_p50: float | None
    output_p95: float | None
    stages: tuple[StageObservation, ...]
    input_q: tuple[tuple[float, float], ...] = ()    # (quantile level, tokens) as /stats reports them
    output_q: tuple[tuple[float, float], ...] = ()

    def reach(self) -> tuple[float, ...]:
        return tuple(s.reach for s in self.stages)


@dataclass(frozen=True)
class Reference:
    """The workload a plan was made for: what drift is measured against. Lengths are None when unknown."""

    rate_rps: float
    reach: tuple[float, ...]
    input_p50: float | None = None
    output_p50: float | None = None
    input_q: tuple[tuple[float, float], ...] = ()    # length quantiles of the observed workload (re-planning)
    output_q: tuple[tuple[float, float], ...] = ()
    requests: int = 0              # requests behind an observed reach (its sampling noise); 0: not observed

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Reference:
        d = json.loads(text)
        return cls(rate_rps=float(d["rate_rps"]), reach=tuple(float(x) for x in d["reach"]),
                   input_p50=d.get("input_p50"), output_p50=d.get("output_p50"),
                   input_q=tuple((float(a), float(b)) for a, b in d.get("input_q", ())),
                   output_q=tuple((float(a), float(b)) for a, b in d.get("output_q", ())),
                   requests=int(d.get("requests", 0)))


def _q(dist: Mapping[str, Any], key: str) -> float | None:
    v = dist.get(key) if dist.get("count") else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _quantiles(dist: Mapping[str, Any]) -> tuple[tuple[float, float], ...]:
    out = []
    for key, v in dist.items() if dist.get("count") else ():
        if key.startswith("p") and key[1:].isdigit() and isinstance(v, (int, float)) and math.isfinite(v):
            out.append((int(key[1:]) / 100, float(v)))
    return tuple(sorted(out))


# The quantile levels the router's /stats reports for token lengths (router/stats.py LENGTH_QUANTILES; the router
# imports nothing of cascadia_sky, so the tuple is kept in both places and a test compares them). Older routers
# report (0.1, 0.5, 0.9, 0.95, 0.99); whatever levels come are used.
LENGTH_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def empirical(quantiles: Sequence[tuple[float, float]], n: int = 200) -> list[int]:
    """n token counts whose distribution follows the reported quantiles: the inverse CDF interpolated linearly in
    log(tokens) between them (lengths are right-skewed, close to log-normal: linear interpolation overstates the
    mean, by ~20 % on the Azure conversation trace from five quantiles, ~1 % in log space from nine), flat beyond
    the outermost ones. The empirical length distribution a re-plan uses."""
    import numpy as np

    levels = np.array([q for q, _ in quantiles])
    values = np.log(np.maximum(np.array([v for _, v in quantiles], dtype=float), 1.0))
    u = (np.arange(n) + 0.5) / n
    return [max(1, int(round(x))) for x in np.exp(np.interp(u, levels, values))]


def pick_window(snapshot: Mapping[str, Any], interval_s: float) -> Mapping[str, Any]:
    """The /stats window closest to the re-schedule interval (the launcher configures one of exactly that size)."""
    windows = snapshot.get("windows")
    if not isinstance(windows, Mapping) or not windows:
        raise LaunchError("the router's /stats has no windows; is this a cascadia router?")
    return min(windows.values(), key=lambda w: (abs(float(w["window_s"]) - interval_s), float(w["window_s"])))


def observation_from_stats(snapshot: Mapping[str, Any], stage_names: Sequence[str], interval_s: float,
                           t: float) -> Observation:
    """A typed observation of one /stats window (the one closest to `interval_s`)."""
    w = pick_window(snapshot, interval_s)
    n = int(w.get("requests", 0))
    stages_in = w.get("stages", {}) or {}
    stages = []
    for i, name in enumerate(stage_names):
        s = stages_in.get(name, {}) or {}
        reached = int(s.get("reached", 0))
        stages.append(StageObservation(name=name, reached=reached,
                                       reach=1.0 if i == 0 else (reached / n if n else 0.0),
                                       escalated_share=float(s.get("escalated_share", 0.0)),
                                       failed=int(s.get("failed", 0))))
    ins, outs = w.get("input_tokens", {}) or {}, w.get("output_tokens", {}) or {}
    return Observation(t=t, window_s=float(w["window_s"]), requests=n, rate_rps=float(w.get("arrival_rate_per_s", 0.0)),
                       errors=int(w.get("errors", 0)), input_p50=_q(ins, "p50"), input_p95=_q(ins, "p95"),
                       output_p50=_q(outs, "p50"), output_p95=_q(outs, "p95"), stages=tuple(stages),
                       input_q=_quantiles(ins), output_q=_quantiles(outs))


def plan_reference(plan: Plan, input_p50: float | None = None, output_p50: float | None = None) -> Reference:
    """What a plan was made for: its rate and per-stage reach (lengths when the caller knows them)."""
    return Reference(rate_rps=plan.workload_rate_rps, reach=tuple(s.share for s in plan.stages),
                     input_p50=input_p50, output_p50=output_p50)


def spec_reference(plan: Plan, spec_path: str | Path | None) -> Reference:
    """The reference of a plan made from a cascade file: the plan's rate and reach, the spec workload's lengths."""
    if not spec_path or not Path(spec_path).is_file() or str(spec_path).endswith(".json"):
        return plan_reference(plan)
    import numpy as np

    from cascadia_sky.planner.planner import workload_from_spec
    from cascadia_sky.spec import load_spec

    w = workload_from_spec(load_spec(spec_path, check=False))
    return plan_reference(plan, float(np.median(w.input_tokens)) if w.input_tokens.size else None,
                          float(np.median(w.output_tokens)) if w.output_tokens.size else None)


def fetch_stats(endpoint: str, api_key_file: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET the router's /stats (the deployment's API key). Raises LaunchError when the router does not answer."""
    from cascadia_sky.launch.procs import http_get

    headers = {}
    try:
        headers["Authorization"] = f"Bearer {Path(api_key_file).read_text().strip()}"
    except OSError:
        pass
    url = endpoint.removesuffix("/v1") + "/stats"
    code, body = http_get(url, headers)
    if code != 200 or not isinstance(body, dict):
        raise LaunchError(f"the router's /stats did not answer ({url}: {code}); is the deployment up? "
                          f"(`cascadia status`)")
    return body


__all__ = ["LENGTH_QUANTILES", "Observation", "Reference", "StageObservation", "empirical", "fetch_stats", "observation_from_stats", "pick_window",
           "plan_reference", "spec_reference"]
