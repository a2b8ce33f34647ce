"""Where the stages that calibrate asks come from.

In order: `--endpoint STAGE=URL` for the stages it names; then every registered endpoint source (a function
spec -> {stage: url or Endpoint} or None, added with `register_endpoint_source`; "deployment", the running
deployment of the spec's name with its engine keys, is registered below); then, for a `resources.local` spec,
bundled llama.cpp engines that calibrate starts and stops itself; else an error that names the stages without an
endpoint.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cascadia_sky.constants import LAUNCH_HEALTH_TIMEOUT_SECONDS
from cascadia_sky.errors import UserInputError
from cascadia_sky.spec import CascadeSpec

@dataclass(frozen=True)
class Endpoint:
    """Where a stage answers, and the key its engine wants (only a running deployment's engines want one)."""

    url: str
    api_key: str = field(default="", repr=False)


# A source maps stage names to a URL or an Endpoint (None or {} when it knows none).
EndpointSource = Callable[[CascadeSpec], "dict[str, str | Endpoint] | None"]
ENDPOINT_SOURCES: list[tuple[str, EndpointSource]] = []


def register_endpoint_source(name: str, source: EndpointSource) -> None:
    """Add a source of stage endpoints (asked after --endpoint, before local engines); re-registering replaces."""
    ENDPOINT_SOURCES[:] = [(n, s) for n, s in ENDPOINT_SOURCES if n != name]
    ENDPOINT_SOURCES.append((name, source))


@dataclass(frozen=True)
class StageTarget:
    """One stage as calibrate calls it."""

    name: str
    model: str                 # the spec's model id: the profile's `model` column
    served_model_name: str     # the `model` field sent to the endpoint
    url: str
    origin: str                # "--endpoint", a registered source's name, or "local engine"
    api_key: str = field(default="", repr=False)   # the engine key of a running deployment's stage


def served_name(url: str, model: str, stage: str, api_key: str = "") -> str:
    """The `model` to send to an endpoint: the one model its /v1/models lists, or the listed id equal to the stage's
    model or name; else the stage name (llama.cpp ignores it; vLLM would answer 404 and the run says so)."""
    base = url.rstrip("/")
    base = base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base
    base = base if base.endswith("/v1") else base + "/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(base + "/models", headers=headers),
                                    timeout=LAUNCH_HEALTH_TIMEOUT_SECONDS) as resp:
            ids = [m["id"] for m in json.loads(resp.read()).get("data", []) if isinstance(m, dict) and "id" in m]
    except (OSError, ValueError, AttributeError, TypeError):
        return stage
    for want in (model, stage):
        if want in ids:
            return want
    return ids[0] if len(ids) == 1 else stage


def parse_endpoint_args(items: list[str]) -> dict[str, str]:
    """STAGE=URL pairs from the command line."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise UserInputError(f"--endpoint '{item}': write STAGE=URL, e.g. small=http://127.0.0.1:8001")
        out[name.strip()] = url.strip()
    return out


@contextmanager
def stage_targets(spec: CascadeSpec, endpoints: dict[str, str], *, concurrency: int = 1,
                  progress: Callable[[str], None] | None = None,
                  needed: bool = True) -> Iterator[list[StageTarget]]:
    """Yield one StageTarget per stage (in order); local engines started here are stopped on exit. With
    `needed=False` (every answer is cached already) stages without an --endpoint get no endpoint (url "")."""
    names = spec.stage_names()
    unknown = sorted(set(endpoints) - set(names))
    if unknown:
        raise UserInputError(f"--endpoint names unknown stage(s) {', '.join(unknown)}; the stages are "
                             f"{', '.join(names)}")
    if not needed:
        yield [StageTarget(name=n, model=st.model, served_model_name=n, url=endpoints.get(n, ""),
                           origin="--endpoint" if n in endpoints else "cache") for st, n in zip(spec.stages, names)]
        return
    urls: dict[str, tuple[str, str]] = {n: (u, "--endpoint") for n, u in endpoints.items()}
    keys: dict[str, str] = {}
    for src_name, source in ENDPOINT_SOURCES:
        if len(urls) == len(names):
            break
        found = source(spec) or {}
        for n in names:
            if n not in urls and found.get(n):
                ep = found[n] if isinstance(found[n], Endpoint) else Endpoint(str(found[n]))
                urls[n] = (ep.url, src_name)
                if ep.api_key:
                    keys[n] = ep.api_key
    missing = [n for n in names if n not in urls]
    engines = []
    try:
        if missing and spec.resources.local is not None:
            from cascadia_sky.engines import start_bundled  # engines (xllamacpp) only where they are needed

            threads = spec.resources.local.threads
            for st, name in zip(spec.stages, names):
                if name in missing:
                    if progress:
                        progress(f"starting a local engine for stage '{name}' ({st.model})")
                    e = start_bundled(st.model, alias=name, threads=threads, parallel=concurrency,
                                      ctx=st.max_context * concurrency)
                    engines.append(e)
                    urls[name] = (e.url, "local engine")
            missing = []
        if missing:
            raise UserInputError(f"no endpoint for stage(s) {', '.join(missing)}: give --endpoint "
                                 f"{missing[0]}=http://HOST:PORT for each (or calibrate a resources.local spec, whose "
                                 "bundled models calibrate starts itself)")
        local = {n for n in names if urls[n][1] == "local engine"}
        yield [StageTarget(name=n, model=st.model, url=urls[n][0], origin=urls[n][1], api_key=keys.get(n, ""),
                           served_model_name=n if n in local else served_name(urls[n][0], st.model, n,
                                                                              keys.get(n, "")))
               for st, n in zip(spec.stages, names)]
    finally:
        for e in engines:
            e.stop()


def load_spec_for_calibration(path: str | Path) -> CascadeSpec:
    """load_spec with every check, except that the quality profile need not exist yet (calibrate writes it)."""
    from cascadia_sky.errors import SpecError
    from cascadia_sky.spec import check_spec, load_spec

    spec = load_spec(path, check=False)
    try:
        check_spec(spec)
    except SpecError as exc:
        if exc.field != "quality.profile":
            raise
    return spec


def deployment_endpoints(spec: CascadeSpec) -> dict[str, str | Endpoint]:
    """The running deployment of the spec's name (`cascadia up`): per stage a ready replica's engine URL (or its
    SkyServe service) and that stage's engine key; {} when it is not up."""
    from cascadia_sky.launch.keys import read_engine_keys
    from cascadia_sky.launch.state import StateStore

    store = StateStore()
    rec = store.get(spec.name)
    if rec is None or rec.phase != "up":
        return {}
    keys = read_engine_keys(store.deployment_dir(spec.name))
    out: dict[str, str | Endpoint] = {}
    for c in rec.components:
        if c.kind in ("engine", "cluster", "service") and c.phase == "ready" and c.url and c.stage not in out:
            out[c.stage] = Endpoint(c.url, keys.get(c.stage, ""))
    return out


register_endpoint_source("deployment", deployment_endpoints)
