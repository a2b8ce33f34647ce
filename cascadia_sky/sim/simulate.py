"""Replay a workload against a plan: every request walks the cascade, every stage is simulated engine by engine.

Requests. Arrival times and input lengths come from the trace (or, for a rate workload, Poisson arrivals and lengths
drawn from the spec's distributions). Each request is paired with one prompt of the quality profile, drawn at random
(seeded), and takes that prompt's score and quality at every stage — so scores and qualities stay correlated across
stages as they are in reality. Output lengths follow the planner's rule (`planner.stage_lengths`): the workload's
when it states them (a trace), otherwise the profile prompt's answer length at each stage (`output_lengths` picks
explicitly).

Routing. A request starts at stage 1; stage i's answer is accepted when its score >= the plan's threshold, else the
request goes on to stage i+1; the last stage always answers. Each visit costs the router's overhead
(`router_overhead_s`, scoring and forwarding) and the engine's per-request overhead (HTTP, tokenisation, streaming:
`VLLM_REQUEST_OVERHEAD_MS`) before the engine sees the request. Requests only move forward, so stages are simulated
in order: stage i's finish times are stage i+1's arrivals. Within a stage, the router spreads requests over the
replicas by least outstanding requests (`engine.run_stage`).

Latency. End-to-end latency = answer complete - arrival. TTFT: an answer from a non-final stage is returned only
after it was scored (its whole answer), so its TTFT is its end-to-end latency; the last stage streams, so its TTFT
is its first token.

SLO scale (as in DistServe and the Cascadia paper's line of work): a request meets SLO scale s when its end-to-end
latency <= s x its reference latency, the latency it would have alone on an idle single-model deployment of the last
stage's model (`reference_deployment`: the spec's last model and precision, on the pool's GPU type, with the TP that
is fastest for it alone; one router hop and the request overhead included). Attainment(s) is the share of requests
that meet s; the SLO scale at 95 % attainment is the 95th percentile of latency / reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascadia_sky.catalog import GpuSpec, get_gpu
from cascadia_sky.constants import (
    SIM_POISSON_REQUESTS,
    SIM_ROUTER_OVERHEAD_MS,
    SIM_SEED,
    VLLM_REQUEST_OVERHEAD_MS,
)
from cascadia_sky.errors import CascadiaError, SpecError, UserInputError
from cascadia_sky.models import get_model
from cascadia_sky.perf.step import Deployment, StepModel, memory_fit, step_model
from cascadia_sky.planner.plan import Plan
from cascadia_sky.quality import QualityProfile, load_profile
from cascadia_sky.sim.engine import ReplicaStats, kv_capacity_tokens, run_stage
from cascadia_sky.spec import CascadeSpec
from cascadia_sky.workload import Workload, load_trace, sample_lengths

OutputLengths = Literal["auto", "workload", "profile"]


@dataclass(frozen=True)
class SimStage:
    """One stage as simulated: its replica layout, its threshold and the profile column of its model."""

    name: str
    deployment: Deployment
    replicas: int
    threshold: float | None          # accept when score >= threshold; None on the last stage
    max_context: int
    column: int                      # index of this stage's model in the request arrays (profile column)


@dataclass(frozen=True, eq=False)
class Requests:
    """What arrives: per request its arrival, input length, and per profile column its output length, score and
    quality (arrays (n,) and (n, columns))."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    scores: np.ndarray
    quality: np.ndarray
    source: str = ""

    @property
    def n(self) -> int:
        return int(self.arrival_s.shape[0])

    def scaled(self, multiplier: float) -> Requests:
        """The same requests arriving `multiplier` times faster."""
        return Requests(self.arrival_s / multiplier, self.input_tokens, self.output_tokens, self.scores,
                        self.quality, self.source)


@dataclass(frozen=True)
class StageReport:
    """What one stage saw and did (times in seconds; utilisation = busy time / simulated span, per replica)."""

    name: str
    replicas: int
    reached: int
    answered: int
    utilization_mean: float
    utilization_max: float
    queue_wait_p50_s: float          # engine arrival -> first admission to the running batch
    queue_wait_p95_s: float
    queue_wait_max_s: float
    queue_growth: float              # slope of queue wait against arrival time (0 when stable; > 0 growing)
    latency_p50_s: float             # engine arrival -> answer complete
    latency_p95_s: float
    preemptions: int
    max_waiting: int
    mean_batch: float                # requests in the running batch, averaged over busy time


@dataclass(frozen=True, eq=False)
class SimResult:
    """Per-request outcomes of one simulation and per-stage statistics."""

    name: str
    arrival_s: np.ndarray
    e2e_s: np.ndarray
    ttft_s: np.ndarray
    final_stage: np.ndarray          # index into `stages` of the answering stage
    quality: np.ndarray              # quality of the returned answer
    reference_s: np.ndarray          # reference latency (see the module docstring)
    stages: list[StageReport]
    wall_s: float
    truncated: int = 0               # requests whose lengths were clipped to a stage's max_context
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.e2e_s.shape[0])

    @property
    def slo_ratio(self) -> np.ndarray:
        return self.e2e_s / self.reference_s

    def attainment(self, scales: Sequence[float] | np.ndarray) -> np.ndarray:
        """Share of requests with latency <= scale x reference, for each scale."""
        ratio = np.sort(self.slo_ratio)
        return np.searchsorted(ratio, np.asarray(scales, dtype=float), side="right") / ratio.size

    def slo_scale(self, attainment: float = 0.95) -> float:
        """The tightest SLO scale that `attainment` of the requests meet."""
        return float(np.quantile(self.slo_ratio, attainment, method="inverted_cdf"))

    def summary(self) -> dict[str, Any]:
        """The figures a table shows (JSON-ready)."""
        span = float(self.arrival_s[-1] - self.arrival_s[0]) if self.n > 1 else 0.0
        return {
            "name": self.name, "requests": self.n,
            "rate_rps": (self.n - 1) / span if span > 0 else math.nan,
            "quality": float(self.quality.mean()),
            "e2e_p50_s": _pct(self.e2e_s, 50), "e2e_p95_s": _pct(self.e2e_s, 95), "e2e_p99_s": _pct(self.e2e_s, 99),
            "ttft_p50_s": _pct(self.ttft_s, 50), "ttft_p95_s": _pct(self.ttft_s, 95),
            "slo_scale_p95": self.slo_scale(0.95),
            "answered_share": [float(np.mean(self.final_stage == i)) for i in range(len(self.stages))],
            "truncated": self.truncated, "wall_s": self.wall_s,
        }


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else math.nan


# --- building the inputs -----------------------------------------------------------------------

def _stage_index(spec: CascadeSpec, plan_file: str, i: int, name: str, model: str) -> int:
    names = spec.stage_names()
    if name in names:
        return names.index(name)
    for j, st in enumerate(spec.stages):
        ref = str(spec.resolve(st.model)) if st.model.endswith(".json") else st.model
        if model in (st.model, ref) or get_model(ref).name == model:
            return j
    raise SpecError(plan_file, f"stages[{i}].name", f"stage '{name}' ({model}) is not a stage of the spec "
                                                     f"({', '.join(names)}); simulate a plan made from this spec")


def _gpu(name: str, plan_file: str, i: int) -> GpuSpec:
    try:
        return get_gpu(name)
    except CascadiaError:
        raise UserInputError(f"{plan_file}: stages[{i}].gpu_type: '{name}' is not a GPU type of the catalog; the "
                             "simulator models GPU engines only (plan with resources.pool or resources.cloud)") \
            from None


def stages_from_plan(plan: Plan, spec: CascadeSpec, plan_file: str = "plan.json") -> list[SimStage]:
    """The plan's stages, each tied to the spec stage (and so the profile column) it serves."""
    out = []
    for i, st in enumerate(plan.stages):
        col = _stage_index(spec, plan_file, i, st.name, st.model)
        ref = spec.stages[col].model
        arch = get_model(str(spec.resolve(ref)) if ref.endswith(".json") else ref)
        dep = Deployment(model=arch, gpu=_gpu(st.gpu_type, plan_file, i), tp=st.tp, pp=st.pp,
                         precision=st.precision)
        last = i == len(plan.stages) - 1
        if not last and st.threshold is None:
            raise SpecError(plan_file, f"stages[{i}].threshold", "only the last stage may have no threshold")
        out.append(SimStage(name=st.name, deployment=dep, replicas=st.replicas,
                            threshold=None if last else st.threshold, max_context=st.max_context, column=col))
    if not out:
        raise SpecError(plan_file, "stages", "the plan has no stages; re-run `cascadia plan`")
    return out


def load_spec_profile(spec: CascadeSpec) -> QualityProfile:
    """The spec's quality profile, one column per spec stage."""
    aliases = {a: st.model for st in spec.stages for a in st.aliases}
    return load_profile(spec.resolve(spec.quality.profile), [st.model for st in spec.stages], aliases)


def spec_workload(spec: CascadeSpec, trace: str | Path | None = None, n_requests: int = SIM_POISSON_REQUESTS,
                  seed: int = SIM_SEED) -> Workload:
    """Arrivals and lengths: the trace (given, or the spec's) at the spec's rate_scale, or Poisson arrivals at the
    spec's rate with lengths drawn from its distributions (no output lengths when the spec leaves them out)."""
    w = spec.workload
    if trace is not None or w.trace is not None:
        path = Path(trace) if trace is not None else spec.resolve(w.trace or "")
        return load_trace(path, rate_scale=w.rate_scale, field="--trace" if trace is not None else "workload.trace")
    assert w.rate_rps is not None and w.input_tokens is not None
    rng = np.random.default_rng(seed)
    rate = w.rate_rps * w.rate_scale
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n_requests))
    arrivals -= arrivals[0]
    ins = sample_lengths(**w.input_tokens.model_dump(), n=n_requests, rng=rng)
    outs = (sample_lengths(**w.output_tokens.model_dump(), n=n_requests, rng=rng) if w.output_tokens is not None
            else np.zeros(0, dtype=np.int64))
    return Workload(rate_rps=rate, input_tokens=ins, output_tokens=outs, arrival_s=arrivals, source="spec")


def make_requests(workload: Workload, profile: QualityProfile, output_lengths: OutputLengths = "auto",
                  seed: int = SIM_SEED) -> Requests:
    """Pair every request of the workload with a random profile prompt (see the module docstring)."""
    if workload.arrival_s is None:
        raise UserInputError("the workload has no arrival times; give a trace or a rate workload")
    n = workload.n
    prompt = np.random.default_rng(seed).integers(0, profile.n_prompts, size=n)
    mode = output_lengths
    if mode == "auto":
        mode = "workload" if workload.output_tokens.size else "profile"
    if mode == "workload":
        if not workload.output_tokens.size:
            raise UserInputError("the workload states no output lengths; use output lengths from the profile")
        outs = np.repeat(workload.output_tokens[:, None], profile.n_stages, axis=1)
    else:
        outs = profile.output_tokens[prompt]
    return Requests(arrival_s=np.asarray(workload.arrival_s, dtype=float),
                    input_tokens=np.maximum(workload.input_tokens, 1).astype(np.int64),
                    output_tokens=np.maximum(outs, 1).astype(np.int64), scores=profile.scores[prompt],
                    quality=profile.quality[prompt], source=workload.source)


# --- reference latency -------------------------------------------------------------------------

def reference_deployment(spec: CascadeSpec) -> Deployment:
    """The last stage's model alone, on the pool's GPU type (cloud mode: the allowed type with the most HBM
    bandwidth), with the power-of-two TP (PP 1) that fits and serves a lone typical request fastest."""
    from cascadia_sky.spec import allowed_gpu_types

    last = spec.stages[-1]
    arch = get_model(str(spec.resolve(last.model)) if last.model.endswith(".json") else last.model)
    gpus = [get_gpu(g) for g in allowed_gpu_types(spec, len(spec.stages) - 1)]
    gpu = max(gpus, key=lambda g: (g.hbm_tb_s, g.memory_gb))
    best: tuple[float, Deployment] | None = None
    tp = 1
    while tp <= gpu.gpus_per_node:
        dep = Deployment(model=arch, gpu=gpu, tp=tp, precision=last.precision)
        if not dep.invalid_reason() and memory_fit(dep, last.max_context).fits:
            t = float(reference_latency(dep, np.array([1024]), np.array([256]), 0.0)[0])
            if best is None or t < best[0]:
                best = (t, dep)
        tp *= 2
    if best is None:
        raise SpecError(str(spec.source or "cascade.yaml"), "stages[-1]",
                        f"{arch.name} fits no single node of {gpu.name}; no reference deployment for SLO scales")
    return best[1]


def reference_latency(dep: Deployment, input_tokens: np.ndarray, output_tokens: np.ndarray,
                      router_overhead_s: float = SIM_ROUTER_OVERHEAD_MS * 1e-3) -> np.ndarray:
    """Each request's latency alone on an idle replica, exactly as the engine simulates it: chunked prefill, then
    one decode iteration per further output token (decode time is linear in the context, so the sum is closed form).
    """
    sm = step_model(dep)
    pp = dep.pp
    budget = sm.budget_tokens * pp
    isl = np.asarray(input_tokens, dtype=float)
    osl = np.maximum(np.asarray(output_tokens, dtype=float), 1.0)
    total = np.zeros_like(isl)
    done = np.zeros_like(isl)
    while np.any(done < isl):
        x = np.minimum(isl - done, budget)
        last = (done + x >= isl) & (x > 0)
        t = sm.step_time(0.0, x / pp, 0.0, done + x / 2.0, last / pp)
        if pp > 1:   # the last chunk crosses every stage at the whole model's pace (engine.py, StageRequests.lag)
            t = np.where(last, np.maximum(t, sm.step_time(0.0, x, 0.0, done + x / 2.0, 1.0)), t)
        total += np.where(x > 0, t, 0.0)
        done += x
    decode = (osl - 1) * sm.step_time(1.0 / pp, 0.0, isl + osl / 2.0, 0.0, 1.0 / pp)
    return total + decode + router_overhead_s + VLLM_REQUEST_OVERHEAD_MS * 1e-3


# --- the cascade -------------------------------------------------------------------------------

def _stage_report(stage: SimStage, sm: StepModel, req: Any, stats: list[ReplicaStats], answered: int,
                  span: float) -> StageReport:
    arrive = np.asarray(req.t_arrive)
    wait = np.asarray(req.t_admit) - arrive
    lat = np.asarray(req.t_done) - arrive
    busy = np.array([s.busy_s for s in stats])
    util = busy / span if span > 0 else np.zeros_like(busy)
    growth = float(np.polyfit(arrive, wait, 1)[0]) if arrive.size >= 3 and np.ptp(arrive) > 0 else 0.0
    running = float(np.sum(np.asarray(req.t_done) - np.asarray(req.t_admit)))   # request-seconds in the batch
    return StageReport(name=stage.name, replicas=stage.replicas, reached=int(arrive.size), answered=answered,
                       utilization_mean=float(util.mean()) if util.size else 0.0,
                       utilization_max=float(util.max()) if util.size else 0.0,
                       queue_wait_p50_s=_pct(wait, 50), queue_wait_p95_s=_pct(wait, 95),
                       queue_wait_max_s=float(wait.max()) if wait.size else math.nan, queue_growth=growth,
                       latency_p50_s=_pct(lat, 50), latency_p95_s=_pct(lat, 95),
                       preemptions=sum(s.preemptions for s in stats), max_waiting=max(s.max_waiting for s in stats),
                       mean_batch=running / float(busy.sum()) if busy.sum() > 0 else 0.0)


def simulate_cascade(stages: Sequence[SimStage], requests: Requests, reference: Deployment, *,
                     router_overhead_s: float = SIM_ROUTER_OVERHEAD_MS * 1e-3, name: str = "") -> SimResult:
    """Run every request through the cascade (see the module docstring); `reference` sets the SLO scale."""
    t0 = time.perf_counter()
    n = requests.n
    overhead = router_overhead_s + VLLM_REQUEST_OVERHEAD_MS * 1e-3
    send = requests.arrival_s.astype(float).copy()     # when the router starts the request's current hop
    active = np.arange(n)
    done = np.full(n, np.nan)
    ttft = np.full(n, np.nan)
    final = np.full(n, -1, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    reports: list[StageReport] = []
    span_end = float(requests.arrival_s.max()) if n else 0.0
    last_col = stages[-1].column
    for i, stage in enumerate(stages):
        if active.size == 0:
            reports.append(_empty_report(stage))
            continue
        sm = step_model(stage.deployment)
        arrive = send[active] + overhead
        order = np.argsort(arrive, kind="stable")
        ids = active[order]
        isl, osl, clipped = _clip(requests.input_tokens[ids], requests.output_tokens[ids, stage.column],
                                  min(stage.max_context, kv_capacity_tokens(sm)))
        truncated[ids[clipped]] = True
        req, stats = run_stage(sm, stage.replicas, arrive[order], isl, osl)
        finish = np.asarray(req.t_done)
        first = np.asarray(req.t_first)
        last = i == len(stages) - 1
        accept = np.ones(ids.size, dtype=bool) if last else requests.scores[ids, stage.column] >= stage.threshold
        acc_ids = ids[accept]
        done[acc_ids] = finish[accept]
        ttft[acc_ids] = first[accept] if last else finish[accept]
        final[acc_ids] = i
        span_end = max(span_end, float(finish.max()))
        span = span_end - float(requests.arrival_s.min())
        reports.append(_stage_report(stage, sm, req, stats, int(accept.sum()), span))
        send[ids[~accept]] = finish[~accept]
        active = np.sort(ids[~accept])
    rows = np.arange(n)
    ref = reference_latency(reference, requests.input_tokens, requests.output_tokens[:, last_col], router_overhead_s)
    return SimResult(name=name, arrival_s=requests.arrival_s, e2e_s=done - requests.arrival_s,
                     ttft_s=ttft - requests.arrival_s, final_stage=final,
                     quality=requests.quality[rows, np.array([stages[k].column for k in final])],
                     reference_s=ref, stages=reports, wall_s=time.perf_counter() - t0,
                     truncated=int(truncated.sum()))


def _clip(isl: np.ndarray, osl: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths that fit a context of `limit` tokens (prompt first), and which requests were cut."""
    i2 = np.minimum(isl, limit - 1)
    o2 = np.minimum(osl, limit - i2)
    return i2, o2, (i2 != isl) | (o2 != osl)


def _empty_report(stage: SimStage) -> StageReport:
    nan = math.nan
    return StageReport(stage.name, stage.replicas, 0, 0, 0.0, 0.0, nan, nan, nan, 0.0, nan, nan, 0, 0, 0.0)


def spec_requests(spec: CascadeSpec, trace: str | Path | None = None, rate_multiplier: float = 1.0,
                  output_lengths: OutputLengths = "auto", n_requests: int = SIM_POISSON_REQUESTS,
                  seed: int = SIM_SEED) -> Requests:
    """The spec's workload (or `trace`), `rate_multiplier` times faster, paired with profile prompts."""
    if not rate_multiplier > 0:
        raise UserInputError(f"--rate-scale must be > 0, got {rate_multiplier}")
    reqs = make_requests(spec_workload(spec, trace, n_requests, seed), load_spec_profile(spec), output_lengths, seed)
    return reqs.scaled(rate_multiplier) if rate_multiplier != 1.0 else reqs


def simulate(spec: CascadeSpec, plan: Plan, *, requests: Requests | None = None, trace: str | Path | None = None,
             rate_multiplier: float = 1.0, output_lengths: OutputLengths = "auto",
             router_overhead_s: float = SIM_ROUTER_OVERHEAD_MS * 1e-3, plan_file: str = "plan.json",
             name: str = "") -> SimResult:
    """Simulate `plan` (made from `spec`) on `requests`, or on the spec's workload (or `trace`) `rate_multiplier`
    times faster. The reference latency of the SLO scale is the spec's (`reference_deployment`)."""
    stages = stages_from_plan(plan, spec, plan_file)
    if requests is None:
        requests = spec_requests(spec, trace, rate_multiplier, output_lengths)
    return simulate_cascade(stages, requests, reference_deployment(spec), router_overhead_s=router_overhead_s,
                            name=name or plan.name)
