"""Simulating several systems on the same requests, and presenting the outcome: tables, plots, throughput.

`simulate_systems` is what `cascadia simulate` calls: the given plan (or a fresh one) and, with baselines, every
strategy of the registry, each replayed on the same requests. `throughput_at_attainment` finds the highest rate at
which a plan still meets an SLO scale for 95 % of requests (bisection over the rate multiplier).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from cascadia_sky.constants import SIM_ATTAINMENT
from cascadia_sky.errors import CascadiaError
from cascadia_sky.planner.plan import Plan
from cascadia_sky.sim.simulate import OutputLengths, SimResult, simulate, spec_requests
from cascadia_sky.spec import CascadeSpec

Progress = Callable[[str], None]
SLO_SCALES = np.geomspace(0.5, 200.0, 241)     # the attainment curve's x axis


@dataclass
class SystemRun:
    """One system's plan and its simulation (or why it has none)."""

    name: str
    plan: Plan | None
    result: SimResult | None
    error: str = ""


def simulate_systems(spec: CascadeSpec, plan: Plan | None, *, baselines: bool, trace: str | None = None,
                     rate_multiplier: float = 1.0, output_lengths: OutputLengths = "auto",
                     plan_file: str = "plan.json", progress: Progress | None = None) -> list[SystemRun]:
    """The plan (a fresh cascadia plan when None) and optionally every baseline, on the same requests."""
    from cascadia_sky.planner.planner import make_plan
    from cascadia_sky.sim.baselines import baseline_names, make_baseline

    requests = spec_requests(spec, trace, rate_multiplier, output_lengths)
    runs: list[SystemRun] = []
    systems: list[tuple[str, Callable[[], Plan]]] = []
    if plan is not None:
        systems.append(("plan", lambda: plan))
    elif not baselines:
        systems.append(("plan", lambda: make_plan(spec)))
    if baselines:
        systems += [(name, lambda name=name: make_baseline(name, spec)) for name in baseline_names()]
    for name, build in systems:
        if progress:
            progress(f"{name}: planning")
        try:
            p = build()
        except CascadiaError as exc:
            runs.append(SystemRun(name, None, None, str(exc)))
            continue
        if progress:
            progress(f"{name}: simulating {requests.n} requests")
        result = simulate(spec, p, requests=requests, name=name, plan_file=plan_file if name == "plan" else name)
        runs.append(SystemRun(name, p, result))
    return runs


def throughput_at_attainment(simulate_at: Callable[[float], SimResult], slo_scale: float,
                             attainment: float = SIM_ATTAINMENT, start: float = 1.0, steps: int = 4,
                             limits: tuple[float, float] = (1 / 64, 64.0)) -> float:
    """The highest rate multiplier at which `attainment` of the requests meet `slo_scale` (0 when even the lowest
    tried fails): double or halve from `start` to bracket it, then `steps` bisections in log rate."""
    def ok(m: float) -> bool:
        return simulate_at(m).slo_scale(attainment) <= slo_scale

    lo, hi = (start, start * 2) if ok(start) else (start / 2, start)
    if lo == start:
        while hi <= limits[1] and ok(hi):
            lo, hi = hi, hi * 2
        if hi > limits[1]:
            return lo
    else:
        while lo >= limits[0] and not ok(lo):
            lo, hi = lo / 2, lo
        if lo < limits[0]:
            return 0.0
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


# --- presenting ----------------------------------------------------------------------------------

def _s(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.2f}"


def results_table(runs: Sequence[SystemRun], title: str) -> Table:
    """One row per system: quality, latency percentiles, SLO scale at 95 % attainment, answers per stage."""
    t = Table(title=title)
    for col in ("system", "stages (TPxPP x DP)", "quality", "e2e p50 s", "e2e p95 s", "e2e p99 s", "TTFT p50 s",
                "SLO scale @95%", "answered per stage"):
        t.add_column(col, justify="left" if col in ("system", "stages (TPxPP x DP)", "answered per stage")
                     else "right", overflow="fold")
    for run in runs:
        if run.result is None or run.plan is None:
            t.add_row(run.name, "-", "-", "-", "-", "-", "-", "-", f"not planned: {run.error}")
            continue
        s = run.result.summary()
        layout = " | ".join(f"{st.tp}x{st.pp}x{st.replicas}" for st in run.plan.stages)
        answered = " / ".join(f"{a:.0%}" for a in s["answered_share"])
        t.add_row(run.name, layout, f"{s['quality']:.4f}", _s(s["e2e_p50_s"]), _s(s["e2e_p95_s"]),
                  _s(s["e2e_p99_s"]), _s(s["ttft_p50_s"]), _s(s["slo_scale_p95"]), answered)
    return t


def stage_table(result: SimResult) -> Table:
    """Per stage of one system: load, queueing and busy time."""
    t = Table(title=f"stages of '{result.name}' (simulated)")
    for col in ("stage", "DP", "reached", "answered", "busy", "batch", "queue p50 s", "queue p95 s", "queue max s",
                "queue growth", "latency p95 s", "preempted", "max waiting"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for s in result.stages:
        t.add_row(s.name, str(s.replicas), str(s.reached), str(s.answered), f"{s.utilization_mean:.0%}",
                  f"{s.mean_batch:.1f}", _s(s.queue_wait_p50_s), _s(s.queue_wait_p95_s), _s(s.queue_wait_max_s),
                  f"{s.queue_growth:+.3f}", _s(s.latency_p95_s), str(s.preemptions), str(s.max_waiting))
    return t


def write_plots(runs: Sequence[SystemRun], prefix: str | Path, title: str = "") -> list[Path]:
    """Two PNGs: SLO attainment against SLO scale per system, and CDFs of end-to-end latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in runs if r.result is not None]
    base = Path(prefix)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_name(base.name + ".attainment.png"), base.with_name(base.name + ".latency_cdf.png")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in done:
        assert r.result is not None
        ax.plot(SLO_SCALES, r.result.attainment(SLO_SCALES) * 100, label=r.name)
    ax.axhline(SIM_ATTAINMENT * 100, color="grey", linestyle=":", linewidth=1)
    ax.set(xscale="log", xlabel="SLO scale (latency / reference latency)", ylabel="SLO attainment (%)",
           ylim=(0, 101), title=title or "SLO attainment")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in done:
        assert r.result is not None
        x = np.sort(r.result.e2e_s)
        ax.plot(x, np.arange(1, x.size + 1) / x.size * 100, label=r.name)
    ax.set(xscale="log", xlabel="end-to-end latency (s)", ylabel="requests (%)", ylim=(0, 101),
           title=title or "latency CDF")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
