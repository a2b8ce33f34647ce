"""The re-schedule loop: observe -> detect -> re-plan -> apply by diff, one pass at a time.

`reschedule_pass(name)` reads one /stats window, adds it to the deployment's series, runs the detector, and on
sustained drift re-plans; with `apply=True` it records the step (state store) and hands the new plan to the
launcher's `up`, whose `decide()` turns the difference into the cheapest actions: thresholds only -> the router's
config swap; replica counts only -> `scale_stage` (new replicas join the router when ready, surplus ones are
drained first); engines (GPU type, TP/PP, engine settings) -> `update_stage` (SkyServe, local: blue/green). `watch(name)` repeats the
pass every `reschedule.interval_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascadia_sky.errors import CascadiaError, UserInputError
from cascadia_sky.launch.backends import Action
from cascadia_sky.launch.state import StateStore
from cascadia_sky.reschedule.detect import Detection, Verdict, detect
from cascadia_sky.reschedule.history import Event, History, now_s
from cascadia_sky.reschedule.observe import Observation, fetch_stats, observation_from_stats, spec_reference
from cascadia_sky.reschedule.replan import Replan, replan
from cascadia_sky.spec import CascadeSpec

_COST_ORDER = {"update_router": "router", "launch_router": "router", "scale_stage": "scale",
               "launch_stage": "relaunch", "update_stage": "relaunch", "remove_stage": "relaunch",
               "launch_watcher": "router", "remove_watcher": "router"}


# What each kind of step costs while it runs, and how long it takes (shown with the decision).
STEP_COST = {
    "router": "router config swap: atomic, no restart, in-flight requests finish on the old config (< 1 s)",
    "scale": "new replicas start beside the running ones and join when ready (local: seconds; SkyServe: "
             "provisioning + weights, minutes); surplus ones are drained first (up to "
             "RESCHEDULE_DRAIN_TIMEOUT_SECONDS)",
    "relaunch": "a stage's engines are replaced (SkyServe and local: blue/green, the old version serves until the "
                "new one is ready, hardware for both while it runs, SkyServe minutes, local seconds; clusters: "
                "relaunched in place)",
    "none": "nothing",
}


def change_kind(actions: list[Action]) -> str:
    """The costliest kind of step among the actions: none < router < scale < relaunch."""
    kinds = {_COST_ORDER.get(a.op, "relaunch") for a in actions}
    for k in ("relaunch", "scale", "router"):
        if k in kinds:
            return k
    return "none"


@dataclass
class PassResult:
    """What one pass saw, concluded and did."""

    name: str
    observation: Observation | None
    detection: Detection
    replan: Replan | None = None
    actions: list[Action] = field(default_factory=list)
    kind: str = "none"
    applied: bool = False
    message: str = ""
    quality: Any = None        # the quality watch's step (reschedule/quality.py), when the watch is on

    def describe(self) -> str:
        lines = [f"{self.name}: {self.detection.describe()}"]
        if self.observation is not None:
            o = self.observation
            lines.append(f"  window {o.window_s:g} s: {o.requests} requests, {o.rate_rps:.3g} req/s, reach "
                         + ", ".join(f"{s.name} {s.reach:.2f}" for s in o.stages))
        if self.quality is not None:
            lines.append(f"  {self.quality.describe()}")
        if self.replan is not None:
            r = self.replan
            lines.append(f"  re-plan ({r.wall_s:.2f} s, for {r.planned_rate_rps:.3g} req/s): {r.reason}")
            for s in r.plan.stages:
                lines.append(f"    {s.name}: {s.gpu_type} tp{s.tp} pp{s.pp} x{s.replicas}, threshold {s.threshold}")
        if self.actions:
            lines.append(f"  {'applied' if self.applied else 'would do'} ({self.kind}): "
                         + "; ".join(a.describe() for a in self.actions))
            lines.append(f"  cost: {STEP_COST.get(self.kind, '')}")
        if self.message:
            lines.append(f"  {self.message}")
        return "\n".join(lines)


def _spec_of(record_spec_path: str, name: str) -> CascadeSpec:
    from cascadia_sky.spec import load_spec

    if not record_spec_path or record_spec_path.endswith(".json") or not Path(record_spec_path).is_file():
        raise UserInputError(f"deployment {name!r} was started from a plan file ({record_spec_path or 'unknown'}); "
                             f"re-scheduling re-plans the cascade file: `cascadia up cascade.yaml` it once")
    return load_spec(record_spec_path)


def reschedule_pass(name: str, *, apply: bool = False, store: StateStore | None = None,
                    stats: dict | None = None, now: float | None = None,
                    progress: Callable[[str], None] = lambda msg: None) -> PassResult:
    """One observe -> detect -> re-plan (-> apply) pass. `stats` replaces the router's /stats (tests, replays)."""
    from cascadia_sky.launch.launcher import Target, decide, up

    store = store or StateStore()
    history = History(store)
    rec = store.get(name)
    if rec is None:
        raise UserInputError(f"no deployment named {name!r}; start one with `cascadia up cascade.yaml`")
    plan = rec.plan
    if plan is None:
        raise UserInputError(f"deployment {name!r} has no recorded plan; run `cascadia up` again")
    settings = plan.launch.reschedule
    now = now_s() if now is None else now
    pending = history.unfinished(name)
    if pending is not None and apply:   # an interrupted apply: finish it (up of the recorded plan is idempotent)
        import json

        from cascadia_sky.planner.plan import parse_plan

        resumed = parse_plan(json.loads(pending.plan_json), "the interrupted re-schedule's plan")
        up(Target(resumed, rec.spec_path), store=store, progress=progress)
        history.record(Event(name, now_s(), "applied", pending.kind, f"resumed: {pending.reason}",
                             pending.actions, pending.plan_json, pending.reference_json))
        rec = store.get(name) or rec
        plan = rec.plan or plan
    snapshot = stats if stats is not None else fetch_stats(rec.endpoint, rec.api_key_file)
    obs = observation_from_stats(snapshot, [s.name for s in plan.stages], settings.interval_s, now)
    history.add_observation(name, obs)
    last = history.last_change(name, changed_only=True)   # a "no change" decision moves the reference only: it
    reference = history.reference(name) or spec_reference(plan, rec.spec_path)   # starts no cool-down
    det = detect(history.observations(name), reference, settings, now, last.t if last else None)
    result = PassResult(name, obs, det)
    if plan.launch.quality_watch.enabled:   # the promise first: a threshold swap is the cheapest change there is
        from cascadia_sky.reschedule.quality import quality_step

        result.quality = quality_step(name, plan, snapshot, history, store, rec.spec_path, apply=apply, now=now,
                                      progress=progress)
        if result.quality.thresholds:
            result.kind, result.applied = "router", result.quality.applied
            result.message = "" if apply else "dry run: `cascadia reschedule NAME --apply` acts"
            return result
    if not det.drift:
        return result
    assert det.target is not None
    spec = _spec_of(rec.spec_path, name)
    progress(f"{det.describe()}; re-planning")
    same_lengths = all(o is None or not r or r / (1 + settings.length_band) <= o <= r * (1 + settings.length_band)
                       for o, r in ((det.target.input_p50, reference.input_p50),
                                    (det.target.output_p50, reference.output_p50)))
    rp = replan(plan, spec, det.target, det.peak_rate_rps, min_gain=settings.min_gain,
                down_headroom=settings.down_headroom, less_load=det.verdict is Verdict.DRIFT_DOWN,
                same_lengths=same_lengths)
    if plan.launch.quality_watch.enabled:
        from cascadia_sky.reschedule.quality import keep_floors, quality_floors

        rp = keep_floors(rp, quality_floors(history.events(name, 1000)))
    result.replan = rp
    result.actions = decide(rec, rp.plan) if rp.worth_it else []
    result.kind = change_kind(result.actions)
    if not rp.worth_it or not result.actions:
        result.message = "no change"
        if apply:   # the observed workload becomes the reference: the current plan carries it well enough
            history.record(Event(name, now, "applied", "none", f"{det.describe()}; {rp.reason}", "", rec.plan_json,
                                 (rp.reference or det.target).to_json()))
        return result
    if not apply:
        result.message = "dry run: `cascadia reschedule NAME --apply` acts"
        return result
    event = Event(name, now, "applying", result.kind, f"{det.describe()}; {rp.reason}",
                  "\n".join(a.describe() for a in result.actions), rp.plan.to_json(),
                  (rp.reference or det.target).to_json())   # the new thresholds' reach, once the new plan serves
    history.record(event)   # before anything acts
    try:
        up(Target(rp.plan, rec.spec_path), store=store, progress=progress)
    except CascadiaError as exc:
        history.record(Event(name, now_s(), "failed", result.kind, str(exc)[:2000], event.actions, event.plan_json,
                             event.reference_json))
        raise
    history.record(Event(name, now_s(), "applied", result.kind, event.reason, event.actions, event.plan_json,
                         event.reference_json))
    result.applied = True
    return result


def watch(name: str, *, apply: bool = True, store: StateStore | None = None, passes: int | None = None,
          report: Callable[[PassResult], None] = lambda r: None, stop: Callable[[], bool] = lambda: False,
          progress: Callable[[str], None] = lambda msg: None) -> None:
    """Run a pass every `reschedule.interval_s` (of the deployment's current plan) until `stop()` or `passes`."""
    store = store or StateStore()
    rec = store.get(name)
    if rec is not None and rec.spec_path.endswith((".yaml", ".yml")) and Path(rec.spec_path).is_file():
        from cascadia_sky.reschedule.replan import warm_up

        try:   # the performance model's curves for the planned lengths, so a rate-only re-plan is fast
            progress(f"warm start: planned {rec.spec_path} once in {warm_up(_spec_of(rec.spec_path, name)):.1f} s")
        except CascadiaError as exc:
            progress(f"warm start skipped: {exc}")
    done = 0
    while not stop() and (passes is None or done < passes):
        t0 = time.monotonic()
        rec = store.get(name)
        if rec is None or rec.plan is None:
            return
        interval = rec.plan.launch.reschedule.interval_s
        try:
            report(reschedule_pass(name, apply=apply, store=store, progress=progress))
        except CascadiaError as exc:
            progress(f"re-schedule pass failed: {exc}")
        done += 1
        while not stop() and time.monotonic() - t0 < interval:
            time.sleep(min(0.5, interval))


__all__ = ["PassResult", "STEP_COST", "change_kind", "reschedule_pass", "watch"]
