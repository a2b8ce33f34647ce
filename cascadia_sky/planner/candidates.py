"""Candidate deployments per stage: every DP x TP x PP that fits, priced by the performance model.

A candidate is one way to serve one stage's workload (its arrival rate and request lengths): a GPU type, TP
(within one node), PP, and a number of replicas, with the p95 latency the performance model predicts (math.inf when
the replicas cannot sustain the rate) and, in cloud mode, the $/h of the instances it rents.

Pool mode: every (TP, PP, DP) with TP * PP * DP <= N on the pool's GPU type.
Cloud mode: for every allowed GPU type and (TP, PP), the cheapest offer whose instances hold the replicas exactly
(TP * PP GPUs per replica: either a replica spans whole instances — TP within one instance — or several replicas
share one instance with no GPU left idle). Replicas grow from 1 until adding one improves p95 by less than
`CLOUD_REPLICA_GAIN_FRACTION` (more replicas then only cost more) or a cap is reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cascadia_sky.catalog import GpuSpec, Offer, get_gpu
from cascadia_sky.constants import (
    CLOUD_MAX_REPLICAS,
    CLOUD_REPLICA_GAIN_FRACTION,
    CURVE_MIN_HEADROOM_FRACTION,
    CURVE_POINTS,
    MAX_PIPELINE_PARALLEL,
)
from cascadia_sky.errors import PerfError
from cascadia_sky.models import ModelArch
from cascadia_sky.perf import Deployment, LengthDist, OpenLoopEstimate, memory_fit, open_loop
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


def _powers_of_two(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def parallel_shapes(stage: StageSetup, gpu: GpuSpec, max_gpus: int) -> list[tuple[int, int]]:
    """(TP, PP) pairs that fit memory with one full context: TP a power of two within one node, PP up to the cap."""
    tps = [stage.tp_pin] if stage.tp_pin else _powers_of_two(gpu.gpus_per_node)
    pps = [stage.pp_pin] if stage.pp_pin else _powers_of_two(MAX_PIPELINE_PARALLEL)
    shapes = []
    for tp in tps:
        if tp > gpu.gpus_per_node:
            continue
        for pp in pps:
            if tp * pp > max_gpus:
                continue
            dep = Deployment(model=stage.model, gpu=gpu, tp=tp, pp=pp, precision=stage.precision)
            if memory_fit(dep, stage.max_context).fits:
                shapes.append((tp, pp))
    return shapes


def estimate(stage: StageSetup, gpu: GpuSpec, tp: int, pp: int, replicas: int, rate_rps: float,
             lengths: LengthDist) -> OpenLoopEstimate | None:
    """The performance model's open-loop estimate, or None when the configuration cannot serve at all."""
    dep = Deployment(model=stage.model, gpu=gpu, tp=tp, pp=pp, precision=stage.precision)
    try:
        return open_loop(dep, rate_rps, lengths, replicas=replicas)
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
        probe = estimate(stage, gpu, tp, pp, 1, 0.0, lengths)
        if probe is None or probe.max_rate_rps <= 0:
            return
        self.max_rate_rps = probe.max_rate_rps
        util = np.concatenate([[0.0], 1.0 - np.geomspace(1.0, CURVE_MIN_HEADROOM_FRACTION, CURVE_POINTS)[1:]])
        xs, ys = [], []
        for u in util:
            est = estimate(stage, gpu, tp, pp, 1, float(u) * self.max_rate_rps, lengths)
            p95 = _p95(est)
            if not math.isfinite(p95):
                break
            xs.append(-math.log1p(-float(u)))
            ys.append(math.log(p95))
        self._x, self._y = np.asarray(xs), np.asarray(ys)

    def p95(self, rate_per_replica: float) -> float:
        """Interpolated p95 latency in seconds (inf when the replica cannot keep up)."""
        if self._x.size == 0:
            return math.inf
        u = rate_per_replica / self.max_rate_rps
        if u >= 1.0:
            return math.inf
        x = -math.log1p(-u)
        if x > self._x[-1] + 1e-12:
            return math.inf
        return float(math.exp(np.interp(x, self._x, self._y)))


Curves = dict[tuple[str, int, int], LatencyCurve]


def _curve(curves: Curves, stage: StageSetup, gpu: GpuSpec, tp: int, pp: int, lengths: LengthDist) -> LatencyCurve:
    key = (gpu.name, tp, pp)
    if key not in curves:
        curves[key] = LatencyCurve(stage, gpu, tp, pp, lengths)
    return curves[key]


def pool_candidates(stage: StageSetup, gpu_type: str, pool_gpus: int, rate_rps: float, lengths: LengthDist,
                    curves: Curves | None = None) -> tuple[Candidate, ...]:
    """Every TP x PP x DP on the pool's GPU type with at most N GPUs.

    `curves` caches per-shape latency curves; pass the same dict for calls with the same `lengths`.
    """
    gpu = get_gpu(gpu_type)
    curves = {} if curves is None else curves
    out = []
    for tp, pp in parallel_shapes(stage, gpu, pool_gpus):
        curve = _curve(curves, stage, gpu, tp, pp, lengths)
        for dp in range(1, pool_gpus // (tp * pp) + 1):
            out.append(Candidate(stage=stage.index, gpu_type=gpu.name, tp=tp, pp=pp, replicas=dp, gpus=tp * pp * dp,
                                 p95_latency_s=curve.p95(rate_rps / dp), usd_per_hour=0.0,
                                 key=f"s{stage.index}_{gpu.name}_tp{tp}_pp{pp}_r{dp}"))
    return tuple(out)


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


def _packing(tp: int, pp: int, offer: Offer, replicas: int) -> int | None:
    """Instances needed for `replicas` replicas of TP x PP GPUs on this offer, or None if GPUs would sit idle."""
    per_replica = tp * pp
    g = offer.gpus
    if tp > g:
        return None  # TP must stay inside one instance
    if per_replica >= g:
        return replicas * per_replica // g if per_replica % g == 0 else None
    if g % per_replica:
        return None
    per_instance = g // per_replica
    return replicas // per_instance if replicas % per_instance == 0 else None


def cloud_candidates(stage: StageSetup, offers: Sequence[Offer], spot: bool, rate_rps: float,
                     lengths: LengthDist, max_gpus_by_type: dict[str, int] | None = None,
                     curves: Curves | None = None) -> tuple[Candidate, ...]:
    """Per allowed GPU type and (TP, PP): replicas 1..k on the cheapest exactly-packing offer."""
    curves = {} if curves is None else curves
    out: list[Candidate] = []
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
            curve = _curve(curves, stage, gpu, tp, pp, lengths)
            prev = math.inf
            for dp in range(1, CLOUD_MAX_REPLICAS + 1):
                if tp * pp * dp > max_gpus:
                    break
                best: tuple[float, Offer, int] | None = None
                for o in type_offers:
                    n_inst = _packing(tp, pp, o, dp)
                    if n_inst is None:
                        continue
                    price = n_inst * o.price(spot)
                    if best is None or price < best[0] - 1e-9:
                        best = (price, o, n_inst)
                if best is None:
                    continue
                p95 = curve.p95(rate_rps / dp)
                if math.isinf(p95) and math.isinf(prev):
                    prev = p95
                    continue  # still too few replicas to keep up
                price, o, n_inst = best
                out.append(Candidate(stage=stage.index, gpu_type=gpu.name, tp=tp, pp=pp, replicas=dp,
                                     gpus=tp * pp * dp, p95_latency_s=p95, usd_per_hour=round(price, 6),
                                     cloud=o.cloud, region=o.region, instance_type=o.instance_type,
                                     gpus_per_instance=o.gpus, instances=n_inst, spot=spot,
                                     key=f"s{stage.index}_{gpu.name}_tp{tp}_pp{pp}_r{dp}"))
                if math.isfinite(prev) and p95 > prev * (1.0 - CLOUD_REPLICA_GAIN_FRACTION):
                    break  # one more replica no longer helps: the rest only cost more
                prev = p95
    return tuple(out)
