"""The Cascadia paper's Section 4.4 experiment in the simulator: the workload switches online, trace 1 -> trace 2 ->
trace 3 (here: the Azure conversation trace -> the Azure code trace -> the conversation trace at twice the rate), on
examples/deepseek.yaml's 32 x H100 pool. Three systems serve the same requests:

- static: the plan made for phase 1, all along;
- rescheduled: the detector (cascadia_sky/reschedule/detect.py, the spec's default windows and bands) watches
  per-window observations of the arriving trace; on drift the real re-planner runs (its wall time is measured) and
  the new plan takes over after a *modelled* apply delay per kind of change (APPLY_DELAY_S below);
- oracle: each phase's own plan from the phase's first request.

Each phase's requests are simulated in two parts, before and after the switch, each against its plan; the queue
an old deployment leaves at the switch is not carried over (the simulator replays one plan at a time). SLO: a
request meets it when its latency <= SLO_SCALE x its reference latency (the simulator's definition); SLO_SCALE is
the 95th percentile of latency/reference of the oracle in phase 1 (the SLO the phase-1 plan was made to meet).

    python benchmarks/reschedule.py        # prints a table per phase and one JSON line at the end
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from cascadia_sky.planner.plan import Plan
from cascadia_sky.planner.planner import make_plan
from cascadia_sky.reschedule.detect import detect
from cascadia_sky.reschedule.observe import Observation, Reference, StageObservation
from cascadia_sky.reschedule.replan import replan
from cascadia_sky.sim.simulate import Requests, make_requests, load_spec_profile, simulate
from cascadia_sky.spec import CascadeSpec, load_spec
from cascadia_sky.workload import load_trace

REPO = Path(__file__).resolve().parents[1]
# modelled apply delays (seconds): router swap; new replicas (vLLM start + weights from a local cache);
# blue/green relaunch (new version up beside the old one, then the switch)
APPLY_DELAY_S = {"router": 1.0, "scale": 120.0, "relaunch": 300.0, "none": 0.0}
QUANTILES = (0.1, 0.5, 0.9, 0.95, 0.99)


def phase_spec(base: CascadeSpec, trace: str, rate_scale: float) -> CascadeSpec:
    data = base.model_dump(mode="json", exclude_none=True)
    data["workload"] = {"trace": trace, "rate_scale": rate_scale}
    spec = CascadeSpec.model_validate(data)
    spec._source = base.source
    return spec


def windows(req: Requests, t0: float, interval_s: float, plan: Plan) -> list[Observation]:
    """The observations the router's /stats would give, one per interval (reach: the plan's; the profile does not
    drift in the simulator)."""
    out = []
    end = float(req.arrival_s[-1])
    t = t0
    while t + interval_s <= end:
        sel = (req.arrival_s >= t) & (req.arrival_s < t + interval_s)
        n = int(sel.sum())
        ins, outs = req.input_tokens[sel], req.output_tokens[sel, -1]
        iq = tuple((q, float(np.quantile(ins, q))) for q in QUANTILES) if n else ()
        oq = tuple((q, float(np.quantile(outs, q))) for q in QUANTILES) if n else ()
        out.append(Observation(t=t + interval_s, window_s=interval_s, requests=n, rate_rps=n / interval_s, errors=0,
                               input_p50=dict(iq).get(0.5), input_p95=None, output_p50=dict(oq).get(0.5),
                               output_p95=None, input_q=iq, output_q=oq,
                               stages=tuple(StageObservation(s.name, round(n * s.share), s.share, 0.0, 0)
                                            for s in plan.stages)))
        t += interval_s
    return out


def kind_of(old: Plan, new: Plan) -> str:
    if any((a.gpu_type, a.tp, a.pp) != (b.gpu_type, b.tp, b.pp) for a, b in zip(old.stages, new.stages)):
        return "relaunch"
    if any(a.replicas != b.replicas for a, b in zip(old.stages, new.stages)):
        return "scale"
    if any(a.threshold != b.threshold for a, b in zip(old.stages, new.stages)):
        return "router"
    return "none"


def subset(req: Requests, sel: np.ndarray) -> Requests:
    return Requests(req.arrival_s[sel], req.input_tokens[sel], req.output_tokens[sel], req.scores[sel],
                    req.quality[sel], req.source)


def main() -> dict:
    base = load_spec(REPO / "examples" / "deepseek.yaml")
    phases = [("conv", "traces/AzureLLMInferenceTrace_conv.csv", base.workload.rate_scale),
              ("code", "traces/AzureLLMInferenceTrace_code.csv", base.workload.rate_scale),
              ("conv x2", "traces/AzureLLMInferenceTrace_conv.csv", 2 * base.workload.rate_scale)]
    profile = load_spec_profile(base)
    specs = [phase_spec(base, trace, scale) for _, trace, scale in phases]
    oracle = [make_plan(s) for s in specs]
    reqs = [make_requests(load_trace(s.resolve(s.workload.trace or ""), rate_scale=s.workload.rate_scale), profile)
            for s in specs]
    settings = base.reschedule
    scale_slo = simulate(specs[0], oracle[0], requests=reqs[0]).slo_scale(0.95)

    def attained(parts: list[tuple[Requests, Plan, CascadeSpec]]) -> tuple[int, int]:
        met = total = 0
        for r, plan, spec in parts:
            if r.n:
                res = simulate(spec, plan, requests=r)
                met += int((res.slo_ratio <= scale_slo).sum())
                total += res.n
        return met, total

    rows = []
    current, current_spec = oracle[0], specs[0]
    w0 = load_trace(specs[0].resolve(specs[0].workload.trace or ""), rate_scale=specs[0].workload.rate_scale)
    reference = Reference(current.workload_rate_rps, tuple(s.share for s in current.stages),
                          float(np.median(w0.input_tokens)), float(np.median(w0.output_tokens)))
    for k, ((label, _, _), spec, req) in enumerate(zip(phases, specs, reqs)):
        switch_s, detect_s, replan_s, kind, new = None, None, None, "none", current
        if k > 0:
            obs = windows(req, 0.0, settings.interval_s, current)
            for j in range(len(obs)):
                d = detect(obs[: j + 1], reference, settings, now=obs[j].t)
                if d.drift:
                    detect_s = obs[j].t
                    assert d.target is not None
                    rp = replan(current, current_spec, d.target, d.peak_rate_rps, min_gain=settings.min_gain,
                                down_headroom=settings.down_headroom, less_load=d.verdict.value == "drift_down")
                    replan_s = rp.wall_s
                    if rp.worth_it:
                        new, kind = rp.plan, kind_of(current, rp.plan)
                        switch_s = detect_s + replan_s + APPLY_DELAY_S[kind]
                        reference = d.target
                    break
        static = attained([(req, oracle[0], spec)])
        if switch_s is None:
            resched = attained([(req, current, spec)])
        else:
            before = req.arrival_s < switch_s
            resched = attained([(subset(req, before), current, spec), (subset(req, ~before), new, spec)])
            current, current_spec = new, spec
        orc = attained([(req, oracle[k], spec)])
        rows.append({"phase": label, "requests": req.n, "span_s": round(float(req.arrival_s[-1]), 1),
                     "static": static, "rescheduled": resched, "oracle": orc, "detect_s": detect_s,
                     "replan_s": None if replan_s is None else round(replan_s, 3), "apply": kind,
                     "switch_s": None if switch_s is None else round(switch_s, 1)})
        print(f"{label:8} static {static[0] / static[1]:.3f}  rescheduled {resched[0] / resched[1]:.3f}  "
              f"oracle {orc[0] / orc[1]:.3f}  detect {detect_s} s  re-plan {replan_s} s  apply {kind}",
              flush=True)

    def overall(key: str) -> float:
        return sum(r[key][0] for r in rows) / sum(r[key][1] for r in rows)

    out = {"benchmark": "reschedule", "slo_scale": round(scale_slo, 3),
           "attainment": {k: round(overall(k), 4) for k in ("static", "rescheduled", "oracle")},
           "phases": [{**r, **{k: round(r[k][0] / r[k][1], 4) for k in ("static", "rescheduled", "oracle")}}
                      for r in rows],
           "apply_delay_model_s": APPLY_DELAY_S, "windows": settings.windows, "interval_s": settings.interval_s}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - t0:.0f} s", file=sys.stderr)
