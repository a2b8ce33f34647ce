"""The quality profile re-weighted to the per-stage reach the router observes.

A shift of the score distribution (harder prompts, a new client, a drifting scorer) moves load onto later stages
while the total rate stays flat. The planner takes each stage's load from the profile (reach = share of the
profile's prompts that the thresholds pass on), so a re-plan with the profile as it is would size the later stages
for the old mix. The observed reach is the router's count under the *current* thresholds, so it pins down one thing
exactly: the share of requests each stage answers, `answered[i] = reach[i] - reach[i+1]`.

Method: the profile's prompts fall into classes by the stage that answers them under the current thresholds. The
re-weighting that meets the observed class shares and moves least from the profile (the I-projection: least
Kullback-Leibler divergence under the class-share constraints) scales every prompt of a class by the same factor,
observed share / profile share; within a class the profile's joint distribution of scores, qualities and lengths
is kept. The planner takes unweighted prompts, so the weights become copies: each class gets
round(n_out x observed share) prompts (largest remainders), spread over its prompts evenly in the order of the score
that routed them; n_out is chosen so that no prompt of the most shrunk class is dropped, up to
`RESCHEDULE_REACH_MAX_GROWTH` x the profile's size. Under the current thresholds the result reproduces the
observed reach to within 1/n_out; the planner then searches thresholds and deployments on it as on any profile
(the quality target, relative to the last model's quality, follows the new mix).

What it cannot know: whether the new requests would be answered well at other thresholds than the current ones
(the router sees scores, not quality). It assumes that within a class the new requests look like the profile's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cascadia_sky.constants import (
    RESCHEDULE_REACH_MAX_GROWTH,
    RESCHEDULE_REACH_NOISE_Z,
    RESCHEDULE_REACH_TOLERANCE_POINTS,
)
from cascadia_sky.errors import PlanError
from cascadia_sky.quality import QualityProfile


@dataclass(frozen=True)
class Reweighting:
    """What `reweight` did (for the re-plan's reason and the tests)."""

    profile_reach: tuple[float, ...]    # the profile's reach under the current thresholds
    target_reach: tuple[float, ...]     # the observed reach
    result_reach: tuple[float, ...]     # the re-weighted profile's reach under the current thresholds
    prompts: int                        # size of the re-weighted profile
    note: str = ""                      # a share the profile cannot represent (no prompt in that class)


def answered_shares(reach: Sequence[float]) -> np.ndarray:
    """Per-stage answered shares from a reach vector (reach[0] is 1; a later stage's reach never exceeds an
    earlier one's, clipped here so that averaging noise cannot make a share negative)."""
    r = np.minimum.accumulate(np.clip(np.asarray(reach, dtype=float), 0.0, 1.0))
    return np.append(r[:-1] - r[1:], r[-1])


def needs_reweighting(profile_reach: Sequence[float], observed: Sequence[float], observed_requests: int = 0,
                      profile_prompts: int = 0, tolerance: float = RESCHEDULE_REACH_TOLERANCE_POINTS) -> bool:
    """Whether some later stage's observed reach differs from the profile's by more than `tolerance` *and* by more
    than RESCHEDULE_REACH_NOISE_Z standard errors of the two counts (binomial; a count of 0 adds no noise): a
    minute of a few requests/s differs from the profile by a few points by chance alone."""
    for p, o in zip(profile_reach[1:], observed[1:]):
        var = p * (1 - p) * ((1 / observed_requests if observed_requests else 0.0)
                             + (1 / profile_prompts if profile_prompts else 0.0))
        if abs(o - p) > max(tolerance, RESCHEDULE_REACH_NOISE_Z * float(np.sqrt(var))):
            return True
    return False


def reweight(profile: QualityProfile, thresholds: Sequence[float], reach: Sequence[float],
             max_growth: float = RESCHEDULE_REACH_MAX_GROWTH) -> tuple[QualityProfile, Reweighting]:
    """The profile re-weighted (as copies of its prompts) so that `thresholds` give the observed `reach`."""
    n_st = profile.n_stages
    if len(reach) != n_st:
        raise PlanError(f"observed reach has {len(reach)} stages, the profile {n_st}; re-plan from a plan of this "
                          f"cascade")
    stage = profile.route(list(thresholds))
    n = stage.size
    counts = np.bincount(stage, minlength=n_st)
    want = answered_shares(reach)
    note = ""
    lost = (counts == 0) & (want > 0)
    if lost.any():
        names = ", ".join(profile.stage_models[i] for i in np.flatnonzero(lost))
        note = (f"no profile prompt is answered by {names} at the current thresholds; its observed share "
                f"{want[lost].sum():.2f} is spread over the other stages")
        want = np.where(lost, 0.0, want)
    if want.sum() <= 0:
        raise PlanError("the observed reach leaves no stage with profile prompts; re-plan from the cascade file")
    want = want / want.sum()
    have = counts / n
    ratio = np.divide(want, have, out=np.zeros(n_st), where=counts > 0)
    smallest = ratio[ratio > 0].min()
    n_out = round(float(min(n / smallest, max_growth * n)))
    exact = want * n_out
    per_class = np.floor(exact).astype(np.int64)
    short = n_out - int(per_class.sum())
    per_class[np.argsort(-(exact - per_class), kind="stable")[:short]] += 1
    copies = np.zeros(n, dtype=np.int64)
    scores = profile.scores
    for c in range(n_st):
        members = np.flatnonzero(stage == c)
        if not members.size or not per_class[c]:
            continue
        # the score that routed them: the answering stage's own (accepted) or, for the last stage, the one before
        by = scores[members, min(c, n_st - 2)] if n_st > 1 else np.zeros(members.size)
        members = members[np.argsort(by, kind="stable")]
        base, extra = divmod(int(per_class[c]), members.size)
        copies[members] += base
        if extra:
            copies[members[((np.arange(extra) + 0.5) * members.size / extra).astype(np.int64)]] += 1
    idx = np.repeat(np.arange(n), copies)
    out = profile.subset(idx)
    result = out.evaluate(list(thresholds)).reach
    before = profile.evaluate(list(thresholds)).reach
    return out, Reweighting(tuple(float(x) for x in before), tuple(float(x) for x in reach),
                            tuple(float(x) for x in result), int(idx.size), note)


__all__ = ["Reweighting", "answered_shares", "needs_reweighting", "reweight"]
