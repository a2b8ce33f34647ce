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
DEPLOY_TAIL_FRACTION = 0.05           # L weighs stage k by min(1, share_k / this): its part in the slowest 5 %
DEPLOY_TIE_TOL_REL = 1e-7             # primary objective within this of the optimum counts as a tie (lexicographic)

# --- planner: candidates and threshold search ------------------------------------------------
CLOUD_MAX_REPLICAS = 32               # most replicas of one stage considered in cloud mode
CLOUD_REPLICA_GAIN_FRACTION = 0.01    # stop adding replicas once one more improves p95 by less than this
FAILOVER_PRICE_BAND_FRACTION = 0.03   # equivalent offers: a stage's $/h on them within +this of the chosen offer
FAILOVER_MAX_OFFERS = 8               # at most this many offers per stage in its failover list (chosen one first)
FAILOVER_MAX_REPLANS = 3              # `up`: re-plans after SkyPilot found no capacity in a stage's whole band
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
PLANNER_EXACT_TIME_LIMIT_SECONDS = 60.0  # branch and bound over thresholds stops here and reports its gap
LATENCY_SAMPLES = 20_000              # samples of the request-level latency mixture (planner/latency.py)
BURST_WINDOW_SECONDS = 10.0           # pointwise-stationary model: the trace's rate per window of this length
BURST_RATE_BINS = 12                  # windows grouped into this many equal-request rate bins
BURST_SATURATION_FRACTION = 0.98      # a window above this share of capacity: latency there plus fluid backlog
BURST_WAIT_GRID_POINTS = 4096         # utilisation grid on which the fluid backlog wait is tabulated
BURST_FLUID_WINDOW_SECONDS = 1.0      # the fluid backlog follows the rate per window of this length: a burst of a
                                      # few seconds above capacity queues requests even when its 10-s window does not
                                      # exceed capacity (code trace x8: a 10-s fluid predicts 2.9 s, the simulator 5.3 s)

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
ENGINE_API_KEY_ENV = "CASCADIA_ENGINE_API_KEY"   # an engine process reads its key (only the router holds it) here
LOCAL_ENGINE_MAX_TOKENS = 128              # answer tokens when a request sets no max_tokens (llama.cpp n_predict):
                                           # the report's suggestion for examples/profiles/local.csv (1.5 x p95 64)

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
PRICE_CHECK_TOLERANCE_USD_PER_HOUR = 0.01    # up --dryrun: SkyPilot's price may differ from the plan's by this
PRICE_CHECK_TOLERANCE_FRACTION = 0.005       # ... or by this fraction of the plan's price, whichever is larger
SKY_JOB_LOG_TAIL_LINES = 40                  # clusters: job log lines shown when a stage's job ends before serving

# --- quality profiles ------------------------------------------------------------------------------
PROFILE_MARGIN_POINTS = 0.03                 # validate and calibrate warn when a profile cannot pin quality to +- this
PROFILE_CONFIDENCE_Z = 1.959964              # ... at 95 % (two-sided normal quantile; also the Wilson intervals)

# --- AWS (catalog refresh and quotas; cascadia_sky/cloud/) -----------------------------------
USER_CATALOG_DIRNAME = "catalogs"            # under $CASCADIA_HOME: refreshed offers (offers/<cloud>.csv + .meta.json)
CATALOG_STALE_AFTER_DAYS = 7.0               # `cascadia catalog` warns about prices older than this
AWS_MAX_ATTEMPTS = 8                         # boto3 standard retry mode: attempts per call, the first included
AWS_CONNECT_TIMEOUT_SECONDS = 10.0
AWS_READ_TIMEOUT_SECONDS = 60.0
AWS_PRICING_REGION = "us-east-1"             # the Pricing API's endpoint region (it also serves eu-central-1, ap-south-1)
AWS_DEFAULT_REGIONS = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1",
                       "ap-southeast-2")     # refreshed when neither --regions nor describe_regions says otherwise
AWS_GPU_TYPE_PATTERNS = ("g*", "p*")         # instance types with NVIDIA GPUs (the G/VT and P quota families)
AWS_SPOT_PRODUCT = "Linux/UNIX"              # spot price history product description

# --- calibrate (cascadia calibrate) ----------------------------------------------------------
CALIBRATE_CONCURRENCY = 2                  # requests in flight per stage (local engines get this many slots)
CALIBRATE_TEMPERATURE = 0.0                # greedy: the profile is reproducible
CALIBRATE_MAX_TOKENS = 64                  # per answer; short-answer prompt sets need few
CALIBRATE_TOP_LOGPROBS = 2                 # alternatives per token (the margin scorer reads 2)
CALIBRATE_REQUEST_TIMEOUT_SECONDS = 300.0  # one stage answer
CALIBRATE_REQUEST_RETRIES = 2              # on connection errors and 5xx, before the stage is reported failed
CALIBRATE_RETRY_BACKOFF_SECONDS = 1.0      # times the attempt number
CALIBRATE_RELIABILITY_BINS = 10            # reliability diagram: equal-count score bins
CALIBRATE_HOLDOUT_FRACTION = 0.3           # isotonic map: share of prompts held out to test it
CALIBRATE_SEED = 20250604                  # the held-out split
CALIBRATE_JUDGE_MAX_TOKENS = 16            # the judge answers with a number
CALIBRATE_JUDGE_SCALE = 10.0               # the rubric's scale: 0..this, normalised to [0, 1]
CALIBRATE_EMPTY_ANSWER_SCORE = -1e9        # an empty answer's -inf score as written in the profile (finite, lowest)
CALIBRATE_QUALITY_FLOOR_FRACTION = 0.05    # the prompt count a warning names uses p kept in [this, 1 - this]
PLANNER_QUALITY_CONFIDENCE = 0.9            # default quality.confidence: the target holds at this one-sided level

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

# Quality watch (spec `quality.watch`, docs/quality-watch.md): shadow checks of accepted answers while serving
QUALITY_WATCH_FRACTION = 0.03                # share of early-accepted answers checked against the last stage (or judge)
QUALITY_WATCH_MAX_PER_SECOND = 1.0           # shadow requests started per second at most (token bucket)
QUALITY_WATCH_MAX_IN_FLIGHT = 4              # shadow requests running at once at most (more are skipped, not queued)
QUALITY_WATCH_WINDOWS_SECONDS = (600, 3600)  # the windows /stats reports the measured quality over
QUALITY_WATCH_LEVEL = 0.90                   # two-sided level of the Wilson interval of the measured quality
QUALITY_WATCH_MIN_CHECKS = 30                # fewer checks in the verdict window: "unverified" (no verdict, no change)
QUALITY_WATCH_MARGIN_POINTS = 0.02           # measured mean this far below the promise is "at risk" (not noise)
RESCHEDULE_PANIC_RATE_FACTOR = 2.0           # during the cool-down, `windows` windows at this x the planned rate drift up
                                             # at once (Knative's panic mode: desired >= 2x current capacity)
RESCHEDULE_REACH_TOLERANCE_POINTS = 0.02     # re-plan: re-weight the profile to the observed reach only when a stage's
                                             # reach is off by more (below: the count's own noise over a few windows)
RESCHEDULE_REACH_NOISE_Z = 3.0               # ... and by more than this many standard errors of the two counts
RESCHEDULE_REACH_MAX_GROWTH = 4.0            # re-weighted profile: at most this many x the profile's prompts (copies)
LOCAL_MAX_REPLICAS = 4                       # most llama.cpp engines per stage the local planner considers
LOCAL_REPLICA_GAIN_FRACTION = 0.10           # one more local engine (a CPU core) must cut the stage's p95 by this
