"""LLM backends: tokens/s and requests/s at 1 and 8 concurrent requests, native vs vLLM (a started server).

    python scripts/benchmark.py llm_backends --model-dir DIR [--vllm-python PY] --json OUT

The same clone prompt and the same ``--requests`` seeded requests (temperature 0.7, top-k 50, seeds
0..N-1, at most ``--new-tokens`` new tokens each, eos ends a request early) run at every concurrency
level C through C threads, so every level does the same work: tokens/s is all new tokens over the
wall time, requests/s all requests over it, and the 8-vs-1 ratio is tokens/s at the highest level
over tokens/s at 1 (target for vLLM on CPU with the demo model: >= 2.5). Levels run ``--repeats``
times, interleaved, and each reports its fastest run (all runs are listed). Latency, for one request
at a time (streamed, ``stream_ids``): time to the first new token and to the first vocoder chunk's
tokens (the LLM's part of the time to first audio; the streaming vocoder then adds its first chunk,
see ``benchmark.py stream``), medians over ``--latency-requests`` seeds. Backends: the native
``Step1LLM``, whose requests run one at a time as in ``clone``/``edit`` (they hold its generation
lock), and ``VLLMStep1LLM`` against a vLLM server started on the same folder with
scripts/vllm_server.py (or ``--llm-url``). The native backend runs on ``--threads`` torch threads
(default 1, like vLLM's CPU engine on a 2-core machine, which keeps the other core for its frontend;
two OpenMP threads on a busy 2-core machine made the native figures swing by 3x between runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from model_layout import is_demo_models
from models.audio_tokens import token_str
from models.generation import GenerationOptions
from models.llm import Step1LLM
from models.llm_vllm import VLLMStep1LLM
from models.prompts import build_clone_prompt
from models.vllm_options import VLLMEngineOptions
from models.vocoder_stream import CHUNK_FRAMES, LOOKAHEAD_TOKENS, mixed_token_count
from scripts.bench import llm_dir
from scripts.vllm_server import PYTHON_ENV, start_server

log = logging.getLogger("bench.llm_backends")

BACKENDS = ("native", "vllm")
TARGET_RATIO = 2.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", default=",".join(BACKENDS), help="subset of: native, vllm")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=24, help="requests per level (same set at each)")
    parser.add_argument("--new-tokens", type=int, default=128, help="cap on new tokens per request")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of every level, interleaved; each level reports its fastest run",
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=5,
        help="streamed single requests for the first-token / first-chunk latency",
    )
    parser.add_argument(
        "--prompt-groups",
        type=int,
        default=60,
        help="reference audio groups in the clone prompt (5 tokens each)",
    )
    parser.add_argument("--device", default="auto", help="native backend device")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of the native backend (vLLM's CPU engine uses 1 on 2 cores)",
    )
    parser.add_argument("--vllm-python", default=None, help=f"the vLLM venv's python (default ${PYTHON_ENV})")
    parser.add_argument("--llm-url", default=None, help="a running vLLM server to use instead")
    parser.add_argument("--enforce-eager", action="store_true", help="start vLLM without torch.compile")
    parser.add_argument("--quick", action="store_true", help="requests = highest level, 32 tokens")


def _clone_prompt(llm: Step1LLM | VLLMStep1LLM, groups: int) -> list[int]:
    codes = [c for g in range(groups) for c in (g % 1024, (7 * g) % 1024, 1024 + g, 2048 + g, 3072 + g)]
    return build_clone_prompt(
        llm.tokenizer,
        "This is the reference sentence.",
        token_str(codes),
        "And this is the sentence to say in that voice.",
    )


def measure_level(
    llm: Step1LLM | VLLMStep1LLM,
    prompt: list[int],
    concurrency: int,
    requests: int,
    new_tokens: int,
    first_seed: int = 0,
) -> dict:
    """``requests`` seeded generations through ``concurrency`` threads: tokens/s and requests/s."""
    # The native backend generates one request at a time per instance (clone/edit hold its lock).
    serial = threading.Lock() if isinstance(llm, Step1LLM) else None

    def one(seed: int) -> int:
        options = GenerationOptions(seed=seed, max_length=len(prompt) + new_tokens)
        if serial is None:
            return len(llm.generate_ids(prompt, options)[0])
        with serial:
            return len(llm.generate_ids(prompt, options)[0])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        counts = list(pool.map(one, range(first_seed, first_seed + requests)))
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": requests,
        "new_tokens": sum(counts),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(sum(counts) / wall, 1),
        "requests_per_s": round(requests / wall, 3),
    }


FIRST_CHUNK_TOKENS = mixed_token_count(CHUNK_FRAMES[0]) + LOOKAHEAD_TOKENS  # what the 1st vocoder call needs


def measure_latency(llm: Step1LLM | VLLMStep1LLM, prompt: list[int], requests: int) -> dict:
    """One streamed request at a time: seconds to the first new token and to the tokens of the first
    vocoder chunk (medians; requests that end before the first chunk count only for the first)."""
    firsts, chunks = [], []
    for seed in range(20_000, 20_000 + max(1, requests)):
        options = GenerationOptions(seed=seed, max_length=len(prompt) + FIRST_CHUNK_TOKENS)
        start, count = time.perf_counter(), 0
        for _ in llm.stream_ids(prompt, options):
            count += 1
            if count == 1:
                firsts.append(time.perf_counter() - start)
            if count == FIRST_CHUNK_TOKENS:
                chunks.append(time.perf_counter() - start)
                break
    return {
        "first_token_s": round(statistics.median(firsts), 4) if firsts else None,
        "first_chunk_tokens": FIRST_CHUNK_TOKENS,
        "first_chunk_tokens_s": round(statistics.median(chunks), 4) if chunks else None,
        "latency_requests": len(firsts),
    }


def bench_backend(llm: Step1LLM | VLLMStep1LLM, levels: list[int], args: argparse.Namespace) -> dict:
    prompt = _clone_prompt(llm, args.prompt_groups)
    measure_level(llm, prompt, 1, 1, min(8, args.new_tokens), first_seed=10_000)  # warm-up
    out: dict = {
        "prompt_tokens": len(prompt),
        "levels": {},
        "latency": measure_latency(llm, prompt, args.latency_requests),
    }
    runs: dict[int, list[dict]] = {level: [] for level in levels}
    # Interleaved repeats, best run per level: other load on the machine hits every level alike.
    for _ in range(max(1, args.repeats)):
        for level in levels:
            figures = measure_level(llm, prompt, level, args.requests, args.new_tokens)
            log.info(
                "%s: %d concurrent: %.1f tokens/s, %.3f requests/s",
                type(llm).__name__,
                level,
                figures["tokens_per_s"],
                figures["requests_per_s"],
            )
            runs[level].append(figures)
    for level in levels:
        best = max(runs[level], key=lambda f: f["tokens_per_s"])
        out["levels"][str(level)] = {**best, "tokens_per_s_runs": [f["tokens_per_s"] for f in runs[level]]}
    lowest, highest = str(min(levels)), str(max(levels))
    out[f"ratio_{highest}_vs_{lowest}"] = round(
        out["levels"][highest]["tokens_per_s"] / out["levels"][lowest]["tokens_per_s"], 2
    )
    return out


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        args.requests = max(int(c) for c in args.concurrency.split(","))
        args.new_tokens, args.repeats = 32, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="editx_bench_llm_backends_") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, tmp: Path) -> dict:
    model_dir = llm_dir(args.model_dir, tmp)
    levels = sorted({int(c) for c in args.concurrency.split(",")})
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    result: dict = {
        "model_dir": str(model_dir),
        "demo_models": is_demo_models(model_dir.parent),
        "new_tokens_cap": args.new_tokens,
        "requests": args.requests,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "backends": {},
    }
    if "native" in backends:
        llm = Step1LLM.load(model_dir, variant="base", device=args.device)
        result["backends"]["native"] = {
            "device": str(llm.device),
            "dtype": str(llm.model.dtype),
            "torch_threads": torch.get_num_threads(),
            **bench_backend(llm, levels, args),
        }
        del llm
    if "vllm" in backends:
        result["backends"]["vllm"] = _bench_vllm(model_dir, levels, args, tmp)
        ratio = next(v for k, v in result["backends"]["vllm"].items() if k.startswith("ratio_"))
        result["vllm_target_ratio"] = TARGET_RATIO
        result["vllm_meets_target"] = ratio >= TARGET_RATIO
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]  # other work skews the figures
    return result


def _bench_vllm(model_dir: Path, levels: list[int], args: argparse.Namespace, tmp: Path) -> dict:
    if args.llm_url:
        with VLLMStep1LLM.connect(args.llm_url, model_dir) as llm:
            return {"server": args.llm_url, **bench_backend(llm, levels, args)}
    options = VLLMEngineOptions(max_num_seqs=max(16, max(levels)), enforce_eager=args.enforce_eager)
    start = time.perf_counter()
    server = start_server(model_dir, args.vllm_python, options=options, log_path=tmp / "vllm_server.log")
    started = time.perf_counter() - start
    try:
        with VLLMStep1LLM.connect(server.url, model_dir) as llm:
            return {
                "server_start_s": round(started, 1),
                "enforce_eager": args.enforce_eager,
                "repetition_rule": llm.repetition_rule,
                **bench_backend(llm, levels, args),
            }
    finally:
        server.stop()
