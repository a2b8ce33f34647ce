"""The router config: the cascade's stages (in order) with their endpoints, scorer and threshold, plus limits.

Two ways in:
- a router config file (YAML or JSON) in the shape of `RouterConfig` (see README.md for an example);
- `RouterConfig.from_plan(plan, endpoints)`: plan.json (written by the planner) plus the endpoints the launcher
  knows. Mapping: `plan["name"]` -> `name`; for each `plan["stages"][i]`: `name` -> `name`, `model` -> `model`,
  `served_model_name` -> `served_model_name`, `threshold` -> `threshold` (null on the last stage), and
  `plan["scorer"]` -> every stage's `scorer`; `endpoints[stage name]` -> `endpoints`. The planner's other keys
  (share, replicas, gpu_type, tp, pp) do not affect routing and are ignored.

Engine keys: a stage's `upstream_api_key_env` names an environment variable of the router process; its value is
sent to that stage's engines as `Authorization: Bearer <value>` (vLLM `--api-key`, llama.cpp server `--api-key`).
The key itself is never in a config file, /admin/config, /stats, a log line or an error message; the variable is read
when a config is installed (start and every hot swap), and an unset or empty variable is a ConfigError naming it.

Hot swap (`swap_config`): every field applies to requests that start after the swap, except `RESTART_ONLY_FIELDS`
(the engine connection pool's size and the /stats windows are fixed when the server starts): left out, they keep
their live value; given with another value, the swap is refused with a message saying a restart is needed. A plan
swap keeps every live router-level setting (a plan carries stages and thresholds, not router limits).

An endpoint is the server's base URL, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted and dropped); the
router posts to `<endpoint>/v1/chat/completions` and `<endpoint>/v1/completions`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.errors import ConfigError
from router.grading import DEFAULT_JUDGE_RUBRIC
from router.scorers import SCORERS, make_scorer

ROUTER_CONFIG_SCHEMA_VERSION = 1
MIN_REQUEST_BYTES = 65_536          # below this a swap could shut out ordinary requests (and once did the admin API)
MAX_REQUEST_BYTES = 1 << 30         # 1 GiB: bodies are held in memory
MAX_TIMEOUT_S = 86_400.0
MAX_WINDOW_S = 7 * 86_400
RESTART_ONLY_FIELDS = ("max_connections", "stats_windows_s")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class EarlyDecision(BaseModel):
    """Decide a streamed non-final stage before it finishes, from the running score of the tokens so far.

    After `min_tokens` tokens: escalate at once (abort the stage) when running score < threshold - reject_margin;
    commit to the stage (stream the rest live) when running score >= threshold + accept_margin. A margin of null
    turns that side off. Between the two bands the stage finishes and its full-answer score decides.
    """

    model_config = ConfigDict(extra="forbid")
    min_tokens: int = Field(16, ge=1, description="tokens seen before any early decision")
    reject_margin: float | None = Field(0.5, ge=0, description="escalate early below threshold - this")
    accept_margin: float | None = Field(0.5, ge=0, description="commit early at or above threshold + this")


class JudgeConfig(BaseModel):
    """An LLM judge for the quality watch: an OpenAI-compatible endpoint, its model and the rubric."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="base URL of the judge (http://HOST:PORT)")
    model: str = Field(min_length=1, description="the judge's model name")
    rubric: str = Field(DEFAULT_JUDGE_RUBRIC, description="prompt with {question}, {answer}, {scale} placeholders")
    scale: float = Field(10.0, gt=0, description="the rubric's top score; a grade is the judge's number / scale")
    api_key_env: str | None = Field(None, pattern=_ENV_NAME, description="environment variable with its key")
    timeout_s: float = Field(60.0, gt=0, le=MAX_TIMEOUT_S)
    max_tokens: int = Field(16, ge=1, le=4096)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"judge url {v!r} must be an http(s) base URL such as http://127.0.0.1:8000")
        v = v.rstrip("/")
        return v[:-3] if v.endswith("/v1") else v

    @field_validator("rubric")
    @classmethod
    def _check_rubric(cls, v: str) -> str:
        for key in ("{question}", "{answer}"):
            if key not in v:
                raise ValueError(f"the judge rubric must contain the placeholder {key}")
        return v


class QualityWatchConfig(BaseModel):
    """Shadow checks of accepted answers (router/quality.py): a `fraction` of the requests an earlier stage
    answered are sent again, after the client has its answer, to the last stage (`grader: last_stage`: the grade
    is the agreement of the two answers) or to a judge (`grader: judge`: the judge's score)."""

    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(0.03, gt=0, le=1, description="share of early-accepted answers checked")
    max_per_s: float = Field(1.0, gt=0, le=1000, description="shadow requests started per second at most")
    max_in_flight: int = Field(4, ge=1, le=256, description="shadow requests at once at most (more: skipped)")
    grader: Literal["last_stage", "judge"] = "last_stage"
    judge: JudgeConfig | None = None
    windows_s: list[int] = Field(default_factory=lambda: [600, 3600], min_length=1, max_length=4,
                                 description="windows of the measured quality in /stats and /metrics")
    level: float = Field(0.9, gt=0, lt=1, description="two-sided level of the Wilson interval")
    keep: int = Field(5000, ge=10, le=1_000_000, description="checks kept in memory (the newest)")

    @model_validator(mode="after")
    def _check(self) -> QualityWatchConfig:
        if self.grader == "judge" and self.judge is None:
            raise ValueError("grader judge needs a judge: {url, model}")
        if min(self.windows_s) <= 0 or max(self.windows_s) > MAX_WINDOW_S:
            raise ValueError(f"quality_watch.windows_s must be positive seconds, at most {MAX_WINDOW_S}")
        return self


class StageConfig(BaseModel):
    """One stage of the cascade."""

    # A threshold of -inf (accept every answer: the next stage gets no traffic) is written as "-Infinity" in JSON
    # (which has no infinity) and read back as -inf, so GET /admin/config and a swap of it round-trip.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")
    name: str = Field(min_length=1, description="stage name; also a model name that pins a request to this stage")
    model: str = Field("", description="the model's Hugging Face id (informational)")
    served_model_name: str = Field(min_length=1, description="the name the engine serves the model under")
    endpoints: list[str] = Field(min_length=1, description="base URLs of the stage's engine replicas")
    scorer: str = Field("mean_logprob", description="scorer registry name (router/scorers.py)")
    scorer_args: dict[str, float] = Field(default_factory=dict, description="scorer arguments, e.g. {q: 0.1}")
    threshold: float | None = Field(None, description="accept when score >= threshold; null on the last stage")
    promise: float | None = Field(None, ge=0, le=1, description="quality of this stage's accepted answers that the "
                                  "plan promised, in the quality watch's units (agreement or judge score)")
    timeout_s: float = Field(120.0, gt=0, le=MAX_TIMEOUT_S,
                             description="per attempt: whole response (non-streamed) or gap between streamed chunks")
    upstream_api_key_env: str | None = Field(None, pattern=_ENV_NAME, description="name of the environment "
                                             "variable whose value is sent to this stage's engines as a Bearer key")

    def upstream_key(self, env: Mapping[str, str] | None = None) -> str | None:
        """The engine key from the environment; ConfigError (naming the variable, never a value) when unset."""
        if self.upstream_api_key_env is None:
            return None
        value = (os.environ if env is None else env).get(self.upstream_api_key_env, "").strip()
        if not value:
            raise ConfigError(f"stage {self.name!r}: upstream_api_key_env names {self.upstream_api_key_env}, which "
                              f"is not set (or empty) in the router's environment; export it before starting or "
                              f"swapping, or remove upstream_api_key_env")
        return value

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, v: list[str]) -> list[str]:
        out = []
        for url in v:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"endpoint {url!r} must be an http(s) base URL such as http://127.0.0.1:8000")
            url = url.rstrip("/")
            out.append(url[:-3] if url.endswith("/v1") else url)
        return out

    @field_validator("scorer")
    @classmethod
    def _check_scorer(cls, v: str) -> str:
        if v not in SCORERS:
            raise ValueError(f"unknown scorer {v!r}; known: {', '.join(sorted(SCORERS))}")
        return v


class RouterConfig(BaseModel):
    """The whole router config. Frozen in use: a hot swap replaces it, never edits it."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")
    schema_version: int = ROUTER_CONFIG_SCHEMA_VERSION
    name: str = Field(min_length=1, description="the cascade's model name, as clients send it")
    stages: list[StageConfig] = Field(min_length=1)
    connect_timeout_s: float = Field(2.0, gt=0, le=MAX_TIMEOUT_S, description="TCP connect timeout to an engine")
    health_cooldown_s: float = Field(5.0, ge=0, le=MAX_TIMEOUT_S,
                                     description="an endpoint that failed is skipped this long")
    max_request_bytes: int = Field(1_048_576, ge=MIN_REQUEST_BYTES, le=MAX_REQUEST_BYTES,
                                   description="larger request bodies get 413 (admin bodies have their own limit)")
    max_connections: int = Field(1024, gt=0, le=1_000_000, description="open connections to all engines together; "
                                 "fixed at start (a swap cannot change it)")
    early_decision: EarlyDecision | None = Field(default_factory=EarlyDecision,
                                                 description="streamed early accept/escalate; null: off")
    stats_windows_s: list[int] = Field(default_factory=lambda: [60, 300, 3600], min_length=1, max_length=8,
                                       description="sliding windows reported by /stats; fixed at start")
    quality_watch: QualityWatchConfig | None = Field(None, description="shadow checks of accepted answers; null: off")

    @model_validator(mode="after")
    def _check_cascade(self) -> RouterConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.name in names:
            raise ValueError(f"cascade name {self.name!r} must differ from the stage names")
        for i, s in enumerate(self.stages):
            last = i == len(self.stages) - 1
            if last and s.threshold is not None:
                raise ValueError(f"stages[{i}] ({s.name}): the last stage always answers; set threshold to null")
            if not last and s.threshold is None:
                raise ValueError(f"stages[{i}] ({s.name}): a non-final stage needs a threshold")
            try:
                make_scorer(s.scorer, s.scorer_args)
            except ValueError as exc:
                raise ValueError(f"stages[{i}] ({s.name}): {exc}") from None
        if min(self.stats_windows_s) <= 0 or max(self.stats_windows_s) > MAX_WINDOW_S:
            raise ValueError(f"stats_windows_s must be positive seconds, at most {MAX_WINDOW_S}")
        return self

    @classmethod
    def from_plan(cls, plan: dict[str, Any], endpoints: dict[str, list[str]], *,
                  upstream_api_key_env: Mapping[str, str] | None = None, **overrides: Any) -> RouterConfig:
        """Map plan.json plus the launcher's endpoints onto a router config (see the module docstring);
        `upstream_api_key_env` maps stage names to the environment variables holding their engine keys."""
        keys = dict(upstream_api_key_env or {})
        try:
            stages_in = plan["stages"]
            scorer = plan.get("scorer") or "mean_logprob"
            watch = _watch_from_plan(plan)
            promise_key = "accepted_quality" if watch and watch["grader"] == "judge" else "accepted_agreement"
            stages = []
            for i, st in enumerate(stages_in):
                name = st["name"]
                if name not in endpoints:
                    raise ConfigError(f"plan.json: stages[{i}].name: no endpoints given for stage {name!r}; "
                                      f"pass them as {name}=http://HOST:PORT")
                stages.append({"name": name, "model": st.get("model", ""),
                               "served_model_name": st.get("served_model_name") or st.get("model") or name,
                               "endpoints": list(endpoints[name]), "scorer": scorer,
                               "threshold": st.get("threshold") if i < len(stages_in) - 1 else None,
                               **({"promise": st[promise_key]} if watch and st.get(promise_key) is not None
                                  and i < len(stages_in) - 1 else {}),
                               **({"upstream_api_key_env": keys.pop(name)} if name in keys else {})})
            if keys:
                raise ConfigError(f"upstream_api_key_env: no stage named {', '.join(sorted(keys))} in the plan")
            doc = {"name": plan["name"], "stages": stages, **({"quality_watch": watch} if watch else {}),
                   **overrides}
        except KeyError as exc:
            raise ConfigError(f"plan.json: missing key {exc}; is this a plan written by `cascadia plan`?") from None
        return parse_config(doc, "plan.json")


def _watch_from_plan(plan: dict[str, Any]) -> dict[str, Any] | None:
    """The router's quality_watch from plan.json's launch.quality_watch (the spec's quality.watch); None when off."""
    qw = (plan.get("launch") or {}).get("quality_watch") or {}
    if not qw.get("enabled"):
        return None
    out = {k: qw[k] for k in ("fraction", "max_per_s", "max_in_flight", "grader", "windows_s", "level") if k in qw}
    if qw.get("grader") == "judge":
        out["judge"] = {"url": qw.get("judge_endpoint"), "model": qw.get("judge_model"),
                        **({"api_key_env": qw["judge_api_key_env"]} if qw.get("judge_api_key_env") else {})}
    return out


def swap_config(live: RouterConfig, doc: Any) -> RouterConfig:
    """The config a hot swap installs: a full router config, or {"plan", "endpoints", "upstream_api_key_env"}.
    Restart-only fields keep their live value unless given with another, which is refused (module docstring)."""
    if isinstance(doc, dict) and "plan" in doc:
        unknown = set(doc) - {"plan", "endpoints", "upstream_api_key_env"}
        if unknown:
            raise ConfigError(f"admin config: unknown key(s) beside 'plan': {', '.join(sorted(unknown))}; a plan "
                              f"swap takes plan, endpoints and upstream_api_key_env")
        if not isinstance(doc["plan"], dict) or not isinstance(doc.get("endpoints") or {}, dict) \
                or not isinstance(doc.get("upstream_api_key_env") or {}, dict):
            raise ConfigError("admin config: plan, endpoints and upstream_api_key_env must be JSON objects")
        live_settings = live.model_dump(exclude={"schema_version", "name", "stages"})
        if isinstance(doc["plan"].get("launch"), dict) and "quality_watch" in doc["plan"]["launch"]:
            live_settings.pop("quality_watch")   # the plan says whether (and how) the watch runs
        try:
            return RouterConfig.from_plan(doc["plan"], doc.get("endpoints") or {},
                                          upstream_api_key_env=doc.get("upstream_api_key_env"), **live_settings)
        except (TypeError, AttributeError) as exc:
            raise ConfigError(f"admin config: plan: unexpected shape ({exc})") from None
    new = parse_config(doc, "admin config")
    refused = [f"{f} (live {getattr(live, f)}, asked {getattr(new, f)})" for f in RESTART_ONLY_FIELDS
               if f in new.model_fields_set and getattr(new, f) != getattr(live, f)]
    if refused:
        raise ConfigError(f"admin config: {'; '.join(refused)}: changing this needs a restart of the router; "
                          f"leave it out (or send the live value) to swap the rest, and restart to change it")
    return new.model_copy(update={f: getattr(live, f) for f in RESTART_ONLY_FIELDS})


def parse_config(doc: Any, source: str) -> RouterConfig:
    """Validate a config document; ConfigError names the source, the field and the problem."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return RouterConfig.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"{source}: {loc}: {err['msg']}") from None


def load_config(path: str | Path, endpoints: dict[str, list[str]] | None = None) -> RouterConfig:
    """Load a router config file (YAML/JSON), or a plan.json when `endpoints` are given or the file is a plan."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from None
    is_plan = isinstance(doc, dict) and doc.get("stages") and all(
        isinstance(s, dict) and "endpoints" not in s for s in doc["stages"])
    if is_plan:
        if not endpoints:
            raise ConfigError(f"{p}: this is a plan (its stages have no endpoints); give each stage's endpoints, "
                              f"e.g. --endpoint {doc['stages'][0].get('name', 'STAGE')}=http://127.0.0.1:8000")
        return RouterConfig.from_plan(doc, endpoints)
    return parse_config(doc, str(p))
