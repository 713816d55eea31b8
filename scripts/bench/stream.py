"""Streaming vs whole-chunk synthesis: time to first audio and total time, short and long text.

    python scripts/benchmark.py stream --json out.json [--real-scale] [--device cuda]

In one run, for a short sentence and for a long text (2,000 characters by default), the same
request (same voice, seed and therefore the same LLM tokens) is made twice: streaming (the
streaming vocoder, audio in pieces while the LLM samples) and non-streaming (each text chunk
vocoded whole, the reference's path). Reported per text: ``ttfa_s`` and ``total_s`` (streaming),
``nonstream_total_s``, ``nonstream_ttfa_s``, ``chunks``; for the long text also ``overhead`` =
streaming total / non-streaming total. Targets on CPU: long-text TTFA <= 10 % of its total, overhead
<= 1.15. The voice is encoded and the kernels warmed first, so TTFA is that of a cached voice.

Models: the demo models (tiny, CPU-friendly) unless --model-dir; with --real-scale, random weights
in the real networks' shapes are written to a temporary folder: the real-size vocoder and a
Step1 LLM of the real width with --llm-layers layers (32 is the real depth; fewer keep a CPU run
short). The demo LLM's logit bias makes random weights emit audio tokens; --max-new-tokens caps
each chunk's LLM pass so both runs do the same, bounded work.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench.stream")

SHORT_TEXT = "Hello, this is a short sentence to measure the first audio."
SENTENCES = (
    "The morning train left the station a little after seven.",
    "Nobody on board expected the weather to change so quickly.",
    "By noon the hills were white, and the river had turned to glass.",
    "A child in the third carriage counted the telegraph poles out loud.",
    "Her grandfather pretended to lose count, just to hear her start again.",
    "Somewhere past the old mill, the conductor announced a long delay.",
)


def long_text(chars: int) -> str:
    """Varied English sentences, about ``chars`` characters in all (a deterministic text)."""
    out: list[str] = []
    while sum(len(s) + 1 for s in out) < chars:
        out.append(SENTENCES[len(out) % len(SENTENCES)])
    return " ".join(out)[:chars].rsplit(" ", 1)[0] + "."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--long-chars", type=int, default=2000, help="length of the long text")
    parser.add_argument("--chunk-chars", type=int, default=200, help="text per LLM pass (--chunk-chars)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--device", default="auto")
    add_scale_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="a 600-character long text")


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-new-tokens, --real-scale and --llm-layers (this stage's and ``ttfa``'s)."""
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="cap per chunk's LLM pass (default: 150 on demo/real-scale random weights)",
    )
    parser.add_argument(
        "--real-scale",
        action="store_true",
        help="real-size vocoder and real-width LLM layers with random weights",
    )
    parser.add_argument("--llm-layers", type=int, default=2, help="--real-scale: LLM depth (real: 32)")


def write_real_scale(root: Path, llm_layers: int, tokenizer: bool = True) -> Path:
    """Random weights in the real shapes (vocoder, LLM with ``llm_layers`` layers) under ``root``;
    with ``tokenizer`` the demo tokenizer too (it only encodes the reference, and needs FunASR)."""
    from demo import write_demo_models
    from demo.llm_assets import REAL_SHAPES
    from demo.llm_assets import write as write_llm
    from demo.vocoder_assets import write as write_vocoder
    from models.cosyvoice_config import REAL_SIZES

    if tokenizer:
        write_demo_models(root, ("tokenizer",))
    write_llm(root, 0, {**REAL_SHAPES, "num_hidden_layers": llm_layers})
    write_vocoder(root, 0, REAL_SIZES)
    return root


def _measure(engine, audio, sr: int, text: str, options) -> dict:
    from synthesis import CloneRequest

    out = {}
    for stream in (True, False):
        request = CloneRequest(audio, sr, "a voice for the benchmark", text, _with(options, stream=stream))
        t0 = time.perf_counter()
        result = engine.clone(request)
        wall = time.perf_counter() - t0
        report = result.report
        key = "" if stream else "nonstream_"
        out[f"{key}ttfa_s"] = round(report.ttfa_s, 4)
        out[f"{key}total_s"] = round(wall, 4)
        out[f"{key}audio_s"] = round(report.audio_s, 3)
        out[f"{key}llm_s"] = round(report.llm_s, 4)
        out[f"{key}vocoder_s"] = round(report.vocoder_s, 4)
        out["chunks"] = len(report.chunks)
        out[f"{key}tokens"] = len(result.audio_tokens)
    out["same_tokens"] = out["tokens"] == out["nonstream_tokens"]
    out["ttfa_share"] = round(out["ttfa_s"] / out["total_s"], 4) if out["total_s"] else None
    return out


def _with(options, **changes):
    from dataclasses import replace

    return replace(options, **changes)


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    from demo import write_demo_models
    from demo.examples import synthetic_voice
    from engine import CloneEngine
    from model_layout import has_real_models, locate_models
    from synthesis import CloneRequest, EngineConfig, SynthesisOptions

    long_chars = 600 if args.quick else args.long_chars
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as scratch:
        scratch = Path(scratch)
        if args.real_scale:
            root, kind = write_real_scale(scratch / "models", args.llm_layers), "real-scale"
        elif args.model_dir is not None or has_real_models(Path("checkpoints")):
            root = locate_models(args.model_dir or Path("checkpoints")).path
            kind = "real"
        else:
            root, kind = locate_models(scratch / "none", scratch / "demo", write_demo_models).path, "demo"
        engine = CloneEngine.load(
            root, EngineConfig(device=args.device, chunk_chars=args.chunk_chars), cache_dir=scratch / "cache"
        )
        sr = 24000
        audio = np.asarray(synthetic_voice(10.0, sr, f0=120.0, seed=1))
        cap = args.max_new_tokens or (None if kind == "real" else 150)
        options = SynthesisOptions(seed=args.seed, max_new_tokens=cap)
        engine.clone(
            CloneRequest(audio, sr, "a voice for the benchmark", "Warm up.", _with(options, stream=True))
        )  # encodes the voice, warms every kernel
        engine.clone(CloneRequest(audio, sr, "a voice for the benchmark", "Warm up.", options))
        short = _measure(engine, audio, sr, SHORT_TEXT, options)
        long = _measure(engine, audio, sr, long_text(long_chars), options)
        device = engine.status()["device"]
    long["overhead"] = round(long["total_s"] / long["nonstream_total_s"], 4)
    result = {
        "models": kind,
        "device": device,
        "llm_layers": args.llm_layers if args.real_scale else None,
        "chunk_chars": args.chunk_chars,
        "max_new_tokens_per_chunk": cap,
        "short": {**short, "chars": len(SHORT_TEXT)},
        "long": {**long, "chars": long_chars},
        "overhead": long["overhead"],
        "targets": {
            "long_ttfa_share_max": 0.10,
            "overhead_max": 1.15,
            "long_ttfa_share_met": long["ttfa_share"] is not None and long["ttfa_share"] <= 0.10,
            "overhead_met": long["overhead"] <= 1.15,
        },
    }
    log.info(
        "stream bench (%s): short TTFA %.3f s of %.3f s; long TTFA %.3f s of %.3f s (%d chunks), "
        "overhead %.3f",
        kind,
        short["ttfa_s"],
        short["total_s"],
        long["ttfa_s"],
        long["total_s"],
        long["chunks"],
        long["overhead"],
    )
    return result
