"""Detect: is the live workload still the one the plan was made for? A pure function of a series of observations,
the reference workload, the settings, the clock and the time of the last change.

- A window is *out of band* when its rate leaves [R/(1+b), R*(1+b)], a later stage's reach moves by more than the
  reach band (and by more than three standard errors of the window's count), or a median length leaves its band. Up (more load: any signal up) wins over down.
- Drift is `windows` consecutive windows out of band with at least one of them upwards, or `windows_down` (more)
  all downwards: growing is urgent, shrinking is not (SkyServe waits 300 s up / 1200 s down; Knative never shrinks
  in a burst). The windows of a run may point different ways (a switch to another kind of traffic reads "down" on
  its rate and "up" on its prompt lengths from one window to the next); a window back in band resets the run.
- A window with fewer than `min_requests` requests tells only its rate (lengths and reach need samples), and
  only when the plan expected at least `min_requests` in it: when both the observed and the expected counts are
  that small the window is *sparse* (Poisson noise, not evidence) and neither drifts nor resets the count.
- Windows that began before the last change measured the old deployment and are ignored; no verdict during the
  cool-down, except *panic*: `windows` windows since the change all at 2x the rate just planned for or more (the
  plan applied is far too small; Knative's panic mode) drift up at once.
- The workload to re-plan for (`Detection.target`) is the mean of the drifted windows, with their peak rate beside
  it: the re-planner sizes a smaller deployment for peak x down_headroom (the load of the replicas it removes
  must fit on the ones it keeps), and the *reference* after the change is the observed mean, so a constant load
  sits in the middle of the new band and cannot flip-flop between two plans.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from cascadia_sky.constants import (
    RESCHEDULE_PANIC_RATE_FACTOR,
    RESCHEDULE_REACH_NOISE_Z,
)
from cascadia_sky.reschedule.observe import Observation, Reference
from cascadia_sky.spec import RescheduleSpec


class Verdict(str, Enum):
    """What the detector concluded."""

    STEADY = "steady"            # the newest usable window is inside the band
    WATCHING = "watching"        # out of band, but not for enough consecutive windows yet
    NO_DATA = "no_data"          # no usable (non-sparse) window since the last change
    COOLDOWN = "cooldown"        # a change was applied less than cooldown_s ago
    DRIFT_UP = "drift_up"        # sustained: more load (rate, reach or lengths) than planned for
    DRIFT_DOWN = "drift_down"    # sustained: less load than planned for


@dataclass(frozen=True)
class Detection:
    verdict: Verdict
    reasons: tuple[str, ...] = ()
    windows_out: int = 0         # consecutive out-of-band windows in the newest direction
    windows_needed: int = 0
    target: Reference | None = None   # the observed workload (mean over the drifted windows)
    peak_rate_rps: float | None = None

    @property
    def drift(self) -> bool:
        return self.verdict in (Verdict.DRIFT_UP, Verdict.DRIFT_DOWN)

    def describe(self) -> str:
        if self.verdict in (Verdict.STEADY, Verdict.NO_DATA, Verdict.COOLDOWN):
            return self.verdict.value
        why = "; ".join(self.reasons)
        return f"{self.verdict.value} ({self.windows_out}/{self.windows_needed} windows): {why}"


def _band(value: float, ref: float, band: float) -> int:
    """+1 above the band, -1 below, 0 inside (multiplicative band: symmetric in log space)."""
    if value > ref * (1 + band):
        return 1
    if value < ref / (1 + band):
        return -1
    return 0


def sparse(obs: Observation, ref: Reference, s: RescheduleSpec) -> bool:
    """Too few requests observed *and* expected for the window to be evidence either way."""
    return obs.requests < s.min_requests and ref.rate_rps * obs.window_s < s.min_requests


def window_direction(obs: Observation, ref: Reference, s: RescheduleSpec) -> tuple[int, tuple[str, ...]]:
    """(+1 up / -1 down / 0 in band, the reasons) for one (non-sparse) window."""
    ups: list[str] = []
    downs: list[str] = []

    def note(d: int, text: str) -> None:
        (ups if d > 0 else downs).append(text)

    d = _band(obs.rate_rps, ref.rate_rps, s.rate_band) if ref.rate_rps > 0 else (1 if obs.rate_rps > 0 else 0)
    if d:
        note(d, f"rate {obs.rate_rps:.3g}/s vs planned {ref.rate_rps:.3g}/s")
    if obs.requests >= s.min_requests:
        for i, (o, r) in enumerate(zip(obs.reach(), ref.reach)):
            # beyond the band *and* beyond the window's own sampling noise (a minute of 100 requests moves a
            # reach of 0.5 by 0.05 on its own: three standard errors are 0.15)
            noise = RESCHEDULE_REACH_NOISE_Z * math.sqrt(max(r * (1 - r), 0.0) / obs.requests)
            if i and abs(o - r) > max(s.reach_band, noise):
                note(1 if o > r else -1, f"{obs.stages[i].name} reach {o:.2f} vs {r:.2f}")
        for label, o, r in (("input p50", obs.input_p50, ref.input_p50), ("output p50", obs.output_p50,
                                                                        ref.output_p50)):
            if o is not None and r:
                d = _band(o, r, s.length_band)
                if d:
                    note(d, f"{label} {o:.0f} vs {r:.0f} tokens")
    if ups:
        return 1, tuple(ups)
    if downs:
        return -1, tuple(downs)
    return 0, ()


def _usable(obs: Observation, since: float | None) -> bool:
    return since is None or obs.t - obs.window_s >= since


def _mean_reference(drifted: Sequence[Observation], ref: Reference, s: RescheduleSpec) -> Reference:
    rich = [o for o in drifted if o.requests >= s.min_requests] or list(drifted)
    reach = tuple(statistics.fmean(o.reach()[i] for o in rich) for i in range(len(ref.reach)))
    ins = [o.input_p50 for o in rich if o.input_p50 is not None]
    outs = [o.output_p50 for o in rich if o.output_p50 is not None]
    newest = rich[-1]
    return Reference(rate_rps=statistics.fmean(o.rate_rps for o in drifted), reach=reach,
                     input_p50=statistics.median(ins) if ins else ref.input_p50,
                     output_p50=statistics.median(outs) if outs else ref.output_p50,
                     input_q=newest.input_q or ref.input_q, output_q=newest.output_q or ref.output_q,
                     requests=sum(o.requests for o in rich))


def _panic(observations: Sequence[Observation], reference: Reference, settings: RescheduleSpec,
           since: float) -> Detection | None:
    """During the cool-down: `windows` windows (all begun after the change) at RESCHEDULE_PANIC_RATE_FACTOR x the
    reference rate or more. The plan just applied is far too small (it was made for a load that has moved on since);
    waiting out the cool-down would leave it overloaded. Knative's autoscaler does the same in its panic mode
    (desired capacity >= 2x the current one: scale up at once, never down)."""
    fresh = [o for o in observations if _usable(o, since) and not sparse(o, reference, settings)]
    run = fresh[-settings.windows:]
    if (len(run) < settings.windows or reference.rate_rps <= 0
            or any(o.rate_rps < RESCHEDULE_PANIC_RATE_FACTOR * reference.rate_rps for o in run)):
        return None
    why = (f"rate {run[-1].rate_rps:.3g}/s >= {RESCHEDULE_PANIC_RATE_FACTOR:g} x the {reference.rate_rps:.3g}/s "
           f"just planned for, during the cool-down",)
    return Detection(Verdict.DRIFT_UP, why, len(run), settings.windows, target=_mean_reference(run, reference, settings),
                     peak_rate_rps=max(o.rate_rps for o in run))


def detect(observations: Sequence[Observation], reference: Reference, settings: RescheduleSpec, now: float,
           last_change_t: float | None = None) -> Detection:
    """The verdict on a series of observations (oldest first). Pure: reads only its arguments."""
    if last_change_t is not None and now - last_change_t < settings.cooldown_s:
        panic = _panic(observations, reference, settings, last_change_t)
        if panic is not None:
            return panic
        return Detection(Verdict.COOLDOWN, (f"{settings.cooldown_s - (now - last_change_t):.0f} s of cool-down "
                                            f"left",))
    usable = [o for o in observations if _usable(o, last_change_t) and not sparse(o, reference, settings)]
    if not usable:
        return Detection(Verdict.NO_DATA)
    newest, reasons = window_direction(usable[-1], reference, settings)
    if newest == 0:
        return Detection(Verdict.STEADY)
    # the run: consecutive out-of-band windows, newest first, in either direction (a workload that switched can
    # read "down" on its rate and "up" on its lengths from one window to the next: it is off the plan all along)
    run: list[tuple[Observation, int, tuple[str, ...]]] = []
    for obs in reversed(usable):
        d, why = window_direction(obs, reference, settings)
        if d == 0:
            break
        run.append((obs, d, why))
        if len(run) == settings.windows_down:
            break
    up = [k for k, (_, d, _) in enumerate(run[: settings.windows]) if d > 0]
    if up:
        needed, verdict, reasons = settings.windows, Verdict.DRIFT_UP, run[up[0]][2]
    else:
        needed, verdict = settings.windows_down, Verdict.DRIFT_DOWN
    if len(run) < needed:
        return Detection(Verdict.WATCHING, reasons, len(run), needed)
    drifted = [o for o, _, _ in reversed(run[:needed])]
    return Detection(verdict, reasons, needed, needed, target=_mean_reference(drifted, reference, settings),
                     peak_rate_rps=max(o.rate_rps for o in drifted))


__all__ = ["Detection", "Verdict", "detect", "sparse", "window_direction"]
