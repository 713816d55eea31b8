"""Vocoder: seconds per audio-second of the flow (10 vs 5 Euler steps) and of HiFT.

    python scripts/benchmark.py vocoder --model-dir DIR --json OUT

Measures, in one run: the REAL-size networks (built from our own rendering of the released
cosyvoice.yaml, random weights, so no download is needed) and the model under --model-dir
(the real CosyVoice-300M-25Hz when present, else the demo model written on the fly). Flow
and HiFT are timed separately; the prompt frontend (mel + CAM++) is timed on the given model.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model_layout import COSYVOICE_CONFIG_FILE, VOCODER_FOLDER
from models.cosyvoice_config import REAL_SIZES, render_cosyvoice_yaml
from models.device import pick_device
from models.hift import fold_weight_norm
from models.vocoder import (
    Vocoder,
    align_prompt_mel,
    build_networks,
    reshape_mixed_tokens,
    vocoder_dtype,
)

log = logging.getLogger("bench.vocoder")

SUBDIR = Path(VOCODER_FOLDER)
TOKENS_PER_SECOND = 25 * 5 / 3  # mixed tokens: 3 frames of 25 Hz per 5-token group


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=2.0, help="target audio length to decode")
    parser.add_argument("--prompt-seconds", type=float, default=1.0, help="reference (prompt) length")
    parser.add_argument("--steps", default="10,5", help="comma-separated Euler step counts to compare")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16 (CUDA only)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--skip-real", action="store_true", help="skip the real-size random-weight model")


def mixed_tokens(seconds: float, rng: np.random.Generator) -> list[int]:
    out: list[int] = []
    for _ in range(max(1, round(seconds * TOKENS_PER_SECOND / 5))):
        out += rng.integers(0, 1024, 2).tolist() + rng.integers(1024, 5120, 3).tolist()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decode(vocoder: Vocoder, args: argparse.Namespace, steps: list[int]) -> dict:
    """Median flow and HiFT seconds per audio-second over ``args.repeats`` runs, after one warm-up."""
    rng = np.random.default_rng(0)
    tokens, prompt_tokens = mixed_tokens(args.seconds, rng), mixed_tokens(args.prompt_seconds, rng)
    token = torch.from_numpy(reshape_mixed_tokens(tokens))[None]
    prompt_token = torch.from_numpy(reshape_mixed_tokens(prompt_tokens))[None]
    n_prompt = vocoder.flow.up_rate * prompt_token.size(1)
    prompt_mel = align_prompt_mel(torch.randn(1, n_prompt, 80) - 5, n_prompt)
    embedding = torch.randn(1, 192)
    noise, generator = vocoder.request_randomness(0)
    noise = noise[:, :, : vocoder.flow.up_rate * (token.size(1) + prompt_token.size(1))]  # the frames used
    dev = vocoder.device

    def flow(n: int) -> torch.Tensor:
        return vocoder.flow.inference(
            token.to(dev), prompt_token.to(dev), prompt_mel.to(dev), embedding.to(dev), noise.to(dev), n
        )

    mel = flow(1)  # warm-up (allocator, kernels)
    vocoder.hift.inference(mel, generator=generator)
    audio_s = token.size(1) * 2 * 480 / vocoder.sample_rate
    result: dict = {"audio_seconds": audio_s, "prompt_seconds": n_prompt * 480 / vocoder.sample_rate}
    for n in steps:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            mel = flow(n)
            _sync(dev)
            times.append(time.perf_counter() - start)
        result[f"flow_{n}_steps_s_per_audio_s"] = round(statistics.median(times) / audio_s, 4)
        log.info("flow %d steps: %.3f s for %.2f s of audio", n, statistics.median(times), audio_s)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        vocoder.hift.inference(mel, generator=generator)
        _sync(dev)
        times.append(time.perf_counter() - start)
    result["hift_s_per_audio_s"] = round(statistics.median(times) / audio_s, 4)
    log.info("hift: %.3f s for %.2f s of audio", statistics.median(times), audio_s)
    return result


def real_size_vocoder(device: torch.device, dtype: torch.dtype) -> Vocoder:
    """Real-size flow + HiFT with random weights (torch's default initialisers, seed 0)."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow, hift, mel_conf = build_networks(render_cosyvoice_yaml(REAL_SIZES), "cpu")
    fold_weight_norm(hift)
    flow.to(device, dtype)
    hift.to(device, dtype)
    n_params = sum(p.numel() for p in flow.parameters()) + sum(p.numel() for p in hift.parameters())
    log.info(
        "real-size networks built (%.1f M parameters) in %.1f s", n_params / 1e6, time.perf_counter() - start
    )
    return Vocoder(flow, hift, mel_conf, None, device, dtype, "real-size-random", None)


def resolve_model(model_dir: Path | None, scratch: Path) -> tuple[Path, str]:
    """The CosyVoice folder to measure and what it is ("given" or "demo")."""
    for root in [model_dir] if model_dir else [Path("checkpoints")]:
        for candidate in (root / SUBDIR, root):
            if (candidate / COSYVOICE_CONFIG_FILE).is_file():
                return candidate, "given"
    if model_dir:
        raise FileNotFoundError(f"no {COSYVOICE_CONFIG_FILE} under {model_dir} or {model_dir / SUBDIR}")
    from demo import write_demo_models

    write_demo_models(scratch, ("vocoder",))
    return scratch / SUBDIR, "demo"


def run(args: argparse.Namespace) -> dict:
    steps = [int(s) for s in str(args.steps).split(",") if s.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = vocoder_dtype(device, args.dtype)  # as Vocoder.load
    result: dict = {
        "stage": "vocoder",
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "steps": steps,
    }
    start = time.perf_counter()
    if not args.skip_real:
        result["real_size_random_weights"] = time_decode(real_size_vocoder(device, dtype), args, steps)
    with tempfile.TemporaryDirectory() as scratch:
        folder, kind = resolve_model(args.model_dir, Path(scratch))
        vocoder = Vocoder.load(folder, device=str(device), dtype=args.dtype)
        measured = time_decode(vocoder, args, steps)
        if vocoder.speaker is not None:
            sr = 16000
            t = np.arange(int(5 * sr)) / sr
            clip = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(
                np.float32
            )
            vocoder.prompt_features(clip[:sr], sr)  # warm-up
            begin = time.perf_counter()
            vocoder.prompt_features(clip, sr)
            measured["prompt_features_s_per_audio_s"] = round((time.perf_counter() - begin) / 5.0, 4)
        result[f"{kind}_model"] = {"path": str(folder), **measured}
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    return result
