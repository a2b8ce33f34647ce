"""The `cascadia` command line. Thin: each command parses, calls one library function, prints.

Heavy imports (PuLP, SkyPilot, FastAPI) happen inside the commands, so `cascadia --help` stays fast.
Errors from the library (`CascadiaError`) become one red line and the error's exit code; set
CASCADIA_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from cascadia_sky import __version__
from cascadia_sky.constants import DEBUG_ENV_VAR
from cascadia_sky.errors import CascadiaError

app = typer.Typer(
    name="cascadia",
    help="Plan, launch and serve LLM model cascades (the Cascadia method) on clouds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
perf_app = typer.Typer(help="The performance model: estimate one configuration, validate against measurements.",
                       no_args_is_help=True)
app.add_typer(perf_app, name="perf")

console = Console()
err_console = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"cascadia-sky {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
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
    console.print(f"Next: [bold]cascadia plan {spec_file}[/]")


@app.command()
def catalog(
    cloud: list[str] = typer.Option(None, "--cloud", "-c", help="Only these clouds (repeatable): aws, gcp, ..."),
    gpu: list[str] = typer.Option(None, "--gpu", "-g", help="Only these GPU types (repeatable; aliases work)."),
    spot: bool = typer.Option(False, "--spot", help="Price spot instances (offers without spot are left out)."),
    max_price: float = typer.Option(None, "--max-price", min=0.0,
                                    help="Leave out instances above this many USD per hour."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """List GPU types (specs) and the cheapest cloud offer per GPU type and instance size."""
    import json

    from rich.table import Table

    from cascadia_sky.catalog import catalog_view

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
    dates = ", ".join(sorted({f"{o.cloud} {o.price_date}" for o in view.offers}))
    table = Table(title=f"Cheapest {'spot' if spot else 'on-demand'} offer per GPU type and instance size",
                  caption=f"prices taken on: {dates or '-'} (sources: catalogs/offers/SOURCES.md)")
    for col in ("GPU", "GPUs", "cloud", "instance type", "region", "$/h", "$/GPU-h"):
        table.add_column(col, justify="right" if col in ("GPUs", "$/h", "$/GPU-h") else "left", overflow="fold")
    for o in view.offers:
        table.add_row(o.gpu, str(o.gpus), o.cloud, o.instance_type, o.region, f"{o.price(spot):.3f}",
                      f"{o.usd_per_gpu_hour(spot):.3f}")
    console.print(table)
    if not view.offers:
        console.print("No offers match; drop a filter (--cloud, --gpu, --max-price) or --spot.")


@app.command()
def router(
    plan: str = typer.Option(None, "--plan", help="plan.json (written by `cascadia plan`); give --endpoint or "
                                                  "--local-engines"),
    config: str = typer.Option(None, "--config", help="A router config file (YAML/JSON) instead of a plan."),
    endpoint: list[str] = typer.Option(None, "--endpoint", "-e", help="STAGE=URL[,URL...] (repeatable)."),
    local_engines: bool = typer.Option(False, "--local-engines",
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
    console.print(f"router for {plan or config} on http://{host}:{port}/v1 (Ctrl-C stops)")
    run_router(Path(plan or config), endpoint or [], local_engines=local_engines, host=host, port=port,
               api_keys_file=api_keys_file, admin_key_file=admin_key_file)


def main() -> None:
    """Console entry point: run the app, turning library errors into one red line."""
    debug = os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")
    try:
        app()  # standalone: usage errors print click's own message and exit 2
    except CascadiaError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line, unless debugging
        if debug:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                          f"(set {DEBUG_ENV_VAR}=1 for the traceback)", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
