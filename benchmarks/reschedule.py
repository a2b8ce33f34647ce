"""The Cascadia paper's Section 4.4 experiment in the simulator: the workload switches online, trace 1 -> trace 2 ->
trace 3 (here: the Azure conversation trace -> the Azure code trace -> the conversation trace at twice the rate), on
examples/deepseek.yaml's 32 x H100 pool. Three systems serve the same requests:

- static: the plan made for phase 1, all along;
- rescheduled: what `cascadia watch` does, on the simulated router's windows: one observation per `interval_s`
  over the whole run (arrival rate, the length quantiles /stats reports, each stage's reach counted with the
  running plan's thresholds), the detector (cascadia_sky/reschedule/detect.py, the spec's default windows, bands
  and cool-down) after every window, and on drift the real re-planner from the cascade file (its wall time is
  measured; the warm cache filled once at start as the watcher does). A plan worth applying takes over after the
  re-plan's wall time plus a *modelled* apply delay for its costliest kind of change (APPLY_DELAY_S below);
- oracle: each phase's own plan (the planner given the phase's trace) from the phase's first request.

Simulation: each phase is simulated on its own (every system starts it with empty queues). The rescheduled system's
phase is cut where its plan changes: requests that arrived before are served to the end by the old deployment,
later ones by the new deployment, which starts empty. That is how a blue/green relaunch behaves (the old version
drains while the new one takes the traffic) and how a router swap treats requests in flight; for a scale change
(old replicas kept, with their queues) it is optimistic, and the GPUs of both versions during the switch are not
counted against the pool. SLO: a request meets it when its latency <= SLO_SCALE x its reference
latency (the simulator's definition); SLO_SCALE is the 95th percentile of latency/reference of the phase-1 plan in
phase 1 (the SLO the phase-1 plan was made to meet).

    python benchmarks/reschedule.py [--plot docs/reschedule_switch.png]

Prints one line per phase (attainment of each system, time to detect, re-plan wall time, what was applied and
when), the overall attainment, and one JSON object as the last line. Writes a plot of attainment and p95 latency
over time (per minute of arrivals) for the three systems.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascadia_sky.planner.plan import Plan
from cascadia_sky.planner.planner import make_plan
from cascadia_sky.reschedule.detect import Verdict, detect
from cascadia_sky.reschedule.observe import (
    LENGTH_QUANTILES,
    Observation,
    Reference,
    StageObservation,
)
from cascadia_sky.reschedule.replan import replan, warm_up
from cascadia_sky.sim.simulate import (
    Requests,
    load_spec_profile,
    make_requests,
    simulate,
)
from cascadia_sky.spec import CascadeSpec, load_spec
from cascadia_sky.workload import Workload, load_trace

REPO = Path(__file__).resolve().parents[1]
# modelled apply delays (seconds): router swap; new replicas (vLLM start + weights from a local cache);
# blue/green relaunch (new version up beside the old one, then the switch)
APPLY_DELAY_S = {"router": 1.0, "scale": 120.0, "relaunch": 300.0, "none": 0.0}
PHASES = (("conv", "traces/AzureLLMInferenceTrace_conv.csv", 1.0),
          ("code", "traces/AzureLLMInferenceTrace_code.csv", 1.0),
          ("conv x2", "traces/AzureLLMInferenceTrace_conv.csv", 2.0))   # rate scale relative to the spec's
PLOT_BIN_S = 60.0
CLOUD_SLO_P95_S = 30.0    # --setting cloud: the p95 the least-cost plan must meet (the pool plan's is ~23 s)


@dataclass
class Change:
    detect_t: float            # global time of the window that drifted
    phase: int
    verdict: str
    replan_s: float
    worth_it: bool
    kind: str
    switch_t: float | None     # when the new plan serves (None: not applied)
    reason: str
    gpus: list[int]


def phase_spec(base: CascadeSpec, trace: str, rate_scale: float) -> CascadeSpec:
    data = base.model_dump(mode="json", exclude_none=True)
    data["workload"] = {"trace": trace, "rate_scale": rate_scale}
    spec = CascadeSpec.model_validate(data)
    spec._source = base.source
    return spec


def reach_of(scores: np.ndarray, plan: Plan) -> tuple[float, ...]:
    """Each stage's reach as the router counts it: the share of requests whose earlier stages all escalated."""
    n = scores.shape[0]
    passing = np.ones(n, dtype=bool)
    out = [1.0]
    for i, st in enumerate(plan.stages[:-1]):
        passing &= scores[:, i] < float(st.threshold if st.threshold is not None else np.inf)
        out.append(float(passing.mean()) if n else 0.0)
    return tuple(out)


def window(req: Requests, t: float, interval_s: float, plan: Plan) -> Observation:
    """What the router's /stats reports for the window ending at t (lengths: its quantile levels)."""
    sel = slice(*np.searchsorted(req.arrival_s, [t - interval_s, t]))   # arrivals are sorted
    n = sel.stop - sel.start
    ins, outs = req.input_tokens[sel], req.output_tokens[sel, -1]
    iq = tuple((q, float(np.quantile(ins, q))) for q in LENGTH_QUANTILES) if n else ()
    oq = tuple((q, float(np.quantile(outs, q))) for q in LENGTH_QUANTILES) if n else ()
    reach = reach_of(req.scores[sel], plan)
    return Observation(t=t, window_s=interval_s, requests=n, rate_rps=n / interval_s, errors=0,
                       input_p50=dict(iq).get(0.5), input_p95=dict(iq).get(0.95), output_p50=dict(oq).get(0.5),
                       output_p95=dict(oq).get(0.95), input_q=iq, output_q=oq,
                       stages=tuple(StageObservation(s.name, round(n * r), r, 0.0, 0)
                                    for s, r in zip(plan.stages, reach)))


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


def shifted(req: Requests, offset_s: float) -> Requests:
    return Requests(req.arrival_s + offset_s, req.input_tokens, req.output_tokens, req.scores, req.quality,
                    req.source)


def same_lengths(target: Reference, ref: Reference, band: float) -> bool:
    """As the watcher decides it (loop.py): medians inside the length band, so the warm curves are reused."""
    return all(o is None or not r or r / (1 + band) <= o <= r * (1 + band)
               for o, r in ((target.input_p50, ref.input_p50), (target.output_p50, ref.output_p50)))


def reschedule_run(base: CascadeSpec, plan0: Plan, req: Requests, starts: list[float]) -> tuple[list[Change],
                                                                                                list[tuple[float, Plan]]]:
    """The watcher over the whole run: observations, detection, re-plans; the plan timeline it produces."""
    s = base.reschedule
    w0 = load_trace(base.resolve(base.workload.trace or ""), rate_scale=base.workload.rate_scale)
    reference = Reference(plan0.workload_rate_rps, tuple(st.share for st in plan0.stages),
                          float(np.median(w0.input_tokens)), float(np.median(w0.output_tokens)))
    warm_up(base)
    timeline: list[tuple[float, Plan]] = [(0.0, plan0)]
    changes: list[Change] = []
    history: list[Observation] = []
    last_change: float | None = None
    pending: tuple[float, Plan, Reference] | None = None
    end = float(req.arrival_s[-1])
    t = s.interval_s
    while t <= end:
        if pending is not None and pending[0] <= t:
            timeline.append((pending[0], pending[1]))
            pending = None
        current = timeline[-1][1]
        history.append(window(req, t, s.interval_s, current))
        history = history[-(s.windows_down + 2):]
        d = detect(history, reference, s, now=t, last_change_t=last_change)
        if d.drift and pending is None:
            assert d.target is not None
            rp = replan(current, base, d.target, d.peak_rate_rps, min_gain=s.min_gain, down_headroom=s.down_headroom,
                        less_load=d.verdict is Verdict.DRIFT_DOWN,
                        same_lengths=same_lengths(d.target, reference, s.length_band))
            phase = int(np.searchsorted(starts, t, side="right")) - 1
            kind = kind_of(current, rp.plan) if rp.worth_it else "none"
            switch = t + rp.wall_s + APPLY_DELAY_S[kind] if rp.worth_it else None
            changes.append(Change(t, phase, d.verdict.value, rp.wall_s, rp.worth_it, kind, switch, rp.reason,
                                  [st.gpus for st in rp.plan.stages]))
            print(f"  t={t:.0f} s (phase {phase + 1}): {d.describe()}\n    re-plan {rp.wall_s:.2f} s: {rp.reason}"
                  + (f"; {kind} -> serves at t={switch:.0f} s" if switch is not None else ""), flush=True)
            reference = rp.reference or d.target   # the observed workload (with the new thresholds' reach)
            # the loop records the change when up() returns (the new plan serves), "no change" at once; the
            # cool-down runs from there and windows that began earlier are ignored
            last_change = switch if switch is not None else t
            if switch is not None:
                pending = (switch, rp.plan, d.target)
        t += s.interval_s
    if pending is not None and pending[0] <= end:
        timeline.append((pending[0], pending[1]))
    return changes, timeline


def usd_over(timeline: list[tuple[float, Plan]], a: float, b: float) -> float:
    """The time-weighted mean $/h of the plans that serve between a and b."""
    edges = [*(max(a, min(b, t)) for t, _ in timeline), b]
    return sum((edges[i + 1] - edges[i]) * p.predicted.usd_per_hour for i, (_, p) in enumerate(timeline)) / (b - a)


def plan_at(timeline: list[tuple[float, Plan]], t: float) -> Plan:
    return [p for start, p in timeline if start <= t][-1]


def base_spec(setting: str) -> CascadeSpec:
    """pool: examples/deepseek.yaml as it is (32 x H100, least latency: every plan uses all 32). cloud: the same
    cascade on AWS H100 instances at least cost under a p95 SLO (CLOUD_SLO_P95_S): capacity follows the load."""
    base = load_spec(REPO / "examples" / "deepseek.yaml")
    if setting == "pool":
        return base
    data = base.model_dump(mode="json", exclude_none=True)
    data["objective"] = {"latency": "e2e", "goal": "min-cost", "slo_p95_s": CLOUD_SLO_P95_S}
    data["resources"] = {"cloud": {"clouds": ["aws"], "gpu_types": ["H100"], "spot": False}}
    spec = CascadeSpec.model_validate(data)
    spec._source = base.source
    return spec


def replayed(w: Workload, times: int) -> Workload:
    """The trace played `times` times in a row (same rate, same bursts, `times` x as long)."""
    assert w.arrival_s is not None
    gap = float(w.arrival_s[-1]) + float(np.diff(w.arrival_s).mean())
    return dataclasses.replace(w, arrival_s=np.concatenate([w.arrival_s + k * gap for k in range(times)]),
                               input_tokens=np.tile(w.input_tokens, times),
                               output_tokens=np.tile(w.output_tokens, times))


def main(plot: str | None, setting: str = "pool", replay: bool = True) -> dict:
    t0 = time.perf_counter()
    base = base_spec(setting)
    profile = load_spec_profile(base)
    specs = [phase_spec(base, trace, k * base.workload.rate_scale) for _, trace, k in PHASES]
    oracle = [make_plan(s) for s in specs]
    reqs = []
    for s in specs:
        w = load_trace(s.resolve(s.workload.trace or ""), rate_scale=s.workload.rate_scale)
        # rate_scale compresses the trace's hour into 1/rate_scale of it; replayed rate_scale times, a phase lasts
        # the trace's own hour (the detector and the apply delays work in real seconds)
        times = max(1, round(s.workload.rate_scale)) if replay else 1
        reqs.append(make_requests(replayed(w, times), profile))
    scale_slo = simulate(specs[0], oracle[0], requests=reqs[0]).slo_scale(0.95)
    # one run: phase k's requests shifted to start where phase k-1's ended
    starts, t = [], 0.0
    for r in reqs:
        starts.append(t)
        t += float(r.arrival_s[-1]) + 1.0
    everything = Requests(*(np.concatenate([getattr(shifted(r, s0), f) for r, s0 in zip(reqs, starts)])
                            for f in ("arrival_s", "input_tokens", "output_tokens", "scores", "quality")),
                          source="switching")
    print(f"SLO: latency <= {scale_slo:.2f} x reference; phases start at {[round(x) for x in starts]} s", flush=True)
    changes, timeline = reschedule_run(base, oracle[0], everything, starts)

    systems = ("static", "rescheduled", "oracle")
    per_request: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {k: [] for k in systems}
    rows = []
    for k, ((label, _, _), spec, req) in enumerate(zip(PHASES, specs, reqs)):
        cuts = sorted({s - starts[k] for s, _ in timeline if 0 < s - starts[k] < float(req.arrival_s[-1])})
        met: dict[str, int] = {}
        e2e: dict[str, list[np.ndarray]] = {name: [] for name in systems}
        for name in systems:
            met[name] = 0
            edges = [0.0, *cuts, np.inf] if name == "rescheduled" else [0.0, np.inf]
            for a, b in zip(edges[:-1], edges[1:]):
                sel = (req.arrival_s >= a) & (req.arrival_s < b)
                if not sel.any():
                    continue
                plan = {"static": oracle[0], "oracle": oracle[k],
                        "rescheduled": plan_at(timeline, starts[k] + a)}[name]
                res = simulate(spec, plan, requests=subset(req, sel))
                ok = res.slo_ratio <= scale_slo
                met[name] += int(ok.sum())
                e2e[name].append(res.e2e_s)
                per_request[name].append((req.arrival_s[sel] + starts[k], res.e2e_s, ok))
        mine = [c for c in changes if c.phase == k]
        first = mine[0] if mine else None
        applied = [c for c in mine if c.switch_t is not None]
        span = float(req.arrival_s[-1])
        usd = {"static": oracle[0].predicted.usd_per_hour, "oracle": oracle[k].predicted.usd_per_hour,
               "rescheduled": usd_over(timeline, starts[k], starts[k] + span)}
        row = {"phase": label, "requests": req.n, "span_s": round(span, 1),
               **{name: round(met[name] / req.n, 4) for name in systems},
               "p95_s": {name: round(float(np.percentile(np.concatenate(e2e[name]), 95)), 2) for name in systems},
               "usd_per_hour": {name: round(v, 2) for name, v in usd.items()},
               "detect_after_s": None if first is None else round(first.detect_t - starts[k], 1),
               "replan_s": [round(c.replan_s, 3) for c in mine],
               "applied": [{"kind": c.kind, "serves_after_s": round(c.switch_t - starts[k], 1), "gpus": c.gpus}
                           for c in applied if c.switch_t is not None],
               "decisions": [{"after_s": round(c.detect_t - starts[k], 1), "verdict": c.verdict,
                              "worth_it": c.worth_it, "reason": c.reason} for c in mine]}
        rows.append(row)
        when = ", ".join(f"{c['kind']} serving after {c['serves_after_s']:.0f} s" for c in row["applied"]) or "-"
        cost = (" ($/h " + "/".join(f"{usd[n]:.0f}" for n in systems) + ")") if usd["static"] else ""
        print(f"{label:8} static {row['static']:.3f}  rescheduled {row['rescheduled']:.3f}  oracle "
              f"{row['oracle']:.3f}  (p95 " + "/".join(f"{row['p95_s'][n]:.1f}" for n in systems) + f" s){cost}  "
              f"detected after {row['detect_after_s']} s  re-plan {row['replan_s']} s  applied: {when}", flush=True)
    total = sum(r["requests"] for r in rows)
    overall = {name: round(sum(r[name] * r["requests"] for r in rows) / total, 4) for name in systems}
    print(f"overall  static {overall['static']:.3f}  rescheduled {overall['rescheduled']:.3f}  "
          f"oracle {overall['oracle']:.3f}  (static / rescheduled / oracle)", flush=True)
    detects = [r["detect_after_s"] for r in rows[1:] if r["detect_after_s"] is not None]
    replans = [c.replan_s for c in changes]
    print(f"time to detect a switch: {detects} s; re-plan wall time: median {np.median(replans):.2f} s, max "
          f"{max(replans):.2f} s over {len(replans)} re-plans" if replans else "no re-plan", flush=True)
    if plot:
        write_plot(plot, per_request, starts, [p[0] for p in PHASES], changes, scale_slo, setting)
        print(f"plot: {plot}", flush=True)
    out = {"benchmark": "reschedule", "setting": setting, "phase_replays": replay, "slo_scale": round(scale_slo, 3), "attainment": overall, "phases": rows,
           "replan_s_median": round(float(np.median([c.replan_s for c in changes])), 3) if changes else None,
           "detect_after_switch_s": [r["detect_after_s"] for r in rows[1:]],
           "apply_delay_model_s": APPLY_DELAY_S, "windows": base.reschedule.windows,
           "windows_down": base.reschedule.windows_down, "interval_s": base.reschedule.interval_s,
           "loadavg_1min": round(os.getloadavg()[0], 2), "plot": plot, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out))
    return out


def write_plot(path: str, per_request: dict, starts: list[float], labels: list[str], changes: list[Change],
               scale_slo: float, setting: str) -> None:
    """Attainment and p95 latency per minute of arrivals, the three systems, the phase switches, the detections
    and the moments a new plan serves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    colors = {"static": "#999999", "rescheduled": "#d62728", "oracle": "#1f77b4"}
    for name, parts in per_request.items():
        t = np.concatenate([p[0] for p in parts])
        e2e = np.concatenate([p[1] for p in parts])
        ok = np.concatenate([p[2] for p in parts])
        b = (t // PLOT_BIN_S).astype(int)
        xs, att, p95 = [], [], []
        for k in np.unique(b):
            sel = b == k
            xs.append((k + 0.5) * PLOT_BIN_S / 60)
            att.append(ok[sel].mean())
            p95.append(np.percentile(e2e[sel], 95))
        ax1.plot(xs, att, color=colors[name], label=name, lw=1.6 if name == "rescheduled" else 1.2)
        ax2.plot(xs, p95, color=colors[name], label=name, lw=1.6 if name == "rescheduled" else 1.2)
    for ax in (ax1, ax2):
        for s0, label in zip(starts, labels):
            ax.axvline(s0 / 60, color="black", lw=0.8, ls="--")
        for c in changes:
            ax.axvline(c.detect_t / 60, color="#d62728", lw=0.6, ls=":")
            if c.switch_t is not None:
                ax.axvline(c.switch_t / 60, color="#d62728", lw=0.8, ls="-.")
    for s0, label in zip(starts, labels):
        ax1.text(s0 / 60 + 0.3, 0.03, label, fontsize=9)
    ax1.set_ylabel(f"SLO attainment\n(latency <= {scale_slo:.1f} x ref.)")
    ax1.set_ylim(0, 1.02)
    ax2.set_ylabel("p95 latency (s)")
    ax2.set_yscale("log")
    ax2.set_xlabel("time (minutes); dashed: workload switch, dotted: drift detected, dash-dot: new plan serves")
    ax1.legend(loc="lower right", fontsize=8)
    where = "32 x H100 pool, least latency" if setting == "pool" else (
        f"AWS H100, least cost under p95 {CLOUD_SLO_P95_S:g} s")
    ax1.set_title(f"deepseek cascade, {where}: conversation -> code -> conversation x2 (simulated)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=("pool", "cloud"), default="pool",
                    help="pool: examples/deepseek.yaml (32 x H100, least latency); cloud: AWS H100s, least cost "
                         f"under a {CLOUD_SLO_P95_S:g} s p95 SLO")
    ap.add_argument("--plot", default=None,
                    help="where to write the plot (PNG; default docs/reschedule_switch[_cloud].png); '' for none")
    ap.add_argument("--short", action="store_true",
                    help="each phase plays its trace once (rate_scale compresses it: 7-15 minutes a phase) instead "
                         "of for the trace's own hour")
    args = ap.parse_args()
    plot = args.plot if args.plot is not None else str(
        REPO / "docs" / ("reschedule_switch.png" if args.setting == "pool" else "reschedule_switch_cloud.png"))
    main(plot or None, args.setting, replay=not args.short)
