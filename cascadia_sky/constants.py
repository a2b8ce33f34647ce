"""Tunable numbers in one place, units in the names."""

from __future__ import annotations

# --- schema versions -------------------------------------------------------------------------
PLAN_SCHEMA_VERSION = 2

# --- CLI -------------------------------------------------------------------------------------
DEBUG_ENV_VAR = "CASCADIA_DEBUG"
HOME_ENV_VAR = "CASCADIA_HOME"
DEFAULT_HOME_DIRNAME = ".cascadia"

# --- catalogs --------------------------------------------------------------------------------
CATALOG_DIR_ENV_VAR = "CASCADIA_CATALOG_DIR"  # a directory laid out like catalogs/ that replaces the shipped one

# --- performance model (vLLM engine defaults it assumes) -------------------------------------
VLLM_GPU_MEMORY_UTILIZATION = 0.90         # vLLM's default share of GPU memory it may use
VLLM_RUNTIME_RESERVE_GIB = 1.5             # CUDA context, NCCL and custom all-reduce buffers, CUDA graphs
VLLM_LARGE_GPU_MIN_GIB = 70                # vLLM's larger scheduler defaults apply from this memory (A100 excepted)
VLLM_MAX_BATCHED_TOKENS_LARGE_GPU = 8192   # tokens per engine step (chunked prefill budget), OpenAI server
VLLM_MAX_BATCHED_TOKENS_SMALL_GPU = 2048
VLLM_MAX_NUM_SEQS_LARGE_GPU = 1024         # running requests per engine
VLLM_MAX_NUM_SEQS_SMALL_GPU = 256
VLLM_REQUEST_OVERHEAD_MS = 25.0           # per request before its first token: HTTP, tokenisation, engine IPC,
                                           # detokenising and streaming the first token
BENCHMARK_PROMPTS_PER_CLIENT = 10          # closed-loop benchmarks send about this many prompts per concurrency
                                           # slot (aiconfigurator's silicon runs); sets the cold-start TTFT share

# --- workload --------------------------------------------------------------------------------
WORKLOAD_SAMPLE_COUNT = 4000          # length samples drawn for rate + distribution workloads
WORKLOAD_SEED = 20250604              # fixed: plans must be reproducible

# --- spec validation -------------------------------------------------------------------------
MAX_PIPELINE_PARALLEL = 8             # largest PP the planner considers (and the fit check allows)
MIN_KV_CONTEXT_FRACTION = 1.0         # a model "fits" when one request of max_context tokens fits in KV memory

# --- deployment MILP -------------------------------------------------------------------------
DEPLOY_MILP_TIME_LIMIT_SECONDS = 60.0  # CBC wall-clock limit per solve; on expiry the incumbent is kept ("feasible")
DEPLOY_MILP_GAP_REL = 0.0             # CBC relative gap; 0 = proven optimal (the tests compare with brute force)
DEPLOY_SHARE_EPSILON_FRACTION = 0.01  # stages reached by fewer requests than this still deploy but don't bind L
DEPLOY_TIE_TOL_REL = 1e-7             # primary objective within this of the optimum counts as a tie (lexicographic)

# --- planner: candidates and threshold search ------------------------------------------------
CLOUD_MAX_REPLICAS = 32               # most replicas of one stage considered in cloud mode
CLOUD_REPLICA_GAIN_FRACTION = 0.01    # stop adding replicas once one more improves p95 by less than this
CURVE_POINTS = 32                     # utilisation grid points per replica-shape latency curve
CURVE_MIN_HEADROOM_FRACTION = 1e-3    # the grid reaches utilisation 1 - this
PLANNER_LENGTH_SAMPLES = 4000         # request-length samples handed to the performance model per stage
PLANNER_GRID_POINTS = 12              # score quantiles per stage in the first round of the threshold search
PLANNER_JOINT_POINTS = 144            # at most this many threshold vectors in the joint screening round
PLANNER_REFINE_POINTS = 6             # quantiles added around each incumbent threshold per later round
PLANNER_STABLE_ROUNDS = 2             # K: stop when J has not improved for this many rounds
PLANNER_MAX_ROUNDS = 6                # hard cap on threshold-search rounds
PLANNER_TOLERANCE_FRACTION = 1e-3     # relative J improvement that counts as progress
PLANNER_SEED = 20250604               # split and bootstrap seed (plans are reproducible)
PLANNER_BOOTSTRAP_SAMPLES = 400       # resamples for quality.confidence
PLANNER_FRONTIER_POINTS = 12          # at most this many frontier points kept in plan.json

# --- simulator -------------------------------------------------------------------------------
SIM_SEED = 20250604                   # pairs requests with profile prompts; Poisson arrivals of rate workloads
SIM_POISSON_REQUESTS = 10_000         # requests simulated for a rate (not trace) workload
SIM_ROUTER_OVERHEAD_MS = 0.5          # router time per stage visit (scoring, forwarding); router README: 0.33 ms p50
SIM_ATTAINMENT = 0.95                 # "SLO scale / throughput at 95 % attainment"
CASCADESERVE_GRID_POINTS = 32         # score quantiles per stage when the CascadeServe baseline picks thresholds
CASCADESERVE_MAX_VECTORS = 200_000    # ... fewer per stage when the grid product would exceed this

# --- local CPU engines (llama.cpp via xllamacpp; measured on the 2-core reference machine, 1 thread, logprobs on) ---
LOCAL_ENGINE_DECODE_TOKENS_PER_S = {       # shared/notes/cpu-engines.md, 2026-11-24
    "HuggingFaceTB/SmolLM2-135M": 179.0,
    "google/gemma-3-270m": 81.0,
}
LOCAL_ENGINE_TTFT_S = 0.04                 # measured 0.03-0.045 s for short prompts
LOCAL_ENGINE_PREFILL_TOKENS_PER_S = 2000.0  # assumed prompt processing rate beyond that
LOCAL_ENGINE_EFFECTIVE_GB_PER_S = 17.0     # decode of other models: weight bytes per token / this (fits the two above)
LOCAL_GGUF_BYTES_PER_PARAM = 0.6           # Q4-class GGUF weights

# --- launcher (cascadia up / status / down) --------------------------------------------------
LAUNCH_ROUTER_PORT = 8800                    # the router's port (local backend: on 127.0.0.1)
LAUNCH_ROUTER_HOST_LOCAL = "127.0.0.1"       # the router on this machine (local and clusters backends) binds loopback
LAUNCH_ROUTER_HOST_SERVICE = "0.0.0.0"       # the router as a SkyServe service listens on its node for the LB
LAUNCH_READY_TIMEOUT_SECONDS = 600.0         # `up` gives up on a component not ready after this (local: per engine)
LAUNCH_POLL_INTERVAL_SECONDS = 0.2           # local supervisor loop and `up`'s wait loop
LAUNCH_MAX_RESTARTS = 3                      # a local process that crashed more often than this is failed
LAUNCH_RESTART_BACKOFF_SECONDS = 1.0         # first restart delay; doubles per restart
LAUNCH_STOP_TIMEOUT_SECONDS = 15.0           # `down` waits this long for the supervisor before killing
LAUNCH_HEALTH_TIMEOUT_SECONDS = 2.0          # one readiness / health probe (HTTP GET)
LAUNCH_LOG_TAIL_CHARS = 1500                 # engine log shown when a component fails
SKY_POLL_INTERVAL_SECONDS = 10.0             # skyserve/clusters: status polling while waiting for READY
SKY_READINESS_DELAY_SECONDS = 1800           # SkyServe initial_delay_seconds: weight download + engine start
SKY_AUTOSCALE_MAX_FACTOR = 2.0               # autoscaling: max_replicas = ceil(planned replicas x this)
SKY_VLLM_PORT = 8000                         # vLLM's port on a replica
SKY_VLLM_VERSION = "0.33.0"                  # pip-installed on replicas (tasks/stage-service.yaml)
SKY_ROUTER_CPUS = "4+"                       # the router service's replica
SKY_HEALTH_POLL_INTERVAL_SECONDS = 1.0       # clusters: probing a launched engine's /health (direct HTTP, cheap)
SKY_JOB_LOG_TAIL_LINES = 40                  # clusters: job log lines shown when a stage's job ends before serving

# --- quality profiles ------------------------------------------------------------------------------
PROFILE_MARGIN_POINTS = 0.03                 # `validate` warns when the profile cannot pin quality to +- this
PROFILE_CONFIDENCE = 0.95                    # ... at this confidence (normal approximation of the binomial)

# --- re-scheduling (defaults of the spec's `reschedule:` section; docs/reschedule.md argues each) ---------------
RESCHEDULE_INTERVAL_SECONDS = 60.0           # one observation window (SkyServe/Knative decide on 60 s of requests)
RESCHEDULE_WINDOWS = 3                       # consecutive out-of-band windows before an upward change
RESCHEDULE_WINDOWS_DOWN = 6                  # ... before a downward change (asymmetric: SkyServe 300 s up/1200 s down)
RESCHEDULE_RATE_BAND_FRACTION = 0.25         # drift: rate outside [R / (1 + b), R * (1 + b)] of the planned rate R
RESCHEDULE_LENGTH_BAND_FRACTION = 0.30       # drift: input/output p50 length outside the same band around the plan's
RESCHEDULE_REACH_BAND_POINTS = 0.10          # drift: a stage's reach (share of requests) moved by more than this
RESCHEDULE_MIN_REQUESTS = 20                 # a window with fewer requests says nothing (it neither drifts nor resets)
RESCHEDULE_COOLDOWN_SECONDS = 300.0          # no decision this long after a change (new replicas warm up, stats refill)
RESCHEDULE_MIN_GAIN_FRACTION = 0.10          # apply a new plan only when its J beats the current plan's by this much
RESCHEDULE_DOWN_HEADROOM_FACTOR = 1.25       # a scale-down must hold the observed peak rate x this (Dynamo: 1 / 0.8)
RESCHEDULE_HISTORY_ROWS = 10                 # `cascadia status NAME` shows this many re-schedule events
RESCHEDULE_DRAIN_TIMEOUT_SECONDS = 120.0     # a replica taken out of the router gets this long to finish (SkyServe)
RESCHEDULE_DRAIN_POLL_SECONDS = 0.5          # how often a draining replica is asked whether it is idle
LOCAL_MAX_REPLICAS = 4                       # most llama.cpp engines per stage the local planner considers
LOCAL_REPLICA_GAIN_FRACTION = 0.10           # one more local engine (a CPU core) must cut the stage's p95 by this
