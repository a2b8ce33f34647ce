"""What re-scheduling saw and did, in the launcher's state database (`<state home>/state.db`, own tables).

- `reschedule_observations`: the last windows observed per deployment, so that one-shot passes (`cascadia
  reschedule NAME`, run by cron or by hand) see a *series*, as the loop does.
- `reschedule_events`: every decision step, written *before* it acts: `applying` (with the new plan, the reason
  and the observed workload that becomes the new reference), then `applied` or `failed`. A pass that finds an
  `applying` with no outcome (an interrupted apply) resumes it: `up` of the recorded plan is idempotent.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from cascadia_sky.constants import RESCHEDULE_HISTORY_ROWS
from cascadia_sky.launch.state import StateStore, transaction
from cascadia_sky.reschedule.observe import Observation, Reference, StageObservation

_KEEP_OBSERVATIONS = 200   # per deployment; more than any windows_down a spec allows


@dataclass(frozen=True)
class Event:
    """One re-schedule step."""

    deployment: str
    t: float               # wall clock (seconds since the epoch)
    step: str              # applying | applied | failed | skipped
    kind: str              # router | scale | relaunch | none: the costliest action of the change
    reason: str
    actions: str = ""      # the launcher's actions, one per line
    plan_json: str = ""
    reference_json: str = ""


class History:
    """Observations and events of re-scheduling, beside the deployments in the state database."""

    def __init__(self, store: StateStore) -> None:
        self.path = store.path
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS reschedule_observations (deployment TEXT, t REAL, body TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS reschedule_events (deployment TEXT, t REAL, step TEXT, "
                       "kind TEXT, reason TEXT, actions TEXT, plan_json TEXT, reference_json TEXT)")

    def _db(self) -> Any:
        return transaction(self.path)

    # --- observations ----------------------------------------------------------------------

    def add_observation(self, name: str, obs: Observation) -> None:
        with self._db() as db:
            db.execute("INSERT INTO reschedule_observations VALUES (?, ?, ?)", (name, obs.t, json.dumps(asdict(obs))))
            db.execute("DELETE FROM reschedule_observations WHERE deployment = ? AND t NOT IN (SELECT t FROM "
                       "reschedule_observations WHERE deployment = ? ORDER BY t DESC LIMIT ?)",
                       (name, name, _KEEP_OBSERVATIONS))

    def observations(self, name: str) -> list[Observation]:
        with self._db() as db:
            rows = db.execute("SELECT body FROM reschedule_observations WHERE deployment = ? ORDER BY t",
                              (name,)).fetchall()
        out = []
        for (body,) in rows:
            d: dict[str, Any] = json.loads(body)
            d["stages"] = tuple(StageObservation(**s) for s in d["stages"])
            d["input_q"] = tuple(tuple(x) for x in d.get("input_q", ()))
            d["output_q"] = tuple(tuple(x) for x in d.get("output_q", ()))
            out.append(Observation(**d))
        return out

    # --- events -----------------------------------------------------------------------------

    def record(self, event: Event) -> None:
        with self._db() as db:
            db.execute("INSERT INTO reschedule_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (event.deployment, event.t, event.step, event.kind, event.reason, event.actions,
                        event.plan_json, event.reference_json))

    def events(self, name: str, limit: int = RESCHEDULE_HISTORY_ROWS) -> list[Event]:
        """The newest `limit` events, oldest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM reschedule_events WHERE deployment = ? ORDER BY t DESC, rowid DESC "
                              "LIMIT ?", (name, limit)).fetchall()
        return [Event(*r) for r in reversed(rows)]

    def last_change(self, name: str, changed_only: bool = False) -> Event | None:
        """The newest applied step (its reference is what drift is measured against); `changed_only`: the newest
        that changed the deployment (its time starts the cool-down; a "no change" decision does not)."""
        return next((e for e in reversed(self.events(name, 1000))
                     if e.step == "applied" and not (changed_only and e.kind == "none")), None)

    def unfinished(self, name: str) -> Event | None:
        """An `applying` step with no outcome after it (an interrupted apply)."""
        evs = [e for e in self.events(name, 1000) if e.step in ("applying", "applied", "failed")]
        return evs[-1] if evs and evs[-1].step == "applying" else None

    def reference(self, name: str) -> Reference | None:
        last = self.last_change(name)
        return Reference.from_json(last.reference_json) if last and last.reference_json else None

    def forget(self, name: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM reschedule_observations WHERE deployment = ?", (name,))
            db.execute("DELETE FROM reschedule_events WHERE deployment = ?", (name,))


def history_lines(name: str, store: StateStore | None = None) -> list[str]:
    """What `cascadia status NAME` adds: the plan that runs, the reason for the last change, a short history."""
    import datetime as _dt

    store = store or StateStore()
    rec = store.get(name)
    if rec is None or rec.plan is None:
        return []
    plan = rec.plan
    rs = plan.launch.reschedule
    lines = [f"plan: {plan.workload_rate_rps:.3g} req/s, p95 {plan.predicted.p95_latency_s:.3g} s; "
             + ", ".join(f"{s.name} x{s.replicas} {s.gpu_type} tp{s.tp} pp{s.pp} threshold {s.threshold}"
                         for s in plan.stages),
             f"re-schedule: {'on' if rs.enabled else 'off'} (every {rs.interval_s:g} s, drift after {rs.windows} "
             f"windows up / {rs.windows_down} down, cool-down {rs.cooldown_s:g} s)"]
    hist = History(store)
    events = hist.events(name)
    last = hist.last_change(name)
    if last is not None:
        lines.append(f"last change ({last.kind}): {last.reason}")
    for e in events:
        when = _dt.datetime.fromtimestamp(e.t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"  {when} {e.step:<8} {e.kind:<8} {e.reason[:160]}")
    return lines


def history_json(name: str, store: StateStore | None = None, limit: int = 20) -> dict | None:
    """`cascadia status NAME --json`: the re-schedule settings, the last change and its reason, recent steps."""
    store = store or StateStore()
    rec = store.get(name)
    if rec is None or rec.plan is None:
        return None
    rs = rec.plan.launch.reschedule
    hist = History(store)
    last = hist.last_change(name)
    return {"enabled": rs.enabled, "interval_s": rs.interval_s,
            "last_change": None if last is None else {"t": last.t, "kind": last.kind, "reason": last.reason},
            "events": [{"t": e.t, "step": e.step, "kind": e.kind, "reason": e.reason}
                       for e in hist.events(name, limit)]}


def now_s() -> float:
    return time.time()


__all__ = ["Event", "History", "history_lines", "now_s"]
