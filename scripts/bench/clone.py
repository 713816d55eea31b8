"""Whole clone, cold versus cached prompt, stage by stage, in one run.

    python scripts/benchmark.py clone --model-dir DIR --json OUT [--reference clip.wav] [--repeats 3]

The engine is loaded once with an empty, temporary prompt cache. The first clone of the reference is
cold (tokenizer encode + vocoder prompt features); the next ``--repeats`` clones of the same voice,
text and seed are cache hits whose LLM and vocoder work is identical (same seed), so the difference
is the prompt stage alone. Without --model-dir the real models in ./checkpoints are used when
complete, else the demo models are built in a temporary folder (figures then say "demo").
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench.clone")

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog, and then it takes a well deserved nap."
STAGES = ("prep_s", "tokenizer_s", "vocoder_prompt_s", "llm_s", "vocoder_s", "total_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="reference clip (default: a 10 s espeak-ng or synthetic voice)",
    )
    parser.add_argument("--reference-text", default=None, help="what the clip says (default: its known text)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="target text to speak")
    parser.add_argument("--repeats", type=int, default=3, help="cached clones after the cold one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="LLM total length cap (default: 8192; 1024 on demo models, which rarely stop)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variant", default="base")
    parser.add_argument("--quick", action="store_true", help="one cached repeat, a 5 s reference")


def _reference(args: argparse.Namespace, scratch: Path):
    """(audio (channels, samples), rate, text) of the reference clip to clone."""
    import numpy as np

    from audio_read import load_audio
    from demo.examples import VOICES, espeak_available, synthetic_voice

    if args.reference is not None:
        audio, sr = load_audio(args.reference)
        return audio, sr, args.reference_text or ""
    seconds = 5.0 if args.quick else 10.0
    if espeak_available():
        import subprocess

        voice = VOICES[0]
        words = (voice.reference_text + " ") * 3
        path = scratch / "reference.wav"
        subprocess.run(
            [
                "espeak-ng",
                "-v",
                voice.espeak_voice,
                "-s",
                str(voice.words_per_minute),
                "-w",
                str(path),
                words,
            ],
            check=True,
            capture_output=True,
        )
        audio, sr = load_audio(path)
        return audio[:, : int(seconds * sr)], sr, args.reference_text or voice.reference_text
    sr = 24000
    return np.asarray(synthetic_voice(seconds, sr))[None], sr, args.reference_text or "synthetic voice"


def run(args: argparse.Namespace) -> dict:
    from demo import write_demo_models
    from engine import CloneEngine
    from model_layout import has_real_models, locate_models
    from synthesis import CloneRequest, EngineConfig, SynthesisOptions

    with tempfile.TemporaryDirectory(prefix="bench_clone_") as scratch:
        scratch = Path(scratch)
        model_dir = args.model_dir or Path("checkpoints")
        if args.model_dir is None and not has_real_models(model_dir):
            root = locate_models(scratch / "none", scratch / "demo_models", write_demo_models)
        else:
            root = locate_models(model_dir)
        t0 = time.perf_counter()
        engine = CloneEngine.load(
            root.path,
            EngineConfig(variant=args.variant, device=args.device, max_reference_seconds=60.0),
            cache_dir=scratch / "cache",
        )
        load_s = time.perf_counter() - t0
        audio, sr, ref_text = _reference(args, scratch)
        max_length = args.max_length or (1024 if root.demo else 8192)
        options = SynthesisOptions(variant=args.variant, seed=args.seed, max_length=max_length)
        request = CloneRequest(audio, sr, ref_text, args.text, options)

        cold = engine.clone(request).report
        repeats = 1 if args.quick else max(1, args.repeats)
        cached = [engine.clone(request).report for _ in range(repeats)]

    def stages(report) -> dict:
        out = {name: round(getattr(report, name), 4) for name in STAGES}
        out.update(
            tokens_from=report.tokens_from,
            vocoder_prompt_cached=report.vocoder_prompt_cached,
            new_tokens=report.new_tokens,
            tokens_per_s=round(report.tokens_per_s, 1),
            audio_s=round(report.audio_s, 3),
            rtf=round(report.rtf, 3),
        )
        return out

    median = {name: round(statistics.median(getattr(r, name) for r in cached), 4) for name in STAGES}
    prompt_cold = cold.tokenizer_s + cold.vocoder_prompt_s
    prompt_hit = statistics.median(r.tokenizer_s + r.vocoder_prompt_s for r in cached)
    result = {
        "models": "demo" if root.demo else "real",
        "model_root": str(root.path),
        "device": engine.status()["device"],
        "variant": args.variant,
        "load_s": round(load_s, 2),
        "reference_seconds": round(audio.shape[-1] / sr, 2),
        "reference_sample_rate": sr,
        "text_chars": len(args.text),
        "cold": stages(cold),
        "cached": [stages(r) for r in cached],
        "cached_median": median,
        "prompt_stage_cold_s": round(prompt_cold, 4),
        "prompt_stage_hit_median_ms": round(prompt_hit * 1e3, 3),
        "prompt_stage_speedup": round(prompt_cold / prompt_hit, 1) if prompt_hit > 0 else None,
        "total_saved_s": round(cold.total_s - median["total_s"], 4),
        "same_generation": all(r.new_tokens == cold.new_tokens for r in cached),
    }
    log.info(
        "clone bench (%s models): cold prompt stage %.3f s, hit %.2f ms (x%s); total %.3f s -> %.3f s",
        result["models"],
        prompt_cold,
        prompt_hit * 1e3,
        result["prompt_stage_speedup"],
        cold.total_s,
        median["total_s"],
    )
    return result
