"""The Cascadia paper's comparison, reproduced in the simulator: cascadia against its baselines and ablations.

Settings (12): the DeepSeek cascade (examples/deepseek.yaml: R1-Distill-Qwen-7B -> R1-Distill-Llama-70B ->
DeepSeek-R1 AWQ) and the Llama cascade (examples/llama3.yaml: Llama-3.1 8B -> 70B -> 405B FP8), each on a pool of
32 H100; three workloads; two quality targets (95 % and 90 % of the last model's quality on the profile).

Workloads:
- `conv`, `code`: the Azure LLM inference traces of 2023 (examples/traces; Patel et al., "Splitwise", ISCA 2024),
  arrival times and input/output lengths as recorded, time compressed to the setting's rate;
- `reasoning`: long answers, as reasoning models write them. Poisson arrivals; input lengths and output lengths
  drawn (independently, uniformly) from the prompt lengths and DeepSeek-R1's answer lengths of
  examples/profiles/deepseek.csv (synthetic, modelled on MATH-500 / GPQA / LiveCodeBench / AIME answers: median
  about 4,000 output tokens). Every stage of either cascade answers with these lengths.

Load: each (cascade, workload) runs at `LOAD_FRACTION` (50 %) of the highest rate that the last model alone could
sustain on the 32 GPUs with its best layout (performance model, Poisson arrivals), so every system is loaded: about
the load of the examples (4x the traces' rates: 37 % and 54 % of that capacity); the traces' bursts push it higher.
Every system is planned for that rate and replayed on the same requests (same arrivals, same profile prompt per
request).

Figures per setting and system:
- SLO scale at 95 % attainment at the setting's rate (see cascadia_sky/sim/simulate.py for the definition);
- throughput at 95 % attainment: the highest rate (the plan unchanged, the requests replayed faster or slower) at
  which 95 % of requests meet the setting's SLO scale s*, by bisection over the rate (about 4 % resolution).
  s* is fixed per setting before any throughput is measured and without regard to which system it favours: the
  median over all systems of their SLO scale at 95 % attainment at the setting's rate;
- ratios: baseline SLO scale / cascadia's (x tighter) and cascadia's throughput / baseline's (x higher); their
  average and maximum over the settings, as the paper reports them.

    python benchmarks/paper_comparison.py [--jobs 2] [--out docs/paper_comparison.md] [--quick]

The last output line is one JSON object: per baseline, the average and maximum ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cascadia_sky.catalog import get_gpu
from cascadia_sky.constants import SIM_SEED
from cascadia_sky.perf import LengthDist, open_loop
from cascadia_sky.perf.step import Deployment
from cascadia_sky.planner.candidates import parallel_shapes
from cascadia_sky.planner.planner import DeploymentLevel, build_context
from cascadia_sky.quality import load_profile
from cascadia_sky.sim.baselines import baseline_names, make_baseline
from cascadia_sky.sim.report import SLO_SCALES, throughput_at_attainment
from cascadia_sky.sim.simulate import Requests, simulate, spec_requests
from cascadia_sky.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CASCADES = {"deepseek": "deepseek.yaml", "llama3": "llama3.yaml"}
WORKLOADS = ("conv", "code", "reasoning")
TARGETS = (0.95, 0.90)
LOAD_FRACTION = 0.5
REASONING_REQUESTS = 6000
OURS = "cascadia"
PAPER = {  # the paper's reported ratios (Jiang et al., arXiv 2506.04203): SLO tighter / throughput higher
    "single": "SLO up to 4x (2.3-2.8x on average); throughput up to 5x (2.4x on average)",
    "cascadeserve": "SLO up to 2.5x (1.7x on average)",
}


@dataclass
class Setting:
    cascade: str
    workload: str
    target: float
    rate_rps: float = 0.0
    spec_path: str = ""


@dataclass
class Outcome:
    setting: Setting
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    s_star: float = math.nan
    wall_s: float = 0.0
    curves: dict[str, list[float]] = field(default_factory=dict)   # attainment at SLO_SCALES per system
    objective_at_cascadeserve: float = math.nan    # cascadia's own objective L at CascadeServe's thresholds


def _r1_lengths() -> tuple[list[int], list[int]]:
    prof = load_profile(EXAMPLES / "profiles" / "deepseek.csv", ["deepseek-ai/DeepSeek-R1"])
    return prof.input_tokens[:, 0].astype(int).tolist(), prof.output_tokens[:, 0].astype(int).tolist()


def _spec_data(cascade: str, workload: str, target: float) -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / CASCADES[cascade]).read_text())
    data["name"] = f"{cascade}-{workload}-{round(target * 100)}"
    data["quality"]["profile"] = str(EXAMPLES / data["quality"]["profile"])
    data["quality"].pop("target", None)
    data["quality"]["relative_target"] = target
    if workload == "reasoning":
        ins, outs = _r1_lengths()
        data["workload"] = {"rate_rps": 1.0, "input_tokens": {"dist": "empirical", "values": ins},
                            "output_tokens": {"dist": "empirical", "values": outs}}
    else:
        data["workload"] = {"trace": str(EXAMPLES / "traces" / f"AzureLLMInferenceTrace_{workload}.csv"),
                            "rate_scale": 1.0}
    return data


def _single_capacity_rps(spec_path: Path) -> float:
    """The highest rate the last model alone sustains on the pool, best TP x PP and replicas (performance model)."""
    spec = load_spec(spec_path)
    ctx = build_context(spec)
    w = ctx.workload
    idx = np.random.default_rng(0).choice(w.n, size=min(w.n, 4000), replace=False)
    lengths = LengthDist(w.input_tokens[idx], w.output_tokens[idx])
    st = ctx.stages[-1]
    pool = spec.resources.pool
    assert pool is not None
    gpu = get_gpu(pool.gpu)
    best = 0.0
    for tp, pp in parallel_shapes(st, gpu, pool.count):
        dep = Deployment(model=st.model, gpu=gpu, tp=tp, pp=pp, precision=st.precision)
        best = max(best, pool.count // (tp * pp) * open_loop(dep, 0.0, lengths).max_rate_rps)
    return best


def prepare(tmp: Path, quick: bool) -> list[Setting]:
    """Write one spec per setting, at LOAD_FRACTION of the single model's capacity."""
    settings = []
    for cascade in CASCADES:
        for workload in WORKLOADS if not quick else WORKLOADS[:1]:
            probe = tmp / f"{cascade}-{workload}-probe.yaml"
            probe.write_text(yaml.safe_dump(_spec_data(cascade, workload, TARGETS[0]), sort_keys=False))
            base_rate = load_spec(probe)
            rate = LOAD_FRACTION * _single_capacity_rps(probe)
            for target in TARGETS if not quick else TARGETS[:1]:
                data = _spec_data(cascade, workload, target)
                if workload == "reasoning":
                    data["workload"]["rate_rps"] = round(rate, 4)
                else:
                    from cascadia_sky.workload import load_trace

                    trace_rate = load_trace(base_rate.resolve(data["workload"]["trace"])).rate_rps
                    data["workload"]["rate_scale"] = round(rate / trace_rate, 4)
                path = tmp / f"{data['name']}.yaml"
                path.write_text(yaml.safe_dump(data, sort_keys=False))
                settings.append(Setting(cascade, workload, target, rate, str(path)))
    return settings


def _poisson_arrivals(reqs: Requests) -> Requests:
    """The same requests in random order with Poisson arrivals at the same mean rate (a control for burstiness)."""
    rng = np.random.default_rng(SIM_SEED)
    gaps = rng.exponential(float(reqs.arrival_s[-1] - reqs.arrival_s[0]) / max(reqs.n - 1, 1), reqs.n)
    t = np.cumsum(gaps) - gaps[0]
    k = rng.permutation(reqs.n)
    return Requests(t, reqs.input_tokens[k], reqs.output_tokens[k], reqs.scores[k], reqs.quality[k], "poisson")


def run_setting(args: tuple[Setting, int]) -> Outcome:
    """Plan every system, replay at the setting's rate, fix s*, then find each system's throughput."""
    setting, steps = args
    t0 = time.perf_counter()
    spec = load_spec(setting.spec_path)
    reqs = spec_requests(spec, n_requests=REASONING_REQUESTS)
    poisson = _poisson_arrivals(reqs)
    out = Outcome(setting)
    plans = {}
    for name in baseline_names():
        plan = make_baseline(name, spec)
        res = simulate(spec, plan, requests=reqs, name=name)
        plans[name] = plan
        out.curves[name] = res.attainment(SLO_SCALES).tolist()
        s = res.summary()
        out.rows[name] = {"quality": s["quality"], "slo_scale": s["slo_scale_p95"], "e2e_p95_s": s["e2e_p95_s"],
                          "gpus": ", ".join(f"{st.tp}x{st.pp}x{st.replicas}" for st in plan.stages),
                          "last_share": s["answered_share"][-1], "status": plan.solver.status,
                          "predicted_p95_s": plan.predicted.p95_latency_s,
                          "slo_scale_poisson": simulate(spec, plan, requests=poisson, name=name).slo_scale()}
    thresholds = tuple(float(st.threshold) for st in plans["cascadeserve"].stages[:-1])   # type: ignore[arg-type]
    out.objective_at_cascadeserve = DeploymentLevel(build_context(spec))(thresholds)[0]
    finite = [r["slo_scale"] for r in out.rows.values() if math.isfinite(r["slo_scale"])]
    out.s_star = statistics.median(finite)
    for name, plan in plans.items():
        mult = throughput_at_attainment(
            lambda m, plan=plan, name=name: simulate(spec, plan, requests=reqs.scaled(m), name=name), out.s_star,
            steps=steps)
        out.rows[name]["throughput_rps"] = mult * setting.rate_rps
    out.wall_s = time.perf_counter() - t0
    return out


def ratios(outcomes: list[Outcome], ours: str = OURS) -> dict[str, dict[str, float]]:
    """Per baseline: SLO ratio (baseline scale / ours) and throughput ratio (ours / baseline): average, geometric
    mean, max, min over the settings, and in how many settings ours is better (ratio > 1)."""
    summary: dict[str, dict[str, float]] = {}
    for name in baseline_names():
        if name == ours:
            continue
        slo = [o.rows[name]["slo_scale"] / o.rows[ours]["slo_scale"] for o in outcomes]
        tput = [o.rows[ours]["throughput_rps"] / o.rows[name]["throughput_rps"] if o.rows[name]["throughput_rps"] > 0
                else math.inf for o in outcomes]
        summary[name] = {**_stats("slo", slo), **_stats("throughput", tput), "settings": len(outcomes)}
    return summary


def _stats(key: str, xs: list[float]) -> dict[str, float]:
    """Average and geometric mean over the finite values (inf: the baseline never meets s*), max, min, wins."""
    finite = [x for x in xs if math.isfinite(x)]
    return {f"{key}_avg": float(np.mean(finite)) if finite else math.nan,
            f"{key}_geomean": float(np.exp(np.mean(np.log(finite)))) if finite else math.nan,
            f"{key}_max": max(xs), f"{key}_min": min(xs), f"{key}_wins": sum(x > 1.0 for x in xs)}


def _f(x: float, digits: int = 2) -> str:
    return "inf" if x == math.inf else ("-" if not math.isfinite(x) else f"{x:.{digits}f}")


def grid_plot(outcomes: list[Outcome], path: Path) -> Path:
    """One PNG: SLO attainment against SLO scale, one panel per setting, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = math.ceil(len(outcomes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=True)
    for ax, o in zip(axes.ravel(), outcomes):
        for name, curve in o.curves.items():
            ax.plot(SLO_SCALES, np.asarray(curve) * 100, label=name, linewidth=1.2)
        ax.axhline(95, color="grey", linestyle=":", linewidth=0.8)
        s = o.setting
        ax.set(xscale="log", title=f"{s.cascade} {s.workload} {s.target:.0%}", ylim=(0, 101))
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(outcomes):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("SLO scale (latency / reference latency)", fontsize=9)
    fig.supylabel("SLO attainment (%)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def _label(o: Outcome) -> str:
    s = o.setting
    return f"{s.cascade} {s.workload} {s.target:.0%}"


def _summary_rows(summary: dict[str, dict[str, float]], names: list[str], paper: bool) -> list[str]:
    head = ("| baseline | SLO x tighter: avg | geo-mean | max | min | settings won | throughput x higher: avg | "
            "geo-mean | max | min | settings won |" + (" paper reports |" if paper else ""))
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for name in names:
        r = summary[name]
        n = int(r["settings"])
        rows.append(f"| {name} | {_f(r['slo_avg'])} | {_f(r['slo_geomean'])} | {_f(r['slo_max'])} | "
                    f"{_f(r['slo_min'])} | {int(r['slo_wins'])}/{n} | {_f(r['throughput_avg'])} | "
                    f"{_f(r['throughput_geomean'])} | {_f(r['throughput_max'])} | {_f(r['throughput_min'])} | "
                    f"{int(r['throughput_wins'])}/{n} |" + (f" {PAPER.get(name, '')} |" if paper else ""))
    return rows


def _losses(outcomes: list[Outcome], name: str) -> str:
    lost = [_label(o) for o in outcomes if o.rows[name]["slo_scale"] < o.rows[OURS]["slo_scale"]]
    return ", ".join(lost) if lost else "none"


def _differences(outcomes: list[Outcome], summary: dict[str, dict[str, float]]) -> list[str]:
    """The section on where and why our figures differ from the paper's; numbers filled in from this run."""
    single, cs = summary["single"], summary["cascadeserve"]
    bursty = [o for o in outcomes if o.setting.workload != "reasoning"]
    trace_ratio = [o.rows["single"]["slo_scale"] / o.rows[OURS]["slo_scale"] for o in bursty]
    poisson_ratio = [o.rows["single"]["slo_scale_poisson"] / o.rows[OURS]["slo_scale_poisson"] for o in bursty]
    long = [o for o in outcomes if o.setting.workload == "reasoning"]
    cs_wins = [o for o in outcomes if o.rows["cascadeserve"]["slo_scale"] < o.rows[OURS]["slo_scale"]]
    burst_only = [o for o in cs_wins if o.rows["cascadeserve"]["slo_scale_poisson"]
                  >= o.rows[OURS]["slo_scale_poisson"]]
    missed = [o for o in outcomes if o.objective_at_cascadeserve < o.rows[OURS]["predicted_p95_s"] * (1 - 1e-6)]
    return [
        "## Where our numbers differ from the paper's, and why",
        "",
        (f"- **Against the stand-alone model** cascadia's SLO is {_f(single['slo_avg'])}x tighter on average "
         f"(geometric mean {_f(single['slo_geomean'])}x, up to {_f(single['slo_max'])}x) and its throughput "
         f"{_f(single['throughput_avg'])}x higher on average (up to {_f(single['throughput_max'])}x); the paper "
         "reports 2.3-2.8x (up to 4x) and 2.4x (up to 5x). The stand-alone model is better in: "
         f"{_losses(outcomes, 'single')}."),
        (f"- **Against CascadeServe** (our reimplementation of its policy, see `cascadia_sky/sim/baselines.py`) "
         f"cascadia's SLO is {_f(cs['slo_avg'])}x tighter on average but only {_f(cs['slo_geomean'])}x as a "
         f"geometric mean, from {_f(cs['slo_min'])}x to {_f(cs['slo_max'])}x; the paper reports 1.7x on average, "
         f"up to 2.5x. CascadeServe is better in: {_losses(outcomes, 'cascadeserve')}."),
        "",
        "Why:",
        "",
        ("1. **Simulated, not measured.** No GPU ran here. Every engine is simulated on the performance model's "
         "step times; against measured vLLM closed-loop benchmarks (`tests/test_sim_closed_loop.py`) the "
         "simulator's median error is about 8 % for TPOT and 24 % for TTFT. The paper measured real vLLM "
         "deployments on 32 H100."),
        ("2. **Synthetic quality profiles.** Which requests each stage answers comes from "
         "`examples/profiles/*.csv`, generated from published benchmark accuracies with assumed score AUROCs "
         "(0.67-0.78) and an assumed correlation between models (see `examples/profiles/README.md`). The paper "
         "judged real answers with GPT-4o. A weaker score means more escalations, so more requests pay for "
         "several stages; the shares per stage, and so every ratio, move with the profile. The paper's judge "
         "also costs about 0.27 s per stage visit; our scorer reads logprobs (0.5 ms per visit in the simulator)."),
        ("3. **Bursty traces against a Poisson planner.** The planner's latency estimates assume Poisson arrivals; "
         "the Azure traces arrive in bursts, and a stage served by one or two large replicas (or the stand-alone "
         "model's pipelined replicas) queues far more than planned, while plans with many small replicas absorb "
         "bursts better. Replaying the same requests with Poisson arrivals (column *Poisson*) shows how much of "
         "each ratio is burstiness: on the trace workloads the stand-alone model's SLO ratio averages "
         f"{_f(float(np.mean(trace_ratio)))}x on the traces but {_f(float(np.mean(poisson_ratio)))}x with Poisson "
         "arrivals. CascadeServe beats cascadia on the trace but not with Poisson arrivals in: "
         f"{', '.join(_label(o) for o in burst_only) or 'none'}."),
        ("4. **The threshold search can stop short.** In "
         + (", ".join(f"{_label(o)} ({_f(o.objective_at_cascadeserve, 1)} s against "
                      f"{_f(o.rows[OURS]['predicted_p95_s'], 1)} s)" for o in missed) or "no setting")
         + ", CascadeServe's thresholds score better on cascadia's own objective than the thresholds cascadia's "
         "search (`planner/route.py`) returned: the search over threshold vectors is heuristic (a coarse grid, "
         "then one threshold at a time), and with a binding quality target the thresholds of two stages must "
         "move together to trade requests between them."),
        ("5. **The objectives bound per-stage or per-path p95s, the metric counts requests.** Both objectives "
         "(the paper's slowest stage and our slowest path taken by at least 1 % of requests) make a path with a "
         "few per cent of the requests as binding as a path with half of them, while the 95th percentile of all "
         "requests barely sees a path that 5 % take; plans that send fewer requests to the last model gain on this "
         "metric more than the objectives credit them."),
        ("6. **Long outputs make escalation expensive.** With reasoning-length answers (about 4,000 tokens, "
         "`reasoning` rows) every escalated request generates a whole answer again at the next stage, so the "
         "cascade's advantage over the stand-alone model is smaller than on the traces, or negative: "
         + ("; ".join(f"{_label(o)}: cascadia {_f(o.rows[OURS]['slo_scale'])}, single "
                      f"{_f(o.rows['single']['slo_scale'])}" for o in long) or "no such setting in this run")
         + ". CascadeServe-like plans, sized without regard to lengths (smallest TP), run out of KV cache there "
         "(preemptions and long queues)."),
        ("7. **Baselines are ours.** `single` is planned by our own MILP over every TP x PP x DP (a strong "
         "baseline); `cascadeserve` follows the issue's description of CascadeServe (no public code was "
         "used); the rates (half the stand-alone model's capacity) and the SLO definitions are ours, and the "
         "ratios move with the load."),
        "",
    ]


def markdown(outcomes: list[Outcome], command: str, wall_s: float, plot: str = "") -> str:
    """The committed report: settings, summary against the paper, why we differ, per-setting tables."""
    ours = ratios(outcomes)
    paper_sys = ratios(outcomes, "cascadia-max-stage")
    lines = [
        "# Paper comparison (simulated)",
        "",
        "Generated by `benchmarks/paper_comparison.py` (do not edit by hand). Regenerate with:",
        "",
        f"    {command}",
        "",
        (f"{len(outcomes)} settings, {wall_s / 60:.1f} min on this 2-core machine. Method, settings and "
         "definitions: the script's docstring; the simulator: `cascadia_sky/sim/` (engines on the performance "
         "model's step times, vLLM-like scheduling, cascade routing by the quality profile's scores)."),
        "",
        ("- **SLO scale @95%**: the tightest SLO, as a multiple of each request's latency alone on an idle "
         "single-model deployment of the last model, that 95 % of requests meet at the setting's rate (lower is "
         "better). *Poisson*: the same requests with Poisson arrivals at the same mean rate."),
        ("- **throughput @95%**: the highest rate (req/s) at which 95 % of requests still meet the setting's SLO "
         "scale s* (plans unchanged; higher is better); 0 when even 1/64 of the rate misses it."),
        ("- **ratios**: baseline SLO scale / cascadia's (x tighter), cascadia's throughput / baseline's (x higher); "
         "averages and geometric means leave out infinite ratios (a baseline that never meets s*). `cascadia` is "
         "our planner with the end-to-end objective; `cascadia-max-stage` is the paper's objective."),
        "",
        *([f"![SLO attainment against SLO scale per setting]({plot})", ""] if plot else []),
        "## Summary",
        "",
        *_summary_rows(ours, [n for n in ours], paper=True),
        "",
        "The paper's own system uses the max-stage objective; the same ratios for `cascadia-max-stage`:",
        "",
        *_summary_rows(paper_sys, ["single", "cascadeserve", "uniform-gpus", "fixed-parallelism"], paper=False),
        "",
        *_differences(outcomes, ours),
        "## Per setting",
        "",
    ]
    for o in outcomes:
        s = o.setting
        lines += [f"### {s.cascade}, {s.workload}, quality target {s.target:.0%} of the last model",
                  "",
                  f"Rate {s.rate_rps:.2f} req/s; s* = {o.s_star:.2f}; {o.wall_s:.0f} s.",
                  "",
                  ("| system | TPxPPxDP per stage | plan status | quality | last-stage share | planned p95 s | "
                   "e2e p95 s | SLO scale @95% | Poisson | throughput @95% req/s | SLO x tighter | "
                   "throughput x higher |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        a = o.rows[OURS]
        for name, r in o.rows.items():
            slo_r = r["slo_scale"] / a["slo_scale"]
            tp_r = a["throughput_rps"] / r["throughput_rps"] if r["throughput_rps"] > 0 else math.inf
            lines.append(f"| {name} | {r['gpus']} | {r['status']} | {r['quality']:.4f} | {r['last_share']:.0%} | "
                         f"{_f(r['predicted_p95_s'], 1)} | {_f(r['e2e_p95_s'], 1)} | {_f(r['slo_scale'])} | "
                         f"{_f(r['slo_scale_poisson'])} | {_f(r['throughput_rps'])} | {_f(slo_r)} | {_f(tp_r)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="settings run in parallel (processes)")
    ap.add_argument("--out", default=str(REPO / "docs" / "paper_comparison.md"), help="markdown report to write")
    ap.add_argument("--plot", default=str(REPO / "docs" / "paper_comparison.png"), help="PNG to write ('' = none)")
    ap.add_argument("--steps", type=int, default=4, help="bisection steps per throughput search")
    ap.add_argument("--quick", action="store_true", help="one workload and one target per cascade (a smoke run)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        settings = prepare(Path(tmp), args.quick)
        work = [(s, args.steps) for s in settings]
        if args.jobs > 1:
            with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
                outcomes = pool.map(run_setting, work, chunksize=1)
        else:
            outcomes = [run_setting(w) for w in work]
    wall = time.perf_counter() - t0
    for o in outcomes:
        s = o.setting
        print(f"{s.cascade:8s} {s.workload:9s} {s.target:.2f} rate {s.rate_rps:6.2f} s*={o.s_star:6.2f} "
              + " ".join(f"{n}={r['slo_scale']:.2f}/{r['throughput_rps']:.2f}" for n, r in o.rows.items()))
    command = "python benchmarks/paper_comparison.py" + (" --quick" if args.quick else "") \
        + (f" --jobs {args.jobs}" if args.jobs != 2 else "")
    plot = ""
    if args.plot:
        picture = grid_plot(outcomes, Path(args.plot))
        plot = picture.name if args.out and picture.parent == Path(args.out).parent else str(picture)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(markdown(outcomes, command, wall, plot))
        print(f"wrote {args.out}", file=sys.stderr)
    summary = {name: {k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else str(v) if
                          isinstance(v, float) else v) for k, v in r.items()}
               for name, r in ratios(outcomes).items()}
    summary["wall_s"] = round(wall, 1)  # type: ignore[assignment]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
