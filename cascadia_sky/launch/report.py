"""What `cascadia up` / `status` print: rich renderables built from the launcher's results (no I/O here)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from cascadia_sky.errors import CascadiaError
from cascadia_sky.launch.backends import Action
from cascadia_sky.launch.keys import key_file_mode
from cascadia_sky.launch.launcher import DeploymentView, UpResult
from cascadia_sky.planner.plan import StagePlan


def actions_text(actions: tuple[Action, ...] | list[Action], backend: str) -> Text:
    lines = [f"backend {backend}: {len(actions)} action(s)"] + [f"  - {a.describe()}" for a in actions]
    return Text("\n".join(lines))


def usage_examples(result: UpResult) -> RenderableType:
    """Where the cascade answers, where its API key is, and a ready-to-paste curl and openai example."""
    base = result.endpoint
    model = result.name
    curl = (f'curl -s {base}/chat/completions -H "Authorization: Bearer $(cat {result.api_key_file})" '
            f'-H "Content-Type: application/json" '
            f'-d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Name three primary colors."}}]}}\'')
    py = (f'import openai, pathlib\n'
          f'client = openai.OpenAI(base_url="{base}", api_key=pathlib.Path("{result.api_key_file}").read_text().strip())\n'
          f'r = client.chat.completions.create(model="{model}", '
          f'messages=[{{"role": "user", "content": "Name three primary colors."}}])\n'
          f'print(r.choices[0].message.content)')
    return Group(Text.assemble(("endpoint  ", "bold"), base), Text.assemble(("API key   ", "bold"),
                 result.api_key_file, f" (mode {key_file_mode(result.api_key_file)}; sent as a Bearer token)"),
                 Text("curl:", style="bold"), Text(curl), Text("python (openai):", style="bold"), Text(py),
                 Text(f"stop it with: cascadia down {result.name}"))


def up_report(result: UpResult) -> list[RenderableType]:
    """The end of a successful `cascadia up` (or the dry-run listing)."""
    if result.dryrun is not None:
        return dryrun_report(result)
    head = (f"deployment {result.name!r} is already up to date ({result.status.value}); nothing to do"
            if not result.actions else f"deployment {result.name!r} is {result.status.value} "
                                       f"(backend {result.backend})")
    out: list[RenderableType] = [Text(head, style="bold green")]
    if result.plan_file:
        out.append(Text.assemble(("plan      ", "bold"), result.plan_file,
                                 " (what runs; `cascadia up --plan` of it changes nothing)"))
    return out + [usage_examples(result)]


def dryrun_report(result: UpResult) -> list[RenderableType]:
    rep = result.dryrun
    assert rep is not None
    out: list[RenderableType] = [actions_text(rep.actions, rep.backend)]
    table = Table(title=f"dry run: what `cascadia up` would launch for {result.name!r} (backend {rep.backend})")
    for col in ("component", "kind", "SkyPilot's choice / command", "$/h", "plan $/h"):
        table.add_column(col, overflow="fold", justify="right" if "$/h" in col else "left")

    def usd(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    total = 0.0
    for item in rep.items:
        price = item.get("usd_per_hour")
        total += price or 0.0
        table.add_row(item["name"], item["kind"], item.get("choice") or item.get("command", ""), usd(price),
                      usd(item.get("plan_usd_per_hour")))
        for k, b in enumerate(item.get("band") or []):   # SkyPilot's own price for each offer of the failover list
            table.add_row(f"  offer {k + 1}", b["infra"] + " " + b["instance_type"], b["choice"],
                          usd(b.get("usd_per_hour")), usd(b.get("plan_usd_per_hour")), style="dim")
    table.add_row("total", "", "", f"{total:.2f}", "", style="bold")
    for item in rep.items:
        if item.get("task"):
            out.append(Text(f"# {item['name']}: SkyPilot task (accepted by sky.Task.from_yaml_config"
                            f"{' and sky.serve.validate_service_task' if 'service:' in item['task'] else ''})",
                            style="bold"))
            out.append(Syntax(item["task"], "yaml", theme="ansi_dark", background_color="default"))
    out.append(table)
    out.extend(Text(n) for n in rep.notes)
    out.append(Text("dry run: nothing was launched", style="bold"))
    return out


_STYLE = {"ready": "green", "launching": "yellow", "degraded": "yellow", "starting": "yellow",
          "restarting": "yellow", "pending": "dim", "interrupted": "red", "failed": "red", "lost": "red",
          "stopping": "yellow", "stopped": "dim"}


def status_report(views: list[DeploymentView]) -> list[RenderableType]:
    """One table per deployment: per stage its replicas and their states, GPU type, $/h, endpoint; router figures."""
    if not views:
        return [Text("no deployments (start one with `cascadia up cascade.yaml`)")]
    out: list[RenderableType] = []
    for v in views:
        rec = v.record
        try:
            plan = rec.plan
        except CascadiaError as exc:   # e.g. recorded by an older cascadia-sky; `down` still works
            plan = None
            out.append(Text(f"{rec.name}: cannot read its recorded plan ({exc})", style="red"))
        stages: dict[str, StagePlan] = {s.name: s for s in plan.stages} if plan is not None else {}
        table = Table(title=Text.assemble(f"{rec.name} ({rec.backend}): ",
                                          (v.status.value, _STYLE.get(v.status.value, ""))))
        for col in ("component", "stage", "state", "GPU", "TPxPP", "$/h", "endpoint", "restarts", "note"):
            table.add_column(col, overflow="fold")
        order = list(stages)
        for c in sorted(rec.components, key=lambda c: (c.kind == "router", order.index(c.stage) if c.stage in order
                                                       else len(order), c.replica)):
            st = stages.get(c.stage)
            state = v.components.get(c.name)
            value = state.value if state else c.phase
            note = c.message.splitlines()[0] if c.message else v.details.get(c.name, "")
            table.add_row(c.name, c.stage or "-", Text(value, style=_STYLE.get(value, "")),
                          st.gpu_type if st else "-", f"{st.tp}x{st.pp}" if st else "-",
                          f"{st.usd_per_hour:.2f}" if st else "-", c.url or c.handle or "-", str(c.restarts), note)
        out.append(table)
        if rec.endpoint:
            out.append(Text(f"endpoint {rec.endpoint}   API key {rec.api_key_file}"))
        if rec.message:
            out.append(Text(f"last error: {rec.message}", style="red"))
        if v.router_stats:
            out.append(Text(router_figures(v.router_stats)))
    return out


def router_figures(stats: dict[str, Any]) -> str:
    """Request rate, share answered per stage and p95 latency over the router's shortest window."""
    windows = stats.get("windows") or {}
    if not windows:
        return "router: no statistics yet"
    w = windows[min(windows, key=lambda k: int(k))]
    shares = ", ".join(f"{n} {s.get('answered_share', 0.0):.0%}" for n, s in (w.get("stages") or {}).items())
    p95 = (w.get("latency_s") or {}).get("p95")
    return (f"router (last {w['window_s']} s): {w['requests']} requests, {w['arrival_rate_per_s']:.3f} req/s; "
            f"answered by {shares or '-'}; p95 latency {'-' if p95 is None else f'{p95:.2f} s'}")


def status_json(views: list[DeploymentView]) -> dict[str, Any]:
    """`cascadia status --json`: every deployment with its derived states (what the tables show, as data)."""
    out = []
    for v in views:
        rec = v.record
        out.append({
            "name": rec.name, "backend": rec.backend, "status": v.status.value, "endpoint": rec.endpoint,
            "api_key_file": rec.api_key_file, "message": rec.message,
            "components": [{"name": c.name, "kind": c.kind, "stage": c.stage, "replica": c.replica,
                            "state": (v.components.get(c.name).value if v.components.get(c.name) else c.phase),
                            "url": c.url, "handle": c.handle, "restarts": c.restarts, "message": c.message}
                           for c in rec.components],
            "router_stats": v.router_stats})
    return {"deployments": out}
