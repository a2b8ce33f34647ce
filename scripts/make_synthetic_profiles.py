#!/usr/bin/env python3
"""Make the SYNTHETIC example quality profiles in examples/profiles/ from published per-model accuracies.

There is no real calibration data in this repository (no judged answers of these models). This script writes
profiles with the structure a real one has, documented in examples/profiles/README.md:

- prompts come from a mix of benchmarks; on each benchmark, each model is correct with its PUBLISHED accuracy;
- a latent per-prompt easiness z shared by all models (correlation RHO) makes correctness correlated across stages:
  a prompt the small model solves is usually solved by the large one (superset-ish, not exactly);
- the score (mean token logprob, what the router computes live) is informative but noisy: binormal given
  correctness with an AUROC stated per model; score = -(mean per-token NLL), always < 0;
- input lengths are lognormal per benchmark; output lengths are lognormal per benchmark x model, longer for wrong
  answers and for harder prompts, and capped by the context budget.

Deterministic: only Python's `random.random()` (whose sequence Python guarantees across versions) and
`statistics.NormalDist.inv_cdf` (pure Python) are used, and numbers are printed with fixed precision, so the
committed CSVs are reproduced byte for byte. `--check` verifies that; tests run it.

Usage: python scripts/make_synthetic_profiles.py [--out examples/profiles] [--check]
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "examples" / "profiles"
_N01 = NormalDist()

# Shared modelling assumptions (stated in examples/profiles/README.md).
RHO = 0.7  # share of correctness-latent variance that is per-prompt (shared by all models)
SCORE_NLL_SIGMA = 0.35  # spread of log(mean per-token NLL)
INPUT_SIGMA = 0.45  # spread of log(input tokens)
OUTPUT_SIGMA = 0.55  # spread of log(output tokens)
HARDNESS_LENGTH = 0.2  # output length x exp(-HARDNESS_LENGTH * z): harder prompts get longer answers


@dataclass(frozen=True)
class Benchmark:
    key: str  # prompt-id prefix
    share: float  # share of the profile's prompts
    input_median: int  # prompt tokens (chat template included)
    output_median: int  # answer tokens of the reference (largest) model when correct


@dataclass(frozen=True)
class Model:
    name: str  # Hugging Face id (base id, the project's convention)
    accuracy: dict[str, float]  # benchmark key -> published accuracy (fraction)
    auroc: float  # assumed AUROC of the score for correctness
    nll_median: float  # median mean per-token NLL (nats): the score's location
    length_scale: float  # output length relative to the benchmark's reference


@dataclass(frozen=True)
class Profile:
    file: str
    seed: int
    n_prompts: int
    context_tokens: int  # input + output never exceed this (the example's max_context)
    max_output_tokens: int
    wrong_length_factor: float  # wrong answers are this much longer (median)
    benchmarks: tuple[Benchmark, ...]
    models: tuple[Model, ...]  # cascade order, smallest first


# --- the profiles (sources of every accuracy: examples/profiles/README.md) ---------------------------------------

DEEPSEEK = Profile(
    file="deepseek.csv", seed=7001, n_prompts=2000, context_tokens=16384, max_output_tokens=16384,
    wrong_length_factor=1.6,
    benchmarks=(
        Benchmark("math500", 0.50, 110, 2800),
        Benchmark("gpqa-diamond", 0.25, 260, 4500),
        Benchmark("livecodebench", 0.20, 480, 6000),
        Benchmark("aime2024", 0.05, 150, 9000),
    ),
    models=(
        Model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
              {"math500": 0.928, "gpqa-diamond": 0.491, "livecodebench": 0.376, "aime2024": 0.555},
              auroc=0.72, nll_median=0.45, length_scale=1.3),
        Model("deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
              {"math500": 0.945, "gpqa-diamond": 0.652, "livecodebench": 0.575, "aime2024": 0.700},
              auroc=0.75, nll_median=0.38, length_scale=1.1),
        Model("deepseek-ai/DeepSeek-R1",
              {"math500": 0.973, "gpqa-diamond": 0.715, "livecodebench": 0.659, "aime2024": 0.798},
              auroc=0.78, nll_median=0.32, length_scale=1.0),
    ),
)

_LLAMA_ACC = {  # Llama 3.1 Instruct model card (8B, 70B, 405B)
    "mmlu-pro": (0.483, 0.664, 0.733), "math": (0.519, 0.680, 0.738), "gsm8k": (0.845, 0.951, 0.968),
    "gpqa": (0.304, 0.467, 0.507), "humaneval": (0.726, 0.805, 0.890), "mmlu": (0.730, 0.860, 0.886),
    "ifeval": (0.804, 0.875, 0.886),
}


def _llama(size: int, keys: tuple[str, ...], auroc: float, nll: float, scale: float) -> Model:
    col = {8: 0, 70: 1, 405: 2}[size]
    return Model(f"meta-llama/Llama-3.1-{size}B", {k: _LLAMA_ACC[k][col] for k in keys}, auroc, nll, scale)


_L3_KEYS = ("mmlu-pro", "math", "gsm8k", "gpqa", "humaneval")
LLAMA3 = Profile(
    file="llama3.csv", seed=7002, n_prompts=2000, context_tokens=16384, max_output_tokens=4096,
    wrong_length_factor=1.3,
    benchmarks=(
        Benchmark("mmlu-pro", 0.35, 240, 350),
        Benchmark("math", 0.25, 100, 450),
        Benchmark("gsm8k", 0.15, 130, 220),
        Benchmark("gpqa", 0.10, 260, 400),
        Benchmark("humaneval", 0.15, 160, 250),
    ),
    models=(_llama(8, _L3_KEYS, 0.70, 0.55, 1.1), _llama(70, _L3_KEYS, 0.74, 0.45, 1.0),
            _llama(405, _L3_KEYS, 0.76, 0.40, 1.0)),
)

_MC_KEYS = ("mmlu", "ifeval", "humaneval", "gsm8k")
MULTICLOUD = Profile(
    file="multicloud.csv", seed=7003, n_prompts=2000, context_tokens=16384, max_output_tokens=4096,
    wrong_length_factor=1.3,
    benchmarks=(
        Benchmark("mmlu", 0.35, 120, 250),
        Benchmark("ifeval", 0.25, 70, 300),
        Benchmark("humaneval", 0.20, 160, 250),
        Benchmark("gsm8k", 0.20, 130, 220),
    ),
    models=(_llama(8, _MC_KEYS, 0.70, 0.55, 1.1), _llama(70, _MC_KEYS, 0.74, 0.45, 1.0)),
)

LOCAL = Profile(
    file="local-synthetic.csv", seed=7004, n_prompts=500, context_tokens=8192, max_output_tokens=1024,
    wrong_length_factor=1.3,
    benchmarks=(Benchmark("ifeval", 1.0, 70, 180),),
    models=(
        Model("HuggingFaceTB/SmolLM2-135M", {"ifeval": 0.299}, auroc=0.62, nll_median=1.10, length_scale=1.2),
        Model("google/gemma-3-270m", {"ifeval": 0.512}, auroc=0.65, nll_median=0.95, length_scale=1.0),
    ),
)

PROFILES = (DEEPSEEK, LLAMA3, MULTICLOUD, LOCAL)


# --- generation --------------------------------------------------------------------------------------------------

def _normal(rng: random.Random) -> float:
    """A standard normal draw from random() alone (stable across Python versions)."""
    u = rng.random()
    return _N01.inv_cdf(min(max(u, 1e-12), 1.0 - 1e-12))


def _counts(profile: Profile) -> list[int]:
    """Prompts per benchmark: shares rounded, remainder to the largest share (deterministic)."""
    counts = [int(round(b.share * profile.n_prompts)) for b in profile.benchmarks]
    biggest = max(range(len(counts)), key=lambda i: profile.benchmarks[i].share)
    counts[biggest] += profile.n_prompts - sum(counts)
    return counts


def generate(profile: Profile) -> str:
    """The profile's CSV text (comment lines, header, one row per prompt and model)."""
    rng = random.Random(profile.seed)
    out = io.StringIO()
    out.write("# SYNTHETIC quality profile: not measurements. Made by scripts/make_synthetic_profiles.py from published\n")
    out.write("# per-model accuracies; see examples/profiles/README.md for sources and assumptions.\n")
    out.write("# kind: synthetic\n")  # provenance header (cascadia_sky.quality.read_provenance)
    out.write(f"# models: {', '.join(m.name for m in profile.models)}\n")
    out.write("# scorer: mean_logprob\n")
    out.write("# grader: none (correctness drawn from published accuracies)\n")
    out.write(f"# prompts: {profile.n_prompts}\n")
    out.write("# tool: scripts/make_synthetic_profiles.py\n")
    out.write("prompt_id,model,score,quality,input_tokens,output_tokens\n")
    shared, own = math.sqrt(RHO), math.sqrt(1.0 - RHO)
    for bench, count in zip(profile.benchmarks, _counts(profile)):
        for k in range(count):
            pid = f"syn-{bench.key}-{k + 1:04d}"
            z = _normal(rng)  # easiness, shared by all models
            n_in = int(round(bench.input_median * math.exp(INPUT_SIGMA * _normal(rng))))
            n_in = min(max(n_in, 8), profile.context_tokens // 4)
            for model in profile.models:
                acc = model.accuracy[bench.key]
                correct = shared * z + own * _normal(rng) > _N01.inv_cdf(1.0 - acc)
                delta = math.sqrt(2.0) * _N01.inv_cdf(model.auroc)  # binormal: AUROC = Phi(delta / sqrt 2)
                conf = delta * (1.0 if correct else 0.0) - delta / 2.0 + _normal(rng)
                nll = model.nll_median * math.exp(-SCORE_NLL_SIGMA * conf)
                length = bench.output_median * model.length_scale * math.exp(
                    OUTPUT_SIGMA * _normal(rng) - HARDNESS_LENGTH * z)
                if not correct:
                    length *= profile.wrong_length_factor
                cap = min(profile.max_output_tokens, profile.context_tokens - n_in)
                n_out = min(max(int(round(length)), 1), cap)
                out.write(f"{pid},{model.name},{-nll:.4f},{1 if correct else 0},{n_in},{n_out}\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write the CSVs into")
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if any CSV in --out differs from what this script makes")
    args = ap.parse_args(argv)
    stale = []
    for profile in PROFILES:
        text = generate(profile)
        path = args.out / profile.file
        if args.check:
            if not path.is_file() or path.read_bytes() != text.encode():
                stale.append(str(path))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
        print(f"wrote {path} ({len(text.encode())} bytes)")
    if stale:
        print("stale or missing (re-run scripts/make_synthetic_profiles.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
