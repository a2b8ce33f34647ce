"""The quality watch's verdict and repair (docs/quality-watch.md): does the plan's quality promise hold on live
traffic, and which thresholds restore it when it does not.

The router checks a sample of accepted answers against the last stage (or a judge) and reports in /stats, per
window and stage, the checks made under the stage's current threshold, their mean grade with a Wilson interval, and
the plan's promise (`StagePlan.accepted_agreement`, or `accepted_quality` with a judge). From that:

- `quality_verdict` (pure): per stage, with the first of `quality.watch.windows_s`:
  fewer than `min_checks` checks -> UNVERIFIED (no verdict, no change: too few checks to tell);
  the interval's upper end below the promise -> BROKEN (the promise is outside what the checks allow);
  the mean more than `margin` below the promise -> AT_RISK; otherwise HELD. The deployment's verdict is the worst
  verified stage's, UNVERIFIED when none is verified.
- `refit_thresholds` (pure): for a stage AT_RISK or BROKEN, the recent-window profile is its checks (score and grade
  of each checked answer); the new threshold is the lowest h >= the current one such that the checks scoring >= h
  (at least `refit_min_kept` of them) grade at least the promise on average; when no such h exists, h is just above
  the highest checked score (none of what was seen is good enough: the stage passes it on). Thresholds only rise,
  which only moves traffic to later stages: checks exist only for accepted answers, so nothing below the current
  threshold was measured.
- `quality_step`: one pass of the loop's quality part: record the verdict when it changes, and on AT_RISK/BROKEN
  apply the raised thresholds through `up` (a threshold-only change: the router's config swap). A later re-plan for
  load keeps them as floors (`keep_floors`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from cascadia_sky.planner.plan import Plan
from cascadia_sky.spec import QualityWatchSpec

if TYPE_CHECKING:
    from cascadia_sky.launch.state import StateStore
    from cascadia_sky.reschedule.history import Event, History
    from cascadia_sky.reschedule.replan import Replan

QUALITY_REASON = "quality watch: "   # the reason of every step the watch records starts with this


class Promise(str, Enum):
    """Whether the plan's quality promise holds on live traffic."""

    HELD = "held"                # the measured quality of accepted answers is at the promise (within the margin)
    AT_RISK = "at risk"          # measured mean below promise - margin, but the promise is inside the interval
    BROKEN = "broken"            # the interval's upper end is below the promise
    UNVERIFIED = "unverified"    # too few checks under the current thresholds to tell


_RANK = {Promise.HELD: 0, Promise.AT_RISK: 1, Promise.BROKEN: 2}


@dataclass(frozen=True)
class StageQuality:
    name: str
    checks: int
    quality: float | None
    lower: float
    upper: float
    promise: float | None
    threshold: float | None
    state: Promise

    def describe(self) -> str:
        if self.quality is None or self.promise is None:
            return f"{self.name} {self.state.value} ({self.checks} checks)"
        return (f"{self.name} {self.state.value}: measured {self.quality:.2f} [{self.lower:.2f}, {self.upper:.2f}] "
                f"vs promised {self.promise:.2f} ({self.checks} checks)")


@dataclass(frozen=True)
class QualityVerdict:
    state: Promise
    window_s: float
    stages: tuple[StageQuality, ...]

    @property
    def checks(self) -> int:
        return sum(s.checks for s in self.stages)

    @property
    def slipped(self) -> bool:
        return self.state in (Promise.AT_RISK, Promise.BROKEN)

    def describe(self) -> str:
        head = f"promise: {self.state.value} ({self.checks} checks in {self.window_s:g} s)"
        return head + ("; " + "; ".join(s.describe() for s in self.stages) if self.stages else "")


def stage_state(checks: int, quality: float | None, upper: float, promise: float | None,
                settings: QualityWatchSpec) -> Promise:
    """The verdict for one stage (module docstring)."""
    if checks < settings.min_checks or quality is None or promise is None:
        return Promise.UNVERIFIED
    if upper < promise:
        return Promise.BROKEN
    if quality < promise - settings.margin:
        return Promise.AT_RISK
    return Promise.HELD


def _window(quality: Mapping[str, Any], settings: QualityWatchSpec) -> Mapping[str, Any] | None:
    windows = quality.get("windows") or {}
    if not windows:
        return None
    want = str(settings.windows_s[0])
    return windows.get(want) or min(windows.values(), key=lambda w: float(w["window_s"]))


def quality_verdict(snapshot: Mapping[str, Any], settings: QualityWatchSpec) -> QualityVerdict:
    """The verdict from a /stats snapshot (its `quality` part). Pure."""
    quality = snapshot.get("quality")
    w = _window(quality, settings) if isinstance(quality, Mapping) else None
    if w is None:
        return QualityVerdict(Promise.UNVERIFIED, float(settings.windows_s[0]), ())
    stages = []
    for name, s in (w.get("stages") or {}).items():
        n = int(s.get("checks", 0))
        q = s.get("quality")
        lo, hi = (float(x) for x in (s.get("interval") or (0.0, 1.0)))
        promise = s.get("promise")
        stages.append(StageQuality(name, n, q, lo, hi, promise, s.get("threshold"),
                                   stage_state(n, q, hi, promise, settings)))
    verified = [s.state for s in stages if s.state is not Promise.UNVERIFIED]
    state = max(verified, key=_RANK.__getitem__) if verified else Promise.UNVERIFIED
    return QualityVerdict(state, float(w["window_s"]), tuple(stages))


def refit_min_kept(settings: QualityWatchSpec) -> int:
    """How many checks must remain above a re-fitted threshold for their mean to count."""
    return max(5, settings.min_checks // 3)


def refit_threshold(checks: Sequence[tuple[float, float]], current: float, promise: float,
                    min_kept: int) -> float:
    """The lowest threshold >= `current` whose kept checks ((score, grade) with score >= it, at least `min_kept`)
    grade at least `promise` on average; just above the highest score when none does. Pure."""
    above = sorted((s, g) for s, g in checks if s >= current)
    if not above:
        return current
    grades = [g for _, g in above]
    suffix = [0.0] * (len(grades) + 1)
    for i in range(len(grades) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + grades[i]
    for i, (score, _) in enumerate(above):
        if i and above[i - 1][0] == score:
            continue   # a threshold keeps every check of the same score
        kept = len(above) - i
        if kept < min_kept:
            break
        if suffix[i] / kept >= promise:
            return current if i == 0 else float(score)   # the lowest score of the kept checks
    return math.nextafter(float(above[-1][0]), math.inf)


def refit_thresholds(snapshot: Mapping[str, Any], verdict: QualityVerdict,
                     settings: QualityWatchSpec) -> dict[str, float]:
    """New thresholds for the stages that slipped, from their checks in the verdict's window (module docstring)."""
    recent = (snapshot.get("quality") or {}).get("checks") or {}
    out = {}
    for s in verdict.stages:
        if s.state not in (Promise.AT_RISK, Promise.BROKEN) or s.threshold is None or s.promise is None:
            continue
        checks = [(float(score), float(grade)) for age, score, thr, grade in recent.get(s.name, ())
                  if age <= verdict.window_s and thr == s.threshold]
        new = refit_threshold(checks, float(s.threshold), float(s.promise), refit_min_kept(settings))
        if new > s.threshold:
            out[s.name] = new
    return out


def with_thresholds(plan: Plan, thresholds: Mapping[str, float]) -> Plan:
    """The plan with those stages' thresholds replaced (everything else, the promises included, as it was)."""
    stages = [s.model_copy(update={"threshold": thresholds[s.name]}) if s.name in thresholds else s
              for s in plan.stages]
    return plan.model_copy(update={"stages": stages})


def quality_floors(events: Sequence[Event]) -> dict[str, float]:
    """The thresholds the watch raised, from its newest applied step (a re-plan for load keeps them as floors)."""
    for e in reversed(events):
        if e.step == "applied" and e.reason.startswith(QUALITY_REASON) and e.plan_json:
            stages = json.loads(e.plan_json).get("stages", [])
            return {s["name"]: float(s["threshold"]) for s in stages[:-1]
                    if isinstance(s.get("threshold"), (int, float))}
    return {}


def keep_floors(rp: Replan, floors: Mapping[str, float]) -> Replan:
    """A re-plan whose thresholds are at least the watch's floors (a load re-plan reads the profile, which does not
    know that the live prompts got harder)."""
    raise_ = {s.name: floors[s.name] for s in rp.plan.stages[:-1]
              if s.name in floors and s.threshold is not None and s.threshold < floors[s.name]}
    if not raise_:
        return rp
    return replace(rp, plan=with_thresholds(rp.plan, raise_),
                   reason=rp.reason + "; thresholds kept at the quality watch's floors "
                          + ", ".join(f"{k} {v:.4g}" for k, v in raise_.items()))


@dataclass
class QualityStep:
    verdict: QualityVerdict
    thresholds: dict[str, float]
    plan: Plan | None = None
    applied: bool = False

    def describe(self) -> str:
        text = self.verdict.describe()
        if self.thresholds:
            text += ("; re-fit thresholds: " + ", ".join(f"{k} -> {v:.4g}" for k, v in self.thresholds.items())
                     + (" (applied)" if self.applied else " (dry run)"))
        return text


def quality_step(name: str, plan: Plan, snapshot: Mapping[str, Any], history: History, store: StateStore,
                 spec_path: str, *, apply: bool, now: float,
                 progress: Callable[[str], None] = lambda msg: None) -> QualityStep:
    """Verdict; on a change of verdict a `quality` event; on AT_RISK/BROKEN with apply, the raised thresholds
    applied through `up` (recorded applying -> applied/failed like every re-schedule step)."""
    from cascadia_sky.errors import CascadiaError
    from cascadia_sky.launch.launcher import Target, up
    from cascadia_sky.reschedule.history import Event, now_s

    settings = plan.launch.quality_watch
    verdict = quality_verdict(snapshot, settings)
    step = QualityStep(verdict, refit_thresholds(snapshot, verdict, settings) if verdict.slipped else {})
    last = next((e for e in reversed(history.events(name, 1000)) if e.step == "quality"), None)
    if apply and (last is None or not last.reason.startswith(QUALITY_REASON + "promise: " + verdict.state.value)):
        history.record(Event(name, now, "quality", "none", QUALITY_REASON + verdict.describe()))
    if not step.thresholds:
        return step
    step.plan = with_thresholds(plan, step.thresholds)
    if not apply:
        return step
    reason = QUALITY_REASON + verdict.describe() + "; thresholds " + ", ".join(
        f"{k} {plan.stage(k).threshold:.4g} -> {v:.4g}" for k, v in step.thresholds.items())
    progress(reason)
    event = Event(name, now, "applying", "router", reason, "update_router: thresholds", step.plan.to_json(),
                  (history.reference(name) or _reference_of(plan, spec_path)).to_json())
    history.record(event)
    try:
        up(Target(step.plan, spec_path), store=store, progress=progress)
    except CascadiaError as exc:
        history.record(Event(name, now_s(), "failed", "router", str(exc)[:2000], event.actions, event.plan_json,
                             event.reference_json))
        raise
    history.record(Event(name, now_s(), "applied", "router", reason, event.actions, event.plan_json,
                         event.reference_json))
    step.applied = True
    return step


def _reference_of(plan: Plan, spec_path: str) -> Any:
    from cascadia_sky.reschedule.observe import spec_reference

    return spec_reference(plan, spec_path)


def quality_status(name: str, store: StateStore | None = None,
                   fetch: Callable[[str, str], dict] | None = None) -> dict | None:
    """The deployment's quality promise as data (`cascadia status NAME --json`): None when the watch is off; else
    `{"state", "checks", "window_s", "shadow", "stages": [...]}`, or `{"state": "unknown", "error"}` when the
    router's /stats does not answer."""
    from cascadia_sky.errors import CascadiaError
    from cascadia_sky.launch.state import StateStore as _Store
    from cascadia_sky.reschedule.observe import fetch_stats

    store = store or _Store()
    rec = store.get(name)
    if rec is None or rec.plan is None or not rec.plan.launch.quality_watch.enabled:
        return None
    try:
        snap = (fetch or fetch_stats)(rec.endpoint, rec.api_key_file)
    except CascadiaError as exc:
        return {"state": "unknown", "error": f"the router's /stats did not answer: {exc}"}
    v = quality_verdict(snap, rec.plan.launch.quality_watch)
    return {"state": v.state.value, "checks": v.checks, "window_s": v.window_s,
            "shadow": dict((snap.get("quality") or {}).get("shadow") or {}),
            "stages": [{"name": st.name, "state": st.state.value, "checks": st.checks, "quality": st.quality,
                        "interval": [st.lower, st.upper], "promise": st.promise, "threshold": st.threshold,
                        "describe": st.describe()} for st in v.stages]}


def quality_lines(name: str, store: StateStore | None = None,
                  fetch: Callable[[str, str], dict] | None = None) -> list[str]:
    """What `cascadia status NAME` shows: `promise: held / at risk / broken / unverified (n checks)`, per stage the
    measured quality with its interval next to the promise; nothing when the watch is off."""
    q = quality_status(name, store, fetch)
    if q is None:
        return []
    if "error" in q:
        return [f"promise: unknown ({q['error']})"]
    shadow = q["shadow"]
    lines = [f"promise: {q['state']} ({q['checks']} checks in {q['window_s']:g} s; shadow requests: "
             + ", ".join(f"{k} {shadow[k]}" for k in sorted(shadow)) + ")"]
    return lines + [f"  {st['describe']}" for st in q["stages"]]


__all__ = [
    "QUALITY_REASON",
    "Promise",
    "QualityStep",
    "QualityVerdict",
    "StageQuality",
    "keep_floors",
    "quality_floors",
    "quality_lines",
    "quality_status",
    "quality_step",
    "quality_verdict",
    "refit_threshold",
    "refit_thresholds",
    "stage_state",
    "with_thresholds",
]
