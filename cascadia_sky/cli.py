"""The `cascadia` command line. Thin: each command parses, calls one library function, prints.

Heavy imports (PuLP, SkyPilot, FastAPI) happen inside the commands, so `cascadia --help` stays fast.
Errors from the library (`CascadiaError`) become one red line per problem and the error's exit code; set
CASCADIA_DEBUG=1 to see the traceback. Text that comes from the user or a file (paths, messages, patterns) is
printed as plain text, never as rich markup, so brackets in it survive.

Files the commands write go to one documented place unless `-o`/`--png` says otherwise: `cascadia plan` writes
`<state home>/plans/<name>/plan.json` (and the frontier PNG beside it); `cascadia simulate` writes its plots beside
the plan it replays, else in that same folder. The state home is $CASCADIA_HOME, else ~/.cascadia.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console

from rich.text import Text
from typer.core import TyperGroup

from cascadia_sky import __version__
from cascadia_sky.constants import DEBUG_ENV_VAR
from cascadia_sky.errors import CascadiaError

# `cascadia --help` lists the commands in the order a user runs them; any other command follows.
WORKFLOW = ("validate", "calibrate", "plan", "up", "status", "reschedule", "watch", "down", "simulate", "router",
            "catalog", "perf")


def _flag(*names: str, **kwargs: Any) -> Any:
    """A boolean flag (off by default), shown in --help as a flag, without a `<bool>` type column."""
    return typer.Option(False, *names, metavar="", **kwargs)


class _WorkflowGroup(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: (WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW), names.index(n)))


app = typer.Typer(
    name="cascadia",
    cls=_WorkflowGroup,
    help="Plan, launch and serve LLM model cascades (the Cascadia method) on clouds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
perf_app = typer.Typer(help="The performance model: estimate one configuration, validate against measurements.",
                       no_args_is_help=True)
app.add_typer(perf_app, name="perf")

# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns, so tables stay readable.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"cascadia-sky {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = _flag("--version", callback=_version_callback, is_eager=True,
                          help="Print the version and exit."),
) -> None:
    """Plan, launch and serve LLM model cascades."""


@app.command()
def validate(
    spec_file: str = typer.Argument(..., metavar="CASCADE.YAML", help="The cascade spec to check."),
) -> None:
    """Check a cascade.yaml (types, models, GPUs, files, memory fit) without planning anything."""
    from rich.table import Table

    from cascadia_sky.spec import describe_spec, load_spec

    spec = load_spec(spec_file)
    table = Table(title=f"cascade '{spec.name}' is valid", show_header=True)
    for col in ("stage", "model", "precision", "max context", "params", "weights", "GPU types allowed"):
        table.add_column(col)
    for row in describe_spec(spec):
        table.add_row(*row)
    console.print(table)
    _warn(spec.warnings)
    console.print(Text.assemble("Next: ", (f"cascadia plan {spec_file}", "bold")))


catalog_app = typer.Typer(help="GPU types and cloud offers; `refresh` fetches today's prices from a cloud's APIs.")
app.add_typer(catalog_app, name="catalog")


@catalog_app.callback(invoke_without_command=True)
def catalog(
    ctx: typer.Context,
    cloud: list[str] = typer.Option(None, "--cloud", "-c", help="Only these clouds (repeatable): aws, gcp, ..."),
    gpu: list[str] = typer.Option(None, "--gpu", "-g", help="Only these GPU types (repeatable; aliases work)."),
    spot: bool = _flag("--spot", help="Price spot instances (offers without spot are left out)."),
    max_price: float = typer.Option(None, "--max-price", min=0.0,
                                    help="Leave out instances above this many USD per hour."),
    as_json: bool = _flag("--json", help="Print one JSON object instead of tables."),
) -> None:
    """List GPU types (specs) and the cheapest cloud offer per GPU type and instance size, with each price's
    source and age (the newest catalog per cloud: a refreshed user catalog over the shipped one)."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from rich.table import Table

    from cascadia_sky.catalog_view import catalog_view, format_age

    view = catalog_view(cloud or None, gpu or None, spot, max_price)
    if as_json:
        print(json.dumps(view.to_dict(), indent=2))
        return
    specs = Table(title="GPU types (dense datasheet peaks)")
    for col in ("GPU", "vendor", "memory GB", "BF16 TFLOP/s", "FP8 TFLOP/s", "HBM TB/s", "link GB/s", "per node"):
        specs.add_column(col, justify="left" if col in ("GPU", "vendor") else "right", overflow="fold")
    for g in view.gpus:
        specs.add_row(g.name, g.vendor, f"{g.memory_gb:g}", f"{g.bf16_tflops:g}",
                      "-" if g.fp8_tflops is None else f"{g.fp8_tflops:g}", f"{g.hbm_tb_s:g}",
                      f"{g.interconnect_gb_s:g}", str(g.gpus_per_node))
    console.print(specs)
    table = Table(title=f"Cheapest {'spot' if spot else 'on-demand'} offer per GPU type and instance size",
                  caption="sources: catalogs/offers/SOURCES.md (shipped); `cascadia catalog refresh` (user)")
    for col in ("GPU", "GPUs", "cloud", "instance type", "region", "$/h", "$/GPU-h", "price source", "age"):
        table.add_column(col, justify="right" if col in ("GPUs", "$/h", "$/GPU-h", "age") else "left",
                         overflow="fold")
    for o, age in zip(view.offers, view.ages_days):
        source = (o.spot_source or o.source) if spot else o.source
        table.add_row(o.gpu, str(o.gpus), o.cloud, o.instance_type, o.region, f"{o.price(spot):.3f}",
                      f"{o.usd_per_gpu_hour(spot):.3f}", source[:60], format_age(age))
    console.print(table)
    sources = Table(title="Catalog per cloud")
    for col in ("cloud", "catalog", "prices from", "age", "path"):
        sources.add_column(col, overflow="fold")
    for src in view.sources:
        sources.add_row(src.cloud, "user (refreshed)" if src.user else "shipped", src.fetched_at or src.date,
                        format_age(src.age_days), src.path)
    console.print(sources)
    for src in view.sources:
        if src.stale:
            console.print(f"[yellow]warning: {src.cloud} prices are {format_age(src.age_days)} old (more than a "
                          f"week); refresh: cascadia catalog refresh --cloud {src.cloud}[/]"
                          if src.cloud == "aws" else f"[yellow]warning: {src.cloud} prices are "
                          f"{format_age(src.age_days)} old (more than a week)[/]")
        for gap in src.gaps:
            console.print(f"[yellow]gap in the {src.cloud} refresh: {gap}[/]")
    if not view.offers:
        console.print("No offers match; drop a filter (--cloud, --gpu, --max-price) or --spot.")


@catalog_app.command("refresh")
def catalog_refresh(
    cloud: str = typer.Option("aws", "--cloud", "-c", help="The cloud to refresh (aws)."),
    regions: list[str] = typer.Option(None, "--regions", "-r",
                                      help="Regions (repeatable or comma-separated); default: the account's "
                                           "enabled regions."),
    profile: str = typer.Option(None, "--profile", help="AWS profile (default: boto3's credential chain)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of text."),
) -> None:
    """Fetch today's GPU offers, on-demand and spot prices from the cloud's APIs into a user catalog."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cascadia_sky.cloud.aws_catalog import refresh_catalog

    wanted = [r.strip() for item in regions or [] for r in item.split(",") if r.strip()]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(f"refreshing {cloud}", total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        summary = refresh_catalog(cloud, wanted or None, progress=progress, profile=profile)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    console.print(f"{summary.cloud}: {summary.rows} offers ({summary.instance_types} GPU instance types, "
                  f"{summary.rows_with_spot} with a spot price) in {len(summary.regions)} regions, fetched "
                  f"{summary.fetched_at} in {summary.wall_s:.1f} s -> {summary.path}")
    if summary.rows_without_price:
        console.print(f"{summary.rows_without_price} offered (type, zone) pairs have no on-demand price and are "
                      "left out")
    if summary.price_fallbacks:
        console.print(f"{summary.price_fallbacks} rows keep the shipped catalog's on-demand price")
    for gap in summary.gaps:
        console.print(f"[yellow]gap: {gap['api']} in {gap['region']}: {gap['message']}[/]")
    console.print("Next: [bold]cascadia catalog --cloud aws[/] (plans now use these prices)")


@perf_app.command("estimate")
def perf_estimate(
    model: str = typer.Option(..., "--model", help="HF id or alias (llama-3.1-8b), or a local config.json."),
    gpu: str = typer.Option(..., "--gpu", help="GPU type or alias (H100, h200_sxm)."),
    tp: int = typer.Option(1, "--tp", help="Tensor parallel GPUs."),
    pp: int = typer.Option(1, "--pp", help="Pipeline stages."),
    precision: str = typer.Option("bf16", "--precision", help="bf16, fp16, fp8, int4-awq, int4, mxfp4, nvfp4."),
    concurrency: int = typer.Option(None, "--concurrency", help="Closed loop: this many clients."),
    rate: float = typer.Option(None, "--rate", help="Open loop: Poisson arrivals, requests per second."),
    isl: int = typer.Option(1024, "--isl", help="Input tokens per request (mean with --length-sigma)."),
    osl: int = typer.Option(256, "--osl", help="Output tokens per request (mean with --length-sigma)."),
    length_sigma: float = typer.Option(0.0, "--length-sigma", help="Open loop: lognormal spread of lengths."),
    replicas: int = typer.Option(1, "--replicas", help="Open loop: DP replicas sharing the rate."),
) -> None:
    """Estimate TTFT, TPOT and end-to-end latency of one configuration."""
    from rich.table import Table

    from cascadia_sky.perf.estimate import estimate_rows

    rows = estimate_rows(model, gpu, tp, pp, precision, concurrency=concurrency, rate_rps=rate, isl=isl, osl=osl,
                         length_sigma=length_sigma, replicas=replicas)
    table = Table(title="Performance estimate (vLLM, analytical)", show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@perf_app.command("validate")
def perf_validate(
    file: str = typer.Argument(..., metavar="FILE.csv", help="Measured rows (aiconfigurator silicon CSV format)."),
    as_json: bool = _flag("--json", help="Print one JSON object instead of tables."),
) -> None:
    """Compare predicted with measured TTFT/TPOT, row by row, with median and p90 errors."""
    import json

    from rich.table import Table

    from cascadia_sky.perf.validate import validate_csv

    report = validate_csv(file)
    if as_json:
        print(json.dumps(report.to_json()))
        return
    table = Table(title=f"Predicted vs measured: {file}")
    for col in ("model", "GPU", "prec", "TPxPP", "conc", "isl/osl", "TTFT ms", "pred", "TPOT ms", "pred"):
        table.add_column(col, justify="left" if col in ("model", "GPU", "prec") else "right")
    for r in report.rows:
        table.add_row(r.model, r.system, r.precision, f"{r.tp}x{r.pp}", str(r.concurrency), f"{r.isl}/{r.osl}",
                      f"{r.ttft_ms:.1f}", f"{r.ttft_pred_ms:.1f}", f"{r.tpot_ms:.2f}", f"{r.tpot_pred_ms:.2f}")
    console.print(table)
    for s in report.skipped:
        console.print(f"skipped line {s.line} ({s.id}): {s.reason}", highlight=False, markup=False)
    summ = report.summary()
    for key in ("ttft", "tpot"):
        console.print(f"{key.upper()}: median error {summ[key]['median_ape']:.1%}, p90 {summ[key]['p90_ape']:.1%} "
                      f"over {summ['rows']} rows ({summ['skipped']} skipped)", highlight=False)


@app.command()
def router(
    plan: str = typer.Option(None, "--plan", help="plan.json (written by `cascadia plan`); give --endpoint or "
                                                  "--local-engines"),
    config: str = typer.Option(None, "--config", help="A router config file (YAML/JSON) instead of a plan."),
    endpoint: list[str] = typer.Option(None, "--endpoint", "-e", help="STAGE=URL[,URL...] (repeatable)."),
    local_engines: bool = _flag("--local-engines",
                                help="Start bundled local engines (xllamacpp) for the plan's stages."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (non-loopback needs API keys)."),
    port: int = typer.Option(8800, "--port"),
    api_keys_file: str = typer.Option(None, "--api-keys-file", help="Bearer keys for /v1, one per line."),
    admin_key_file: str = typer.Option(None, "--admin-key-file", help="The key for /admin (hot swap)."),
) -> None:
    """Serve the cascade as an OpenAI-compatible endpoint (clients change only their base_url)."""
    from pathlib import Path

    from cascadia_sky.engines.local_router import run_router
    from cascadia_sky.errors import UserInputError

    if (plan is None) == (config is None):
        raise UserInputError("give exactly one of --plan plan.json or --config router.yaml")
    console.print(f"router for {plan or config} on http://{host}:{port}/v1 (Ctrl-C stops)", markup=False)
    run_router(Path(plan or config), endpoint or [], local_engines=local_engines, host=host, port=port,
               api_keys_file=api_keys_file, admin_key_file=admin_key_file)


@app.command()
def plan(
    spec_file: str = typer.Argument(..., metavar="CASCADE.YAML", help="The cascade spec to plan."),
    output: str = typer.Option(None, "-o", "--output",
                               help="Where to write plan.json (default: <state home>/plans/<name>/plan.json)."),
    explain: bool = _flag("--explain",
                          help="Also show the latency-quality frontier (table + PNG) and why each stage "
                          "got what it got."),
    png: str = typer.Option("", "--png", help="Frontier PNG path (default: next to plan.json) with --explain."),
    as_json: bool = _flag("--json",
                          help="Print the plan as JSON (still written to the plan file) instead of tables."),
) -> None:
    """Plan a cascade: per stage GPU type/count, TP/PP, replicas, threshold; predicted quality, p95, $/h."""
    from cascadia_sky.launch.state import state_home
    from cascadia_sky.planner.explain import explanation, frontier_png, plan_table, summary
    from cascadia_sky.planner.plan import write_plan
    from cascadia_sky.planner.planner import make_plan
    from cascadia_sky.spec import load_spec

    spec = load_spec(spec_file)
    _warn(spec.warnings)
    with err_console.status("planning...") as status:
        result = make_plan(spec, progress=lambda msg: status.update(f"planning: {msg}"))
    path = write_plan(result, output or state_home() / "plans" / spec.name / "plan.json")
    if as_json:
        print(result.to_json(), end="")
        err_console.print(f"wrote {path}", markup=False, highlight=False)
        return
    console.print(plan_table(result))
    console.print(summary(result))
    if result.solver.status == "target_missed":
        _warn([f"no plan meets the quality target {result.predicted.quality_target:.4f} with a sustainable "
               "deployment; this is the best trade-off found. Lower quality.target, add GPUs or lower the rate."])
    if explain:
        from cascadia_sky.planner.explain import latency_table
        from cascadia_sky.quality import read_provenance
        from cascadia_sky.sim.check import latency_check

        provenance = read_provenance(spec.resolve(spec.quality.profile))
        console.print(f"quality profile: {spec.resolve(spec.quality.profile)} ({provenance.summary()})", markup=False)
        console.print(explanation(result))
        with err_console.status("simulating the plan..."):
            console.print(latency_table(latency_check(spec, result)))
        picture = frontier_png(result, png or path.with_suffix(".frontier.png"))
        console.print(f"frontier plot: {picture}", markup=False)
    console.print(f"wrote {path}", markup=False)


@app.command()
def calibrate(
    spec_file: str = typer.Argument(..., metavar="CASCADE.YAML", help="The cascade whose stages to measure."),
    prompts: str = typer.Option(..., "--prompts", "-p", help="Prompt file: JSONL (id, prompt or messages, "
                                "reference, choices) or CSV (id, prompt, reference, ...)."),
    output: str = typer.Option(None, "-o", "--output", help="Profile CSV to write (default: the spec's "
                               "quality.profile)."),
    endpoint: list[str] = typer.Option(None, "--endpoint", "-e", help="STAGE=URL of an OpenAI-compatible server "
                                       "(repeatable); default: local engines for a resources.local spec."),
    grader: str = typer.Option("auto", "--grader", "-g", help="auto, exact, contains, numeric, choice, judge, or "
                               "module:function."),
    scorer: str = typer.Option(None, "--scorer", help="Scorer for the profile's score column (default: the "
                               "spec's quality.scorer); every scorer is also written in its own column."),
    judge_endpoint: str = typer.Option(None, "--judge-endpoint", help="Judge URL (default: the last stage)."),
    judge_model: str = typer.Option(None, "--judge-model", help="The judge's model name."),
    rubric: str = typer.Option(None, "--rubric", help="Judge rubric file with {question}, {reference}, {answer}."),
    temperature: float = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature (default 0)."),
    max_tokens: int = typer.Option(None, "--max-tokens", min=1, help="Tokens per answer (default 64)."),
    concurrency: int = typer.Option(None, "--concurrency", "-c", min=1, help="Requests in flight per stage."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
    png: str = typer.Option("", "--png", help="Report PNG (default: next to the profile)."),
) -> None:
    """Measure a quality profile: every prompt through every stage, scored like the router, graded; report."""
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from cascadia_sky import constants as c
    from cascadia_sky.calibrate import Sampling, calibrate as run_calibrate, load_prompts, parse_endpoint_args
    from cascadia_sky.calibrate.report import report_from_run, report_png, report_table
    from cascadia_sky.calibrate.stages import load_spec_for_calibration

    spec = load_spec_for_calibration(spec_file)
    items = load_prompts(prompts, limit)
    sampling = Sampling(c.CALIBRATE_TEMPERATURE if temperature is None else temperature,
                        max_tokens or c.CALIBRATE_MAX_TOKENS)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=False) as bar:
        task = bar.add_task("calibrating", total=None)
        run = run_calibrate(spec, items, endpoints=parse_endpoint_args(endpoint or []), output=output,
                            sampling=sampling, grader=grader, scorer=scorer, judge_endpoint=judge_endpoint,
                            judge_model=judge_model, rubric=rubric,
                            concurrency=concurrency or c.CALIBRATE_CONCURRENCY, prompt_source=prompts,
                            progress=lambda done, total, what: bar.update(task, completed=done, total=total,
                                                                          description=what[:40]),
                            status=lambda msg: bar.console.print(Text(msg, style="dim"), highlight=False))
    rep = report_from_run(run)
    console.print(report_table(rep))
    _warn(rep.warnings)
    console.print(Text.assemble("recommended scorer: ", (rep.recommended, "bold"),
                                f" (profile score column: {run.scorer})"))
    console.print(f"{len(items)} prompts x {len(run.stages)} stages in {run.wall_s:.1f} s "
                  f"({run.asked} answers asked, the rest from the cache {run.cache_path})", highlight=False,
                  markup=False)
    if run.profile_path is not None:
        picture = report_png(rep, png or Path(run.profile_path).with_suffix(".report.png"))
        console.print(f"wrote {run.profile_path} and {picture}", markup=False)
        console.print(Text.assemble("Next: ", (f"cascadia plan {spec_file}", "bold")))


@app.command()
def simulate(
    spec_file: str = typer.Argument(..., metavar="CASCADE.YAML", help="The cascade spec (workload, profile)."),
    plan_file: str = typer.Option(None, "--plan", help="plan.json to replay (default: plan the spec now)."),
    trace: str = typer.Option(None, "--trace", help="Replay this trace CSV instead of the spec's workload."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", min=0.0, help="Replay the workload this many times "
                                     "faster than the spec says (the plan stays as planned)."),
    baselines: bool = _flag("--baselines", help="Also plan and replay every baseline strategy "
                            "(single, cascadeserve, uniform-gpus, fixed-parallelism, cascadia, ...)."),
    output_lengths: str = typer.Option("auto", "--output-lengths", help="auto (the trace's when it has them, "
                                       "else the profile's), workload, or profile."),
    png: str = typer.Option("", "--png", help="Prefix of the PNG plots (default: next to --plan, or "
                            "./NAME.sim)."),
    as_json: bool = _flag("--json", help="Print one JSON object instead of tables."),
) -> None:
    """Replay a trace against a plan (and baselines): latency, quality, SLO attainment, per-stage queueing."""
    import json
    from pathlib import Path

    from cascadia_sky.errors import UserInputError
    from cascadia_sky.planner.plan import read_plan
    from cascadia_sky.sim.report import results_table, simulate_systems, stage_table, write_plots
    from cascadia_sky.spec import load_spec

    if output_lengths not in ("auto", "workload", "profile"):
        raise UserInputError(f"--output-lengths must be auto, workload or profile, got '{output_lengths}'")
    spec = load_spec(spec_file)
    plan = read_plan(plan_file) if plan_file else None
    with err_console.status("simulating...") as status:
        runs = simulate_systems(spec, plan, baselines=baselines, trace=trace, rate_multiplier=rate_scale,
                                output_lengths=output_lengths, plan_file=plan_file or "plan.json",  # type: ignore
                                progress=lambda msg: status.update(f"simulating: {msg}"))
    if as_json:
        print(json.dumps({"systems": [{"name": r.name, "error": r.error,
                                       "summary": r.result.summary() if r.result else None,
                                       "stages": [s.__dict__ for s in r.result.stages] if r.result else []}
                                      for r in runs]}, default=float))
        return
    console.print(results_table(runs, f"'{spec.name}' simulated (SLO scale: latency / alone on an idle "
                                      f"{spec.stages[-1].model})"))
    for r in runs[:1]:                      # the others: --json
        if r.result is not None:
            console.print(stage_table(r.result))
    if png:
        prefix = png
    elif plan_file:
        prefix = str(Path(plan_file).with_suffix("")) + ".sim"
    else:
        from cascadia_sky.launch.state import state_home

        folder = state_home() / "plans" / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        prefix = str(folder / "plan.sim")
    for path in write_plots(runs, prefix, title=spec.name):
        console.print(f"wrote {path}", markup=False)


@app.command()
def up(
    spec_file: str = typer.Argument(None, metavar="CASCADE.YAML", help="The cascade to plan and launch."),
    plan_file: str = typer.Option(None, "--plan", help="Launch this plan.json instead of planning a cascade file."),
    dryrun: bool = _flag("--dryrun", help="Show what would be launched (rendered SkyPilot tasks, "
                         "SkyPilot's resource choice and price); launch nothing."),
    yes: bool = _flag("--yes", "-y", help="Do not ask before launching paid resources."),
    port: int = typer.Option(None, "--port", min=1, max=65535, help="The router's port (default 8800)."),
    timeout: float = typer.Option(None, "--timeout", min=0.0,
                                  help="Seconds a component may take to become ready (default 600)."),
) -> None:
    """Launch a cascade: its stages in parallel, then the router; print the endpoint and how to call it."""
    from cascadia_sky.launch.launcher import load_target
    from cascadia_sky.launch.launcher import up as launch_up
    from cascadia_sky.launch.report import actions_text, up_report

    def confirm(actions: list, backend: str) -> bool:
        console.print(actions_text(actions, backend))
        return typer.confirm("launch these (they cost money)?", default=False)

    target = load_target(spec_file, plan_file, port=port, timeout_s=timeout)
    result = launch_up(target, dryrun=dryrun, confirm=None if yes else confirm,
                       progress=lambda msg: err_console.print(Text.assemble(("up: ", "dim"), msg), highlight=False))
    console.print(*up_report(result), sep="\n", soft_wrap=True)


@app.command()
def status(
    name: str = typer.Argument(None, metavar="[NAME]", help="One deployment (default: all)."),
    as_json: bool = _flag("--json", help="Print one JSON object instead of tables."),
) -> None:
    """Every deployment: per stage its replicas and their states, GPU, $/h, endpoint; the router's live figures."""
    import json

    from cascadia_sky.launch.launcher import status as launch_status
    from cascadia_sky.launch.report import status_json, status_report

    if name is not None:   # a SkyServe cascade's watcher runs remotely: read what it did first
        from cascadia_sky.reschedule.remote import pull

        try:
            pull(name)
        except CascadiaError as exc:
            err_console.print(f"[yellow]the re-schedule watcher's log could not be read: {exc}[/yellow]",
                              highlight=False)
    views = launch_status(name)
    if as_json:
        out = status_json(views)
        if name is not None and out["deployments"]:   # the same extras as the tables: promise and history
            from cascadia_sky.reschedule.history import history_json
            from cascadia_sky.reschedule.quality import quality_status

            out["deployments"][0]["quality"] = quality_status(name)
            out["deployments"][0]["reschedule"] = history_json(name)
        print(json.dumps(out, indent=2))
        return
    console.print(*status_report(views), sep="\n")
    if name is not None:
        from cascadia_sky.reschedule.history import history_lines
        from cascadia_sky.reschedule.quality import quality_lines

        for line in quality_lines(name) + history_lines(name):
            console.print(line, highlight=False, markup=False)


@app.command()
def reschedule(
    name: str = typer.Argument(..., metavar="NAME", help="The deployment (see `cascadia status`)."),
    apply: bool = _flag("--apply", help="Act on the decision (default: print what would be done)."),
) -> None:
    """One re-schedule pass: read the router's live window, detect drift, re-plan, print (or --apply) the change."""
    from cascadia_sky.reschedule.loop import reschedule_pass

    result = reschedule_pass(name, apply=apply, progress=lambda m: err_console.print(m, highlight=False))
    console.print(result.describe(), highlight=False, markup=False)


@app.command()
def watch(
    name: str = typer.Argument(..., metavar="NAME", help="The deployment (see `cascadia status`)."),
    dry_run: bool = _flag("--dry-run", help="Advisory: log decisions, change nothing."),
    passes: int = typer.Option(None, "--passes", min=1, help="Stop after this many passes (default: until Ctrl-C)."),
) -> None:
    """Re-schedule in a loop, one pass every reschedule.interval_s of the deployment's plan."""
    from cascadia_sky.reschedule.loop import watch as run_watch

    run_watch(name, apply=not dry_run, passes=passes,
              report=lambda r: console.print(r.describe(), highlight=False, markup=False),
              progress=lambda m: err_console.print(m, highlight=False))


@app.command()
def down(
    name: str = typer.Argument(..., metavar="NAME", help="The deployment to stop (see `cascadia status`)."),
) -> None:
    """Stop every stage and the router of a deployment and forget it. Safe to repeat; works after an interrupted up."""
    from cascadia_sky.launch.launcher import down as launch_down

    console.print(launch_down(name), highlight=False)


def main() -> None:
    """Console entry point: run the app, turning library errors into one red line."""
    debug = os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")
    try:
        app()  # standalone: usage errors print click's own message and exit 2
    except CascadiaError as exc:
        if debug:
            raise
        for line in str(exc).splitlines() or [""]:   # several problems: one line each
            err_console.print(Text.assemble(("error: ", "bold red"), line), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line, unless debugging
        if debug:
            raise
        err_console.print(Text.assemble(("internal error: ", "bold red"),
                                        f"{type(exc).__name__}: {exc} (set {DEBUG_ENV_VAR}=1 for the traceback)"),
                          highlight=False, soft_wrap=True)
        sys.exit(1)


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        err_console.print(Text.assemble(("warning: ", "bold yellow"), w), highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
