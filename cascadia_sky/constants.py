"""Tunable numbers in one place, units in the names."""

from __future__ import annotations

# --- schema versions -------------------------------------------------------------------------
PLAN_SCHEMA_VERSION = 1

# --- CLI -------------------------------------------------------------------------------------
DEBUG_ENV_VAR = "CASCADIA_DEBUG"
HOME_ENV_VAR = "CASCADIA_HOME"
DEFAULT_HOME_DIRNAME = ".cascadia"

# --- catalogs --------------------------------------------------------------------------------
CATALOG_DIR_ENV_VAR = "CASCADIA_CATALOG_DIR"  # a directory laid out like catalogs/ that replaces the shipped one

# --- workload --------------------------------------------------------------------------------
WORKLOAD_SAMPLE_COUNT = 4000          # length samples drawn for rate + distribution workloads
WORKLOAD_SEED = 20250604              # fixed: plans must be reproducible

# --- spec validation -------------------------------------------------------------------------
MAX_PIPELINE_PARALLEL = 8             # largest PP the planner considers (and the fit check allows)
MIN_KV_CONTEXT_FRACTION = 1.0         # a model "fits" when one request of max_context tokens fits in KV memory
