"""What a running component was launched with, as a short digest: equal fingerprints mean nothing to relaunch.

The fields that count come from the plan model itself (each field's `affects` mark in planner/plan.py), so the
launcher's notion of "changed" cannot drift from the plan's schema: a stage's engines depend on its `engine`
fields and on the launch section's `engine` fields (targets, vLLM version, threads); the router depends on the
cascade's name and scorer, each stage's `router` fields, and the launch section's `router` fields (host, port).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cascadia_sky.planner.plan import LaunchSettings, Plan, StagePlan, affected_fields

STAGE_ENGINE_KEYS = affected_fields(StagePlan, "engine")
STAGE_ROUTER_KEYS = affected_fields(StagePlan, "router")
LAUNCH_ENGINE_KEYS = affected_fields(LaunchSettings, "engine")
LAUNCH_ROUTER_KEYS = affected_fields(LaunchSettings, "router")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_plain).encode()).hexdigest()[:16]


def _plain(obj: Any) -> Any:
    """Nested plan models (the launch section's reschedule settings) as their JSON form."""
    return obj.model_dump(mode="json")


def _pick(model: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(model, k) for k in keys}


def stage_fingerprint(plan: Plan, stage: StagePlan) -> str:
    """What a stage's engines were launched with."""
    return _digest({**_pick(stage, STAGE_ENGINE_KEYS), "launch": _pick(plan.launch, LAUNCH_ENGINE_KEYS)})


def router_fingerprint(plan: Plan) -> str:
    """What the router's routing and listening depend on (stage order, names, thresholds, scorer, host, port)."""
    return _digest({"name": plan.name, "scorer": plan.scorer,
                    "stages": [_pick(s, STAGE_ROUTER_KEYS) for s in plan.serving()],
                    "launch": _pick(plan.launch, LAUNCH_ROUTER_KEYS)})


def engine_changes(old: Plan | None, new: Plan, stage: str) -> str:
    """`key old -> new` for each engine field of a stage (and the launch section) that differs; "" if unknown."""
    if old is None or all(s.name != stage for s in old.stages):
        return ""
    a, b = old.stage(stage), new.stage(stage)
    diffs = [f"{k} {getattr(a, k)!r} -> {getattr(b, k)!r}" for k in STAGE_ENGINE_KEYS if getattr(a, k) != getattr(b, k)]
    diffs += [f"launch.{k} {getattr(old.launch, k)!r} -> {getattr(new.launch, k)!r}" for k in LAUNCH_ENGINE_KEYS
              if getattr(old.launch, k) != getattr(new.launch, k)]
    return ", ".join(diffs)


__all__ = ["LAUNCH_ENGINE_KEYS", "LAUNCH_ROUTER_KEYS", "STAGE_ENGINE_KEYS", "STAGE_ROUTER_KEYS", "engine_changes",
           "router_fingerprint", "stage_fingerprint"]
