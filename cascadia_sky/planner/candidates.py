"""Candidate deployments per stage: every DP x TP x PP that fits, priced by the performance model.

A candidate is one way to serve one stage's workload (its arrival rate and request lengths): a GPU type, TP
(within one node), PP, and a number of replicas, with the p95 latency the performance model predicts (math.inf when
the replicas cannot sustain the rate) and, in cloud mode, the $/h of the instances it rents.

The set of deployments is fixed per stage (a `StageTable`): only the latencies depend on the rate. So L is
monotone in the share of traffic reaching each stage (a higher rate only raises latencies), which the exact
threshold search uses as a bound, and the search can price every reach level at once (`latency_matrix`).

Pool mode: every (TP, PP, DP) with TP * PP * DP <= N on the pool's GPU type.
Cloud mode: for every allowed GPU type and (TP, PP), DP = 1..CLOUD_MAX_REPLICAS replicas, each replica on whole
instances holding exactly its TP * PP GPUs (TP within one instance), on the cheapest such offer. No two replicas
share an instance: SkyPilot launches one replica per instance set, and prices it so (issue 13).
A stage that no request reaches gets one candidate: no replicas, no GPUs, no cost.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Sequence

import numpy as np

from cascadia_sky.catalog import GpuSpec, Offer, get_gpu
from cascadia_sky.constants import (
    BURST_SATURATION_FRACTION,
    BURST_WAIT_GRID_POINTS,
    BURST_FLUID_WINDOW_SECONDS,
    CLOUD_MAX_REPLICAS,
    CURVE_MIN_HEADROOM_FRACTION,
    CURVE_POINTS,
    MAX_PIPELINE_PARALLEL,
)
from cascadia_sky.errors import PerfError
from cascadia_sky.models import ModelArch
from cascadia_sky.perf import Deployment, LengthDist, OpenLoopEstimate, memory_fit, open_loop
from cascadia_sky.perf.serving import open_loop_rates
from cascadia_sky.perf.shapes import shape_grid
from cascadia_sky.planner.deploy import Candidate


@dataclass(frozen=True)
class StageSetup:
    """What is fixed about a stage during planning: its model and the allowed parallelism."""

    index: int
    name: str
    model: ModelArch
    precision: str
    max_context: int
    gpu_types: tuple[str, ...]
    tp_pin: int | None = None
    pp_pin: int | None = None


def parallel_shapes(stage: StageSetup, gpu: GpuSpec, max_gpus: int) -> list[tuple[int, int]]:
    """(TP, PP) pairs that fit memory with one full context (the grid of `perf.shapes`)."""
    return [(tp, pp) for tp, pp in shape_grid(gpu.gpus_per_node, max_gpus, stage.tp_pin, stage.pp_pin)
            if memory_fit(Deployment(model=stage.model, gpu=gpu, tp=tp, pp=pp, precision=stage.precision),
                          stage.max_context).fits]


def estimate(stage: StageSetup, gpu: GpuSpec, tp: int, pp: int, replicas: int, rate_rps: float,
             lengths: LengthDist, *, p95_only: bool = False) -> OpenLoopEstimate | None:
    """The performance model's open-loop estimate, or None when the configuration cannot serve at all."""
    dep = Deployment(model=stage.model, gpu=gpu, tp=tp, pp=pp, precision=stage.precision)
    try:
        return open_loop(dep, rate_rps, lengths, replicas=replicas, p95_only=p95_only)
    except PerfError:
        return None


def _p95(est: OpenLoopEstimate | None) -> float:
    return est.e2e_p95_s if est is not None and est.stable else math.inf


class LatencyCurve:
    """p95 latency of one replica shape (model, GPU, TP, PP, lengths) as a function of its per-replica rate.

    The threshold search asks for the same shapes at many rates (one per share of traffic a stage receives, and
    per replica count), so the performance model is evaluated once per shape on a utilisation grid that is dense
    near saturation, and queries interpolate log(p95) against -log(1 - utilisation), where queueing delay is close
    to linear. Rates at or beyond the last grid point are unsustainable (inf). The tests bound the error against
    direct evaluation.
    """

    def __init__(self, stage: StageSetup, gpu: GpuSpec, tp: int, pp: int, lengths: LengthDist) -> None:
        self.max_rate_rps = 0.0
        self._x = np.zeros(0)
        self._y = np.zeros(0)
        dep = Deployment(model=stage.model, gpu=gpu, tp=tp, pp=pp, precision=stage.precision)
        try:
            probe = open_loop_rates(dep, [0.0], lengths, p95_only=True)[0]
        except PerfError:
            return
        if probe.max_rate_rps <= 0:
            return
        self.max_rate_rps = probe.max_rate_rps
        util = np.concatenate([[0.0], 1.0 - np.geomspace(1.0, CURVE_MIN_HEADROOM_FRACTION, CURVE_POINTS)[1:]])
        xs, ys = [], []
        ests = open_loop_rates(dep, [float(u) * self.max_rate_rps for u in util], lengths, p95_only=True)
        for u, est in zip(util, ests, strict=True):
            p95 = _p95(est)
            if not math.isfinite(p95):
                break
            xs.append(-math.log1p(-float(u)))
            ys.append(math.log(p95))
        self._x, self._y = np.asarray(xs), np.asarray(ys)

    def p95(self, rate_per_replica: float) -> float:
        """Interpolated p95 latency in seconds (inf when the replica cannot keep up)."""
        return float(self.p95_many(np.asarray([rate_per_replica], dtype=float))[0])

    def p95_many(self, rate_per_replica: np.ndarray) -> np.ndarray:
        """`p95` for an array of per-replica rates (the same arithmetic, so scalar and vector agree exactly)."""
        rates = np.asarray(rate_per_replica, dtype=float)
        if self._x.size == 0:
            return np.full(rates.shape, math.inf)
        u = rates / self.max_rate_rps
        ok = u < 1.0
        x = -np.log1p(-np.where(ok, u, 0.0))
        ok &= x <= self._x[-1] + 1e-12
        return np.where(ok, np.exp(np.interp(x, self._x, self._y)), math.inf)


OfferUses = Callable[[Offer, int], Mapping[str, float]]   # (offer, instances) -> capacity group -> amount
Curves = dict[tuple[str, int, int], LatencyCurve]


@dataclass(frozen=True)
class Burst:
    """Pointwise-stationary traffic (see planner/latency.py): window rates as multiples of the mean rate.

    `factors`/`weights`: equal-request bins of the window rates (weights = share of requests, summing to 1), where
    the per-replica queue model is evaluated; `sequence`: every window's factor in time order; `fine`: the same
    for the short windows (`BURST_FLUID_WINDOW_SECONDS`) of the fluid queue, the backlog that a burst above capacity
    leaves to the next windows. Poisson traffic at the mean rate is `steady()`.
    """

    factors: np.ndarray
    weights: np.ndarray
    sequence: np.ndarray
    fine: np.ndarray

    @staticmethod
    def steady() -> Burst:
        return Burst(np.ones(1), np.ones(1), np.ones(0), np.ones(0))

    @functools.cached_property
    def _wait_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The fluid wait as a function of utilisation u = rate / capacity alone (it scales out): B' = max(0, B +
        (u f_w - 1) W) in units of capacity x seconds; tabulated once on a fine grid (monotone in u)."""
        u = np.linspace(0.0, 1.0, BURST_WAIT_GRID_POINTS)
        seq = self.fine
        share = seq / seq.sum()
        backlog, total = np.zeros(u.size), np.zeros(u.size)
        for f, w in zip(seq, share, strict=True):
            if f == 0.0 and not backlog.any():
                continue
            nxt = np.maximum(0.0, backlog + (u * f - 1.0) * BURST_FLUID_WINDOW_SECONDS)
            total += w * (backlog + nxt) / 2.0
            backlog = nxt
        return u, total

    def fluid_wait(self, rates: np.ndarray, capacity: float) -> np.ndarray:
        """Request-weighted mean wait behind the backlog of overloaded windows: B' = max(0, B + (r f_w - c) W),
        a window's requests wait (B + B') / 2c on average (interpolated in utilisation)."""
        if self.fine.size == 0 or capacity <= 0:
            return np.zeros(np.shape(rates))
        u, wait = self._wait_curve
        return np.interp(np.asarray(rates, dtype=float) / capacity, u, wait)

    def p95(self, curve: LatencyCurve, rates: np.ndarray) -> np.ndarray:
        """Request-weighted mean over window-rate bins of the p95 at the bin's rate (capped just below capacity),
        plus the fluid backlog wait. A mean rate at or beyond capacity stays unsustainable (inf)."""
        rates = np.asarray(rates, dtype=float)
        if self.sequence.size == 0:
            return curve.p95_many(rates)
        cap = curve.max_rate_rps
        if cap <= 0:
            return np.full(rates.shape, math.inf)
        top = BURST_SATURATION_FRACTION * cap
        out = np.zeros(rates.shape)
        for f, w in zip(self.factors, self.weights, strict=True):
            out += w * curve.p95_many(np.minimum(rates * f, top))
        out += self.fluid_wait(rates, cap)
        return np.where(rates < top, out, math.inf)


def _curve(curves: Curves, stage: StageSetup, gpu: GpuSpec, tp: int, pp: int, lengths: LengthDist) -> LatencyCurve:
    key = (gpu.name, tp, pp)
    if key not in curves:
        curves[key] = LatencyCurve(stage, gpu, tp, pp, lengths)
    return curves[key]


def off_candidate(stage: int, gpu_type: str) -> Candidate:
    """The deployment of a stage that no request reaches: no replicas, no GPUs, no cost, no latency."""
    return Candidate(stage=stage, gpu_type=gpu_type, tp=1, pp=1, replicas=0, gpus=0, p95_latency_s=0.0,
                     usd_per_hour=0.0, key=f"s{stage}_off")


@dataclass(frozen=True)
class Structure:
    """The rate-independent part of a candidate: where and how, what it costs, and its latency curve."""

    template: Candidate            # p95_latency_s = 0 here; filled in per rate
    curve: LatencyCurve


class StageTable:
    """Every deployment of one stage (fixed), priced at any arrival rate."""

    def __init__(self, stage: int, structures: Sequence[Structure], off_gpu_type: str,
                 burst: Burst | None = None) -> None:
        self.stage = stage
        self.structures = tuple(structures)
        self.off = off_candidate(stage, off_gpu_type)
        self.burst = burst or Burst.steady()

    def candidates(self, rate_rps: float) -> tuple[Candidate, ...]:
        """Every structure at this stage rate; the zero-GPU candidate alone when no request arrives."""
        if rate_rps <= 0:
            return (self.off,)
        lat = self.latency_matrix(np.array([rate_rps]))[0]
        return tuple(dataclasses.replace(s.template, p95_latency_s=float(p95))
                     for s, p95 in zip(self.structures, lat, strict=True))

    def latency_matrix(self, rates_rps: np.ndarray) -> np.ndarray:
        """(len(rates), structures) p95 of every structure at every stage rate (rates > 0); one vectorised
        evaluation per latency curve (structures sharing a shape differ only in replicas)."""
        rates = np.asarray(rates_rps, dtype=float)
        out = np.empty((rates.size, len(self.structures)))
        groups: dict[int, list[int]] = {}
        for j, s in enumerate(self.structures):
            groups.setdefault(id(s.curve), []).append(j)
        for cols in groups.values():
            replicas = np.array([self.structures[j].template.replicas for j in cols], dtype=float)
            out[:, cols] = self.burst.p95(self.structures[cols[0]].curve, rates[:, None] / replicas[None, :])
        return out


def pool_table(stage: StageSetup, gpu_type: str, pool_gpus: int, lengths: LengthDist,
               curves: Curves | None = None) -> StageTable:
    """Every TP x PP x DP on the pool's GPU type with at most N GPUs."""
    gpu = get_gpu(gpu_type)
    curves = {} if curves is None else curves
    out = []
    for tp, pp in parallel_shapes(stage, gpu, pool_gpus):
        curve = _curve(curves, stage, gpu, tp, pp, lengths)
        for dp in range(1, pool_gpus // (tp * pp) + 1):
            out.append(Structure(Candidate(stage=stage.index, gpu_type=gpu.name, tp=tp, pp=pp, replicas=dp,
                                           gpus=tp * pp * dp, p95_latency_s=0.0, usd_per_hour=0.0,
                                           key=f"s{stage.index}_{gpu.name}_tp{tp}_pp{pp}_r{dp}"), curve))
    return StageTable(stage.index, out, gpu.name)


def pool_candidates(stage: StageSetup, gpu_type: str, pool_gpus: int, rate_rps: float, lengths: LengthDist,
                    curves: Curves | None = None) -> tuple[Candidate, ...]:
    """Every TP x PP x DP on the pool's GPU type with at most N GPUs, at one stage rate."""
    return pool_table(stage, gpu_type, pool_gpus, lengths, curves).candidates(rate_rps)


def local_candidates(stage: StageSetup, rate_rps: float, lengths: LengthDist,
                     max_replicas: int = 1) -> tuple[Candidate, ...]:
    """A local stage runs as 1..max_replicas CPU engines on this machine, the load split evenly. Like cloud
    candidates, replicas stop being added once one more improves p95 by less than LOCAL_REPLICA_GAIN_FRACTION, so
    the fastest candidate is also the smallest that the load needs (an idle engine costs a core)."""
    from cascadia_sky.constants import LOCAL_REPLICA_GAIN_FRACTION
    from cascadia_sky.perf.local import local_open_loop
    from cascadia_sky.spec import LOCAL_DEVICE

    out: list[Candidate] = []
    for r in range(1, max_replicas + 1):
        p95 = _p95(local_open_loop(stage.model, rate_rps / r, lengths))
        if out and not p95 < out[-1].p95_latency_s * (1 - LOCAL_REPLICA_GAIN_FRACTION):
            break
        out.append(Candidate(stage=stage.index, gpu_type=LOCAL_DEVICE, tp=1, pp=1, replicas=r, gpus=r,
                             p95_latency_s=p95, usd_per_hour=0.0, key=f"s{stage.index}_{LOCAL_DEVICE}_r{r}"))
    return tuple(out)


def _instances(tp: int, pp: int, offer: Offer, replicas: int) -> int | None:
    """Instances for `replicas` replicas of TP x PP GPUs, each replica on whole instances of exactly its GPUs;
    None when a replica would not fill its instances (or TP would span instances)."""
    per_replica = tp * pp
    if tp > offer.gpus or per_replica % offer.gpus:
        return None
    return replicas * per_replica // offer.gpus


def cloud_table(stage: StageSetup, offers: Sequence[Offer], spot: bool, lengths: LengthDist,
                max_gpus_by_type: dict[str, int] | None = None, curves: Curves | None = None,
                offer_uses: OfferUses | None = None, caps: Mapping[str, float] | None = None) -> StageTable:
    """Per allowed GPU type and (TP, PP): replicas 1..CLOUD_MAX_REPLICAS on the cheapest offer holding each
    replica on whole instances.

    With `offer_uses` (what renting n instances of an offer uses of capacity groups, e.g. EC2 vCPU quotas) the
    cheapest offer is kept per set of groups used, preferring offers whose one replica fits `caps`, so the MILP can
    move a stage to another region or family when one group is spent."""
    curves = {} if curves is None else curves
    caps = {} if caps is None else caps
    out: list[Structure] = []
    by_type: dict[str, list[Offer]] = {}
    for o in offers:
        if o.gpu in stage.gpu_types and (not spot or o.spot_usd_per_hour is not None):
            by_type.setdefault(o.gpu, []).append(o)
    for gpu_type in sorted(by_type):
        gpu = get_gpu(gpu_type)
        type_offers = by_type[gpu_type]
        cap = (max_gpus_by_type or {}).get(gpu_type)
        max_gpus = cap if cap is not None else CLOUD_MAX_REPLICAS * gpu.gpus_per_node * MAX_PIPELINE_PARALLEL
        for tp, pp in parallel_shapes(stage, gpu, max_gpus):
            groups: dict[tuple[str, ...], list[tuple[bool, float, Offer, int]]] = {}
            for o in type_offers:
                n = _instances(tp, pp, o, 1)
                if n is None:
                    continue
                uses = offer_uses(o, n) if offer_uses is not None else {}
                over = any(amount > caps.get(key, math.inf) for key, amount in uses.items())
                groups.setdefault(tuple(sorted(uses)), []).append((over, o.price(spot) * n, o, n))
            if not groups:
                continue
            curve = _curve(curves, stage, gpu, tp, pp, lengths)
            if curve.max_rate_rps <= 0:
                continue
            for group, priced in sorted(groups.items()):
                _, unit, o, n_inst = min(priced, key=lambda t: (t[0], t[1], t[2].cloud, t[2].region,
                                                                t[2].instance_type))
                suffix = "" if len(groups) == 1 and not group else "_" + "_".join(
                    [o.region, *(k.rsplit(":", 2)[-2] for k in group)])
                for dp in range(1, CLOUD_MAX_REPLICAS + 1):
                    if tp * pp * dp > max_gpus:
                        break
                    out.append(Structure(Candidate(
                        stage=stage.index, gpu_type=gpu.name, tp=tp, pp=pp, replicas=dp, gpus=tp * pp * dp,
                        p95_latency_s=0.0, usd_per_hour=round(unit * dp, 6), cloud=o.cloud, region=o.region,
                        instance_type=o.instance_type, gpus_per_instance=o.gpus, instances=n_inst * dp, spot=spot,
                        uses=dict(offer_uses(o, n_inst * dp)) if offer_uses is not None else {},
                        key=f"s{stage.index}_{gpu.name}_tp{tp}_pp{pp}_r{dp}{suffix}"), curve))
    return StageTable(stage.index, out, stage.gpu_types[0] if stage.gpu_types else "none")


def cloud_candidates(stage: StageSetup, offers: Sequence[Offer], spot: bool, rate_rps: float,
                     lengths: LengthDist, max_gpus_by_type: dict[str, int] | None = None,
                     curves: Curves | None = None) -> tuple[Candidate, ...]:
    """`cloud_table` at one stage rate, without the deployments that cannot sustain it."""
    table = cloud_table(stage, offers, spot, lengths, max_gpus_by_type, curves)
    return tuple(c for c in table.candidates(rate_rps) if math.isfinite(c.p95_latency_s))
