"""plan.json: the one contract between the planner, the launcher, the router, the simulator and the re-scheduler.

A frozen, schema-versioned pydantic model written as JSON (never pickle). These keys are stable because other
components and users' scripts read them: `stages[].model`, `stages[].gpu_type`, `stages[].gpus`, `stages[].tp`,
`stages[].pp`, `stages[].replicas`, `stages[].threshold` (accept when score >= threshold; null on the last stage),
`stages[].share` (fraction of all requests that reach the stage), `predicted.quality`, `predicted.p95_latency_s`,
`predicted.usd_per_hour`, `solver.status`, `solver.wall_s`; for the router `name`, `scorer`, `stages[].name`,
`stages[].served_model_name`; and for the launcher the `launch` section (backend, targets, ports, engine threads),
so that a plan file alone determines a deployment (`cascadia up --plan plan.json`).

Each stage and launch field says in its metadata (`affects`) what a change of it means to a running deployment:
`engine` (the stage's engines are relaunched), `router` (the router is updated) or nothing. The launcher derives
its fingerprints from these marks, so a new field cannot be forgotten there.

Schema history: version 1 had no `launch` section (launch settings travelled beside the plan); version 2 adds it.
A version-1 file is refused with the command that makes a version-2 plan (re-plan the cascade file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascadia_sky.constants import (
    LAUNCH_READY_TIMEOUT_SECONDS,
    LAUNCH_ROUTER_HOST_LOCAL,
    LAUNCH_ROUTER_HOST_SERVICE,
    LAUNCH_ROUTER_PORT,
    PLAN_SCHEMA_VERSION,
    SKY_VLLM_VERSION,
)
from cascadia_sky.errors import SpecError
from cascadia_sky.spec import QualityWatchSpec, RescheduleSpec

if TYPE_CHECKING:
    from cascadia_sky.spec import CascadeSpec

ENGINE = {"affects": "engine"}   # a change relaunches the stage's engines
ROUTER = {"affects": "router"}   # a change updates the router (no engine relaunch)
SCALE = {"affects": "scale"}     # a change adds or drains replicas; the stage's other replicas keep running


class _Frozen(BaseModel):
    # An unsustainable latency is infinite; JSON has no infinity, so it is written as the string "Infinity"
    # (valid JSON, read back as float inf) rather than null, which would not read back.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class OfferChoice(_Frozen):
    """One offer a stage may run on: its chosen offer, or an equivalent one SkyPilot fails over to."""

    cloud: str
    region: str
    instance_type: str
    usd_per_hour: float = Field(description="The stage's $/h on this offer (every replica and instance).")


class StagePlan(_Frozen):
    """How one stage is deployed and routed."""

    name: str = Field(json_schema_extra=ROUTER)
    model: str = Field(description="Hugging Face model id.", json_schema_extra=ENGINE)
    served_model_name: str = Field(description="The name the engine serves the model under.",
                                   json_schema_extra={"affects": "engine,router"})
    precision: str = Field(json_schema_extra=ENGINE)
    max_context: int = Field(json_schema_extra=ENGINE)
    gpu_type: str = Field(json_schema_extra=ENGINE)
    gpus: int = Field(description="tp * pp * replicas")
    tp: int = Field(json_schema_extra=ENGINE)
    pp: int = Field(json_schema_extra=ENGINE)
    replicas: int = Field(description="Data-parallel copies. A change scales the stage (replicas added or drained); "
                                      "the others keep running.", json_schema_extra=SCALE)
    cloud: str | None = Field(None, json_schema_extra=ENGINE)
    region: str | None = Field(None, json_schema_extra=ENGINE)
    instance_type: str | None = Field(None, json_schema_extra=ENGINE)
    gpus_per_instance: int | None = Field(None, json_schema_extra=ENGINE)
    instances: int | None = Field(None, json_schema_extra=ENGINE)
    spot: bool = Field(False, json_schema_extra=ENGINE)
    usd_per_hour: float = 0.0
    threshold: float | None = Field(description="Accept the answer when score >= threshold; null on the last stage.",
                                    json_schema_extra=ROUTER)
    share: float = Field(description="Fraction of all requests that reach this stage.")
    answered_share: float = Field(description="Fraction of all requests this stage answers.")
    rate_rps: float = Field(description="Planned arrival rate at this stage (requests/s).")
    p95_latency_s: float = Field(description="Predicted p95 latency of this stage under its planned load.")
    e2e_p50_s: float | None = None
    ttft_p50_s: float | None = None
    tpot_s: float | None = None
    max_rate_rps_per_replica: float | None = None
    utilization: float | None = None
    binding: str = Field("", description="Why the stage got what it got (the constraint that binds).")
    path_p95_latency_s: float | None = Field(
        None, description="p95 latency of a request answered by this stage (it waited for every stage up to it).")
    bursty_p95_latency_s: float | None = Field(
        None, description="This stage's p95 under the trace's arrivals (its window rates and backlog, transient service; "
                         "fed by the earlier stage's departures).")
    rtt_s: float = Field(0.0, description="Round trip between the router (in the first stage's region) and this "
                                          "stage's region, added to every request that reaches it (catalogs/rtt.csv; "
                                          "0 in the same region or when unknown). Counted in p95_latency_s of the "
                                          "plan and in path_p95_latency_s; not in the request-level p95.")
    offers: list[OfferChoice] = Field(
        default_factory=list,
        description="Cloud plans: the chosen offer first, then the equivalent ones (same GPU type and instance size, "
                    "within the quotas, the budget and the spec's failover_band of the chosen $/h), in the order "
                    "SkyPilot tries them (`resources.ordered`). A change alone relaunches nothing: a running stage "
                    "keeps the list it was launched with.")
    accepted_quality: float | None = Field(
        None, description="Mean quality (on the profile) of the answers this stage accepts at its threshold: what "
                          "the quality watch promises for them with a judge (null: the stage accepts none).",
        json_schema_extra=ROUTER)
    accepted_agreement: float | None = Field(
        None, description="Mean of min(quality here, quality at the last stage) over the same answers: a lower "
                          "bound of their agreement with the last stage (the quality watch's promise with grader "
                          "last_stage).", json_schema_extra=ROUTER)


class Predicted(_Frozen):
    quality: float = Field(description="Quality of returned answers on the profile prompts used for planning.")
    quality_holdout: float | None = Field(None, description="Same, on held-out prompts (unbiased).")
    quality_lower_bound: float | None = Field(None, description="Bootstrap lower bound at quality.confidence.")
    quality_target: float
    quality_all_last: float = Field(description="z1: quality when every request goes to the last stage.")
    quality_all_first: float = Field(description="z2: quality when the first stage answers everything.")
    p95_latency_s: float = Field(description=(
        "The deployment objective L: e2e = sum_k w_k p95_k with tail weights w_k = min(1, share_k / 0.05) (the "
        "path p95 of the slowest-routed 5 % of requests); max-stage = max_k w_k p95_k. Not a request p95: see "
        "request_p95_latency_s."))
    usd_per_hour: float
    gpus: int
    request_p95_latency_s: float | None = Field(
        None, description="p95 over requests (mixture over exit stages), Poisson arrivals at the mean rate.")
    request_p95_latency_bursty_s: float | None = Field(
        None, description="The same under the trace's arrivals (window rates, backlog, transient service); traces "
                         "only.")
    trace_burstiness: dict[str, float] | None = Field(
        None, description="The trace's rate per window: window_s, mean_rps, p95_rps, max_rps, dispersion.")
    quality_holdout_interval: list[float] | None = Field(
        None, description="Two-sided normal interval of the held-out quality at quality.confidence (0.9 if unset).")
    quality_note: str = Field("", description="Why the quality target is not met, and what would meet it.")
    single_model_p95_latency_s: float | None = Field(
        None, description="The objective L of the last stage's model alone on the same resources.")
    single_model_usd_per_hour: float | None = Field(None, description="Its $/h.")
    single_model_note: str = Field("", description="Set when the last model alone beats this cascade at the same "
                                                   "quality target (cheaper under min-cost, faster under min-latency).")


class SolverInfo(_Frozen):
    status: str
    wall_s: float
    iterations: int = Field(description="Outer (threshold) search iterations.")
    deployment_solves: int = Field(description="Deployment MILPs solved (after caching).")
    objective_j: float = Field(description="J = L + mu * max(0, (q_min - Q) / (z1 - z2)) at the chosen thresholds.")
    mu_s: float
    stable_rounds: int
    milp_status: str = ""
    pool_relaxed: bool = False
    search: str = Field("", description="exhaustive | branch-and-bound (exact over the profile's distinct scores) "
                                        "| heuristic (coordinate search, cascades of 4+ stages) | fixed.")
    proven_optimal: bool = Field(False, description="The threshold search proved its J optimal.")
    gap_j: float | None = Field(None, description="Best J minus the least open bound when not proven (else 0).")
    threshold_vectors: int = Field(0, description="Distinct threshold vectors the search covered.")
    vectors_priced: int = Field(0, description="Vectors whose deployment level was computed (DP or MILP).")


class FrontierPoint(_Frozen):
    thresholds: list[float | None]
    quality: float
    p95_latency_s: float
    usd_per_hour: float
    last_stage_share: float
    last_stage_gpus: int


class LaunchSettings(_Frozen):
    """How `cascadia up` runs the plan (from the spec's `infra` and `resources.local` sections, with `up`'s
    --port/--timeout applied): with it, the plan file alone determines the deployment."""

    backend: str = Field(description="Launch backend: local, skyserve or clusters.")
    targets: list[str] | None = Field(None, description="SkyPilot infra the stages may run on (null: any enabled).",
                                      json_schema_extra=ENGINE)
    autoscale: bool = Field(False, description="skyserve: autoscale each stage around its planned rate.",
                            json_schema_extra=ENGINE)
    vllm_version: str = Field(SKY_VLLM_VERSION, description="vLLM version installed on GPU stage replicas.",
                              json_schema_extra=ENGINE)
    engine_threads: int = Field(1, ge=1, description="CPU threads per llama.cpp engine (CPU stages).",
                                json_schema_extra=ENGINE)
    router_host: str = Field(LAUNCH_ROUTER_HOST_LOCAL, description="Address the router binds: 127.0.0.1 when it "
                                                                   "runs on this machine, 0.0.0.0 on a service node.",
                             json_schema_extra=ROUTER)
    router_port: int = Field(LAUNCH_ROUTER_PORT, ge=1, le=65535, description="The router's port.",
                             json_schema_extra=ROUTER)
    ready_timeout_s: float = Field(LAUNCH_READY_TIMEOUT_SECONDS, gt=0,
                                   description="Seconds a component may take to become ready.")
    reschedule: RescheduleSpec = Field(default_factory=RescheduleSpec,
                                       description="The spec's reschedule section: whether the re-schedule loop "
                                                   "runs beside the deployment, and its windows and bands (the "
                                                   "router's /stats reports a window of interval_s).",
                                       json_schema_extra=ROUTER)
    quality_watch: QualityWatchSpec = Field(default_factory=QualityWatchSpec,
                                            description="The spec's quality.watch section: shadow checks of "
                                                        "accepted answers in the router (docs/quality-watch.md).",
                                            json_schema_extra=ROUTER)


def launch_settings(spec: CascadeSpec) -> LaunchSettings:
    """The launch section of a spec's plan: `infra.backend` when set, else local for a resources.local spec and
    skyserve otherwise; the router binds loopback unless it runs as a SkyServe service on its own node."""
    infra = spec.infra
    backend = infra.backend or ("local" if spec.resources.local is not None else "skyserve")
    return LaunchSettings(
        backend=backend, targets=list(infra.targets) if infra.targets else None, autoscale=infra.autoscale,
        vllm_version=infra.vllm_version,
        engine_threads=spec.resources.local.threads if spec.resources.local is not None else 1,
        router_host=LAUNCH_ROUTER_HOST_SERVICE if backend == "skyserve" else LAUNCH_ROUTER_HOST_LOCAL,
        router_port=infra.router_port, reschedule=spec.reschedule,
        quality_watch=spec.quality.watch)


def affected_fields(model: type[BaseModel], what: str) -> tuple[str, ...]:
    """The fields of a plan model whose change affects `what` ("engine" or "router"), in declaration order."""
    return tuple(name for name, f in model.model_fields.items()
                 if what in str((f.json_schema_extra or {}).get("affects", "")).split(","))  # type: ignore[union-attr]


class Plan(_Frozen):
    """The planner's output. `schema_version` changes whenever a stable key changes meaning."""

    schema_version: int = PLAN_SCHEMA_VERSION
    name: str
    created_at: str
    scorer: str
    mode: Literal["pool", "cloud", "local"]
    objective: str
    goal: str
    slo_p95_s: float | None = None
    budget_usd_per_hour: float | None = None
    workload_rate_rps: float
    stages: list[StagePlan]
    predicted: Predicted
    solver: SolverInfo
    inputs: dict[str, str] = Field(default_factory=dict, description="sha256 of the spec, profile, trace, catalogs.")
    frontier: list[FrontierPoint] = Field(default_factory=list)
    launch: LaunchSettings = Field(description="How `cascadia up` runs this plan.")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def serving(self) -> list[StagePlan]:
        """The stages that get replicas. A stage no request reaches gets none (the planner gives it no GPUs, its
        predecessor accepts every answer); the launcher starts nothing for it and the router skips it."""
        return [s for s in self.stages if s.replicas > 0]

    def stage(self, name: str) -> StagePlan:
        """The stage of that name (a KeyError names the plan's stages)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"plan {self.name!r} has no stage {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    def with_launch(self, **changes: Any) -> Plan:
        """A copy with launch settings changed (validated, e.g. `up --port`)."""
        launch = LaunchSettings.model_validate({**self.launch.model_dump(), **changes})
        return self.model_copy(update={"launch": launch})


def write_plan(plan: Plan, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(plan.to_json())
    return p


def read_plan(path: str | Path) -> Plan:
    """Read plan.json; a missing file, bad JSON or another schema version is one clear error."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(str(p), "", "plan file not found (make one with `cascadia plan cascade.yaml -o plan.json`)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(str(p), f"line {exc.lineno}", f"not valid JSON: {exc.msg}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version == 1:
        raise SpecError(str(p), "schema_version", "is 1 (a plan without its launch section, written by an older "
                                                  "cascadia-sky); make a version-2 plan from the cascade file: "
                                                  "`cascadia plan cascade.yaml -o plan.json`")
    if version != PLAN_SCHEMA_VERSION:
        raise SpecError(str(p), "schema_version", f"is {version!r}, this cascadia-sky reads version "
                                                  f"{PLAN_SCHEMA_VERSION}; re-run `cascadia plan`")
    return parse_plan(data, str(p))


def parse_plan(data: Any, source: str = "plan.json") -> Plan:
    """Validate a parsed plan (e.g. the copy the state store keeps); one SpecError naming the field."""
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise SpecError(source, loc, err["msg"]) from None
