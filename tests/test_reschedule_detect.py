"""detect(): a pure function over synthetic series of observations (no router, no clock)."""

from __future__ import annotations

import random

from cascadia_sky.reschedule.detect import Verdict, detect
from cascadia_sky.reschedule.observe import (
    Observation,
    Reference,
    StageObservation,
    observation_from_stats,
)
from cascadia_sky.spec import RescheduleSpec

S = RescheduleSpec(interval_s=10, windows=3, windows_down=6, cooldown_s=30, min_requests=20)
REF = Reference(rate_rps=4.0, reach=(1.0, 0.3), input_p50=100.0, output_p50=50.0)


def obs(t: float, rate: float, reach2: float = 0.3, input_p50: float = 100.0, window: float = 10.0) -> Observation:
    n = round(rate * window)
    return Observation(t=t, window_s=window, requests=n, rate_rps=rate, errors=0, input_p50=input_p50,
                       input_p95=None, output_p50=50.0, output_p95=None,
                       stages=(StageObservation("small", n, 1.0, reach2, 0),
                               StageObservation("large", round(n * reach2), reach2, 0.0, 0)))


def series(rates: list[float], **kw: float) -> list[Observation]:
    return [obs(10.0 * (i + 1), r, **kw) for i, r in enumerate(rates)]


def test_in_band_is_steady() -> None:
    assert detect(series([4.0, 4.5, 3.5]), REF, S, now=30).verdict is Verdict.STEADY


def test_rate_step_up_detected_after_exactly_the_configured_windows() -> None:
    rates = [4.0] * 5 + [9.0] * 5
    verdicts = [detect(series(rates[: k + 1]), REF, S, now=10.0 * (k + 1)).verdict for k in range(len(rates))]
    assert verdicts[:5] == [Verdict.STEADY] * 5
    assert verdicts[5:7] == [Verdict.WATCHING] * 2
    assert verdicts[7] is Verdict.DRIFT_UP            # the third out-of-band window
    d = detect(series(rates[:8]), REF, S, now=80)
    assert d.target is not None and abs(d.target.rate_rps - 9.0) < 1e-9 and d.peak_rate_rps == 9.0


def test_an_in_band_window_resets_the_count() -> None:
    assert detect(series([9.0, 9.0, 4.0, 9.0, 9.0]), REF, S, now=50).verdict is Verdict.WATCHING


def test_escalation_shift_at_flat_rate_is_drift() -> None:
    d = detect(series([4.0] * 3, reach2=0.6), REF, S, now=30)
    assert d.verdict is Verdict.DRIFT_UP and any("large reach" in r for r in d.reasons)
    assert d.target is not None and abs(d.target.reach[1] - 0.6) < 1e-9


def test_longer_prompts_are_drift() -> None:
    assert detect(series([4.0] * 3, input_p50=300.0), REF, S, now=30).verdict is Verdict.DRIFT_UP


def test_scale_down_needs_more_windows_than_up() -> None:
    low = series([1.0] * 5)
    assert detect(low, REF, S, now=50).verdict is Verdict.WATCHING
    assert detect(series([1.0] * 6), REF, S, now=60).verdict is Verdict.DRIFT_DOWN


def test_cooldown_and_windows_before_the_change_are_ignored() -> None:
    s = series([9.0] * 6)
    assert detect(s, REF, S, now=60, last_change_t=40).verdict is Verdict.COOLDOWN
    # after the cool-down only windows that began after the change count (t - window >= 40: t = 50, 60)
    assert detect(s, REF, S, now=75, last_change_t=40).verdict is Verdict.WATCHING
    assert detect(s + [obs(70, 9.0)], REF, S, now=75, last_change_t=40).verdict is Verdict.DRIFT_UP


def test_sparse_windows_are_no_evidence() -> None:
    sparse = series([1.0, 1.0, 1.0], reach2=0.9)   # 10 requests each, 10 expected: neither reach nor rate counts
    assert detect(sparse, Reference(1.0, (1.0, 0.3)), S, now=30).verdict is Verdict.NO_DATA
    quiet = series([0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0])  # a low planned rate with empty windows: no scale-down
    assert detect(quiet, Reference(0.05, (1.0, 0.3)), S, now=70).verdict is Verdict.NO_DATA
    # few requests against many expected is evidence (the load went away)
    assert detect(series([0.1] * 6), REF, S, now=60).verdict is Verdict.DRIFT_DOWN
    # a load of min_requests per window above a sparse planned rate is evidence
    d = detect(series([2.0] * 3), Reference(0.05, (1.0, 0.3)), S, now=30)
    assert d.verdict is Verdict.DRIFT_UP and d.reasons == ("rate 2/s vs planned 0.05/s",)


def test_constant_poisson_load_never_drifts() -> None:
    """A constant load (Poisson counts, noisy reach and lengths) for 1000 windows: no drift at the default band."""
    rng = random.Random(7)
    s = RescheduleSpec(interval_s=60, min_requests=20)
    ref = Reference(rate_rps=2.0, reach=(1.0, 0.3), input_p50=100.0, output_p50=50.0)
    history: list[Observation] = []
    drifts = 0
    for k in range(1000):
        n = sum(1 for _ in range(1200) if rng.random() < 2.0 * 60 / 1200)  # binomial ~ Poisson(120)
        reached = sum(1 for _ in range(n) if rng.random() < 0.3)
        history.append(Observation(t=60.0 * (k + 1), window_s=60, requests=n, rate_rps=n / 60, errors=0,
                                   input_p50=rng.gauss(100, 5), input_p95=None, output_p50=rng.gauss(50, 3),
                                   output_p95=None, stages=(StageObservation("a", n, 1.0, 0.3, 0),
                                                            StageObservation("b", reached, reached / n, 0, 0))))
        drifts += detect(history[-10:], ref, s, now=60.0 * (k + 1)).drift
    assert drifts == 0


def test_observation_from_router_stats_shape() -> None:
    snap = {"windows": {"10": {"window_s": 10, "requests": 40, "arrival_rate_per_s": 4.0, "errors": 1,
                               "input_tokens": {"count": 40, "p50": 90.0, "p95": 200.0},
                               "output_tokens": {"count": 0},
                               "stages": {"small": {"reached": 40, "escalated_share": 0.25, "failed": 0},
                                          "large": {"reached": 10, "escalated_share": 0.0, "failed": 1}}},
                        "60": {"window_s": 60, "requests": 0, "arrival_rate_per_s": 0.0, "stages": {}}}}
    o = observation_from_stats(snap, ["small", "large"], interval_s=10, t=5.0)
    assert (o.requests, o.rate_rps, o.input_p50, o.output_p50, o.reach()) == (40, 4.0, 90.0, None, (1.0, 0.25))
    assert o.stages[1].failed == 1 and o.errors == 1


def test_a_switch_that_reads_down_on_rate_and_up_on_lengths_drifts_up_after_the_up_windows() -> None:
    """Another kind of traffic (fewer, longer prompts): some windows are out of band only downwards (rate), others
    upwards (input length). Every window is off the plan: drift after `windows`, not reset by the direction."""
    mixed = [obs(10.0, 2.0, input_p50=200.0), obs(20.0, 2.0, input_p50=110.0), obs(30.0, 2.0, input_p50=200.0)]
    d = detect(mixed, REF, S, now=30)
    assert d.verdict is Verdict.DRIFT_UP and d.reasons == ("input p50 200 vs 100 tokens",)
    assert d.target is not None and d.target.rate_rps == 2.0 and d.windows_out == 3
    # only downwards for fewer than windows_down windows: still watching
    assert detect(series([2.0] * 5), REF, S, now=50).verdict is Verdict.WATCHING
    # an in-band window between them still resets the run
    assert detect([*mixed[:2], obs(30.0, 4.0), obs(40.0, 2.0, input_p50=200.0)], REF, S,
                  now=40).verdict is Verdict.WATCHING


def test_a_reach_move_within_the_windows_own_noise_is_not_drift() -> None:
    """30 requests a window: a reach of 0.3 reads 0.45 by chance (3 standard errors are 0.25); 300: it does not."""
    few = [obs(10.0 * (i + 1), 4.0, reach2=0.45, window=7.5) for i in range(3)]
    assert detect(few, REF, S, now=30).verdict is Verdict.STEADY
    many = [obs(10.0 * (i + 1), 4.0, reach2=0.45, window=75.0) for i in range(3)]
    assert detect(many, REF, S, now=30).verdict is Verdict.DRIFT_UP


def test_panic_during_the_cooldown_only_for_a_load_far_above_the_new_plan() -> None:
    """A change at t=40 (cool-down 60 s, windows of 10 s): three windows since, at 2x the rate planned for or more,
    drift up before the cool-down ends; at 1.5x they wait for it; windows from before the change never count."""
    s60 = RescheduleSpec(interval_s=10, windows=3, windows_down=6, cooldown_s=60, min_requests=20)
    heavy = [obs(40.0 + 10.0 * (i + 1), 8.5) for i in range(3)]        # t = 50, 60, 70 (began at 40, 50, 60)
    d = detect(heavy, REF, s60, now=70, last_change_t=40.0)
    assert d.verdict is Verdict.DRIFT_UP and "cool-down" in d.reasons[0] and d.peak_rate_rps == 8.5
    assert d.target is not None and d.target.rate_rps == 8.5
    assert detect([obs(40.0 + 10.0 * (i + 1), 6.0) for i in range(3)], REF, s60, now=70,
                  last_change_t=40.0).verdict is Verdict.COOLDOWN
    assert detect([obs(40.0, 9.0), *heavy[:2]], REF, s60, now=60, last_change_t=40.0).verdict is Verdict.COOLDOWN
