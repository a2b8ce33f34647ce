"""Presenting a plan: the rich tables of `cascadia plan` and the latency-quality frontier PNG of `--explain`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cascadia_sky.planner.plan import Plan


def _fmt_threshold(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def plan_table(plan: Plan) -> Table:
    """One row per stage: where it runs, how it is split, what it handles and how fast."""
    t = Table(title=f"plan '{plan.name}': {plan.mode} mode, {plan.objective} latency, {plan.goal}")
    cols = ["stage", "model", "GPU", "TPxPP", "DP", "GPUs", "threshold", "reach", "answer", "req/s", "p95 s"]
    if plan.mode == "cloud":
        cols[3:3] = ["where"]
        cols.append("$/h")
    for c in cols:
        t.add_column(c, justify="left" if c in ("stage", "model", "GPU", "where") else "right",
                     overflow="fold")
    for s in plan.stages:
        row = [s.name, _short(s.model), s.gpu_type + (" spot" if s.spot else ""), f"{s.tp}x{s.pp}",
               str(s.replicas), str(s.gpus), _fmt_threshold(s.threshold), f"{s.share:.0%}",
               f"{s.answered_share:.0%}", f"{s.rate_rps:.2f}", f"{s.p95_latency_s:.2f}"]
        if plan.mode == "cloud":
            row[3:3] = [f"{s.cloud} {s.region} {s.instances}x{s.instance_type}"]
            row.append(f"{s.usd_per_hour:.2f}")
        t.add_row(*row)
    return t


def summary(plan: Plan) -> Text:
    p, s = plan.predicted, plan.solver
    lines = [
        f"predicted quality {p.quality:.4f} (held-out {p.quality_holdout:.4f})" if p.quality_holdout is not None
        else f"predicted quality {p.quality:.4f}",
        f"target {p.quality_target:.4f}; largest model alone {p.quality_all_last:.4f}, smallest alone "
        f"{p.quality_all_first:.4f}",
    ]
    if p.quality_lower_bound is not None:
        lines.append(f"quality lower bound at the requested confidence: {p.quality_lower_bound:.4f}")
    if p.quality_holdout_interval:
        lo, hi = p.quality_holdout_interval
        lines.append(f"held-out quality interval: {lo:.4f} .. {hi:.4f}")
    if p.quality_note:
        lines.append(f"quality: {p.quality_note}")
    where = (f"{len(plan.stages)} local CPU engines" if plan.mode == "local"
             else f"{p.gpus} GPUs; ${p.usd_per_hour:.2f}/h")
    lines.append(f"objective L ({plan.objective}, tail-weighted stage p95s) {p.p95_latency_s:.2f} s; {where}")
    if p.request_p95_latency_s is not None:
        bursty = (f"; under the trace's bursts {p.request_p95_latency_bursty_s:.2f} s"
                  if p.request_p95_latency_bursty_s is not None else "")
        lines.append(f"request-level p95 (Poisson at the mean rate) {p.request_p95_latency_s:.2f} s{bursty}")
    if p.single_model_note:
        lines.append(f"note: {p.single_model_note}")
    proof = ("proven optimal" if s.proven_optimal else
             (f"not proven, gap in J {s.gap_j:.3g}" if s.gap_j is not None else "not proven (heuristic search)"))
    lines.append(f"solver: {s.status}; threshold search {s.search or '-'} over {s.threshold_vectors} vectors "
                 f"({s.vectors_priced} priced), {proof}; MILP {s.milp_status}"
                 f"{', pool relaxed to <= N' if s.pool_relaxed else ''}; {s.deployment_solves} MILP solves, "
                 f"{s.wall_s:.2f} s")
    return Text("\n".join(lines))


def frontier_table(plan: Plan) -> Table:
    t = Table(title="latency-quality frontier (no evaluated plan is both faster and better)")
    for c in ("thresholds", "quality", "p95 s", "$/h", "last share", "last GPUs"):
        t.add_column(c, justify="right")
    for f in plan.frontier:
        t.add_row(" ".join(_fmt_threshold(v) for v in f.thresholds[:-1]), f"{f.quality:.4f}",
                  f"{f.p95_latency_s:.2f}", f"{f.usd_per_hour:.2f}", f"{f.last_stage_share:.1%}",
                  str(f.last_stage_gpus))
    return t


def binding_table(plan: Plan) -> Table:
    t = Table(title="why each stage got what it got")
    t.add_column("stage")
    t.add_column("binding constraint", overflow="fold")
    for s in plan.stages:
        t.add_row(s.name, s.binding or "-")
    return t


def latency_table(check: dict) -> Table:
    """Predicted request-level p95 next to the simulator's (`sim.check.latency_check`)."""
    t = Table(title="request-level p95: planner vs simulator (same requests)")
    for c in ("arrivals", "predicted s", "simulated s", "error"):
        t.add_column(c, justify="right")
    for name in ("poisson", "trace"):
        row = check.get(name)
        if row is None:
            continue
        pred, err = row["predicted_s"], row["error"]
        t.add_row(name, "-" if pred is None else f"{pred:.2f}", f"{row['simulated_s']:.2f}",
                  "-" if err is None else f"{err:+.0%}")
    return t


def explanation(plan: Plan) -> Group:
    return Group(frontier_table(plan), binding_table(plan))


def frontier_png(plan: Plan, path: str | Path) -> Path:
    """Scatter of the frontier (p95 latency vs quality) with the target and the chosen plan marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    xs = [f.p95_latency_s for f in plan.frontier]
    ys = [f.quality for f in plan.frontier]
    ax.plot(xs, ys, "o-", color="#4c72b0", label="frontier")
    ax.axhline(plan.predicted.quality_target, color="#c44e52", ls="--", lw=1, label="quality target")
    ax.plot([plan.predicted.p95_latency_s], [plan.predicted.quality], "*", ms=14, color="#dd8452", label="plan")
    ax.set_xlabel(f"p95 latency ({plan.objective}), s")
    ax.set_ylabel("quality of returned answers")
    ax.set_title(f"cascade '{plan.name}': latency-quality frontier")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p
