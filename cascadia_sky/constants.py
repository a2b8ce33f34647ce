"""Tunable numbers in one place, units in the names."""

from __future__ import annotations

# --- schema versions -------------------------------------------------------------------------
PLAN_SCHEMA_VERSION = 1

# --- CLI -------------------------------------------------------------------------------------
DEBUG_ENV_VAR = "CASCADIA_DEBUG"
HOME_ENV_VAR = "CASCADIA_HOME"
DEFAULT_HOME_DIRNAME = ".cascadia"
