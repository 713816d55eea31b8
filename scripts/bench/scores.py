"""Scores: what checking an output costs next to making it (target: under 10 percent of the clone).

    python scripts/benchmark.py scores --model-dir DIR --json OUT [--seconds 8] [--quick]

Measures, in one run:

1. ``given_model``: clones on the models under --model-dir (the demo models when there are none),
   once with the scores and best_of 1, reporting the report's own ``score_s`` against ``total_s``
   (Paraformer transcript + CAM++ embedding per chunk, timed inside the clone).
2. ``real_shapes`` (skipped by --quick): the same per-output work at the real models' sizes with
   random weights, so no download is needed. Score side: the real-size streaming Paraformer
   (encoder 50 x 512, decoder 16 blocks, 8501 tokens) transcribing an output of ``--seconds`` s,
   plus the CAM++ embedding of the given model's speaker network (the real CAM++ has ~7 M
   parameters, small next to the Paraformer's ~220 M; the demo one is a toy). Clone side: the LLM
   at its real layer shapes (``--real-layers`` layers timed, extrapolated to 32 from the per-layer
   cost of a 1- and a 2-layer model) prefilling a clone prompt and decoding 41.7 audio tokens per
   second of output, plus the real-size flow (10 Euler steps) and HiFT. The LLM runs in the dtype the
   app uses on the device (float32 on CPU).

``score_share`` is score seconds over clone seconds for the same output length;
``score_share_bound_with_2_layer_llm`` puts only the measured 2-layer LLM in the clone (no
extrapolation), an upper bound of the share.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench.scores")

DEFAULT_TEXT = (
    "The quick brown fox jumps over the lazy dog. A second sentence follows, so the long "
    "text is spoken in two chunks and scored chunk by chunk."
)
AUDIO_TOKENS_PER_SECOND = 25 * 5 / 3  # mixed tokens: 3 frames of 25 Hz per 5-token group
REFERENCE_SECONDS = 10.0  # the reference clip of the real-shape clone prompt
FULL_LAYERS = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=8.0, help="output length for the real-shape figures")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="target text of the given-model clones")
    parser.add_argument("--repeats", type=int, default=2, help="clones on the given model (median reported)")
    parser.add_argument("--decode-tokens", type=int, default=16, help="decode steps timed per real-shape LLM")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="only the given model (no real-shape figures)")


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_scores_") as scratch:
        scratch = Path(scratch)
        engine, root = _engine(args, scratch)
        result: dict = {
            "models": "demo" if root.demo else "real",
            "device": engine.status()["device"],
            "given_model": _given_model(engine, args),
        }
        if not args.quick:
            result["real_shapes"] = _real_shapes(engine, args, scratch)
    log.info("scores bench: %s", {k: v.get("score_share") for k, v in result.items() if isinstance(v, dict)})
    return result


def _engine(args: argparse.Namespace, scratch: Path):
    from demo import write_demo_models
    from engine import CloneEngine
    from model_layout import has_real_models, locate_models
    from synthesis import EngineConfig

    model_dir = args.model_dir or Path("checkpoints")
    if args.model_dir is None and not has_real_models(model_dir):
        root = locate_models(scratch / "none", scratch / "demo_models", write_demo_models)
    else:
        root = locate_models(model_dir)
    engine = CloneEngine.load(
        root.path, EngineConfig(device=args.device, max_reference_seconds=60.0), cache_dir=scratch / "cache"
    )
    return engine, root


def _given_model(engine, args: argparse.Namespace) -> dict:
    """Clones with scores on the loaded models; the report times the scores inside each clone."""
    from demo.examples import synthetic_voice
    from synthesis import CloneRequest, SynthesisOptions

    sr = 24000
    reference = synthetic_voice(5.0, sr, f0=130.0, seed=0)
    max_length = 1024 if engine.demo else 8192
    request = CloneRequest(
        reference,
        sr,
        "a calm test voice",
        args.text,
        SynthesisOptions(seed=0, max_length=max_length, chunk_chars=80),
    )
    engine.clone(request)  # warm-up: first-call costs and the prompt cache
    reports = [engine.clone(request).report for _ in range(max(1, args.repeats))]
    total = statistics.median(r.total_s for r in reports)
    score = statistics.median(r.score_s for r in reports)
    audio = statistics.median(r.audio_s for r in reports)
    return {
        "chunks": len(reports[0].chunks),
        "audio_s": round(audio, 3),
        "total_s": round(total, 4),
        "score_s": round(score, 4),
        "score_s_per_audio_s": round(score / audio, 4) if audio else None,
        "score_share": round(score / total, 4) if total else None,
        "similarity": reports[0].similarity,
        "error_rate": reports[0].error_rate,
    }


def _median_s(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _real_shapes(engine, args: argparse.Namespace, scratch: Path) -> dict:
    seconds = float(args.seconds)
    score = _real_score(engine, seconds, scratch)
    llm = _real_llm(engine, args, seconds, scratch)
    vocoder = _real_vocoder(args, seconds)
    clone_s = llm["estimated_32_layer_s"] + vocoder["s"]
    two_layer_clone_s = llm["two_layer_s"] + vocoder["s"]  # no extrapolation: a clone can only cost more
    score_s = score["paraformer_s"] + score["speaker_s"]
    return {
        "output_seconds": seconds,
        "score": score,
        "llm": llm,
        "vocoder": vocoder,
        "clone_s": round(clone_s, 3),
        "score_s": round(score_s, 3),
        "score_share": round(score_s / clone_s, 4),
        "score_share_bound_with_2_layer_llm": round(score_s / two_layer_clone_s, 4),
    }


def _real_score(engine, seconds: float, scratch: Path) -> dict:
    """The real-size Paraformer transcribing an output, and the speaker embedding of it."""
    from audio_prep import prepare_for_tokenizer, prompt_prelude
    from demo.examples import synthetic_voice
    from demo.tokenizer_assets import REAL_PARAFORMER, TINY_SEMANTIC, write_tokenizer
    from model_layout import CENTROIDS_FILE, PARAFORMER_SUBDIR
    from models.vq02 import Vq02Tokenizer
    from scoring import OutputScorer

    folder = scratch / "real_paraformer"
    start = time.perf_counter()
    write_tokenizer(folder, REAL_PARAFORMER, TINY_SEMANTIC, seed=0)
    vq02 = Vq02Tokenizer(folder / PARAFORMER_SUBDIR, folder / CENTROIDS_FILE, engine.tokenizer.device)
    built_s = time.perf_counter() - start
    parameters = sum(p.numel() for p in vq02.model.parameters())
    sr = 24000
    output = synthetic_voice(seconds, sr, f0=140.0, seed=1)
    scorer = OutputScorer(vq02, engine.vocoder.speaker)
    scorer.transcribe(output[:sr], sr)  # warm-up
    paraformer_s = _median_s(lambda: scorer.transcribe(output, sr))
    transcript = scorer.transcribe(output, sr)  # random weights: its length says how busy the decoder was
    clip = prepare_for_tokenizer(prompt_prelude(output, sr), sr)
    encode_s = _median_s(lambda: vq02.encode(clip))  # the codes alone: what transcription adds on top
    speaker_s = _median_s(lambda: scorer.speaker_embedding(output, sr))
    log.info(
        "real-size Paraformer (%.0f M parameters): transcript of %.1f s in %.3f s; speaker %.3f s",
        parameters / 1e6,
        seconds,
        paraformer_s,
        speaker_s,
    )
    return {
        "paraformer_parameters_m": round(parameters / 1e6, 1),
        "built_s": round(built_s, 1),
        "paraformer_s": round(paraformer_s, 4),
        "paraformer_encoder_only_s": round(encode_s, 4),
        "transcript_chars": len(transcript),
        "speaker_s": round(speaker_s, 4),
        "speaker_model": "demo toy CAM++" if engine.demo else "the given CAM++",
    }


def _real_llm(engine, args: argparse.Namespace, seconds: float, scratch: Path) -> dict:
    """Prefill of a clone prompt and per-token decode at the real layer shapes, 1 and 2 layers,
    extrapolated to 32 layers; the clone's LLM time for ``seconds`` of output."""
    import torch

    from models.audio_tokens import token_str
    from models.llm import Step1LLM
    from models.prompts import build_clone_prompt
    from scripts.bench.llm import time_prefill_decode, write_real_shape_model

    llm_dir = engine.llm(None).model_dir
    groups = round(REFERENCE_SECONDS * AUDIO_TOKENS_PER_SECOND / 5)
    codes = [c for g in range(groups) for c in (g % 1024, (7 * g) % 1024, 1024 + g, 2048 + g, 3072 + g)]
    timings = {}
    for layers in (1, 2):
        folder = scratch / f"real_llm_{layers}"
        write_real_shape_model(folder, layers)
        (folder / "tokenizer.model").write_bytes((Path(llm_dir) / "tokenizer.model").read_bytes())
        llm = Step1LLM.load(folder, device=args.device)
        prompt = build_clone_prompt(
            llm.tokenizer, "This is the reference sentence.", token_str(codes), args.text
        )
        timed = time_prefill_decode(llm, prompt, args.decode_tokens, repeats=1)
        timings[layers] = (
            timed["prefill_s"],
            1.0 / timed["decode_tokens_per_s"],
            len(prompt),
            str(llm.model.dtype).replace("torch.", ""),
        )
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    (p1, d1, prompt_tokens, dtype), (p2, d2, _, _) = timings[1], timings[2]
    prefill = p1 + max(p2 - p1, 0.0) * (FULL_LAYERS - 1)
    per_token = d1 + max(d2 - d1, 0.0) * (FULL_LAYERS - 1)
    tokens = seconds * AUDIO_TOKENS_PER_SECOND
    total = prefill + tokens * per_token
    two_layer = p2 + tokens * d2
    log.info(
        "real-shape LLM (%s): prefill %d tokens %.2f s, %.3f s per token at 32 layers -> %.1f s for "
        "%.0f tokens",
        dtype,
        prompt_tokens,
        prefill,
        per_token,
        total,
        tokens,
    )
    return {
        "dtype": dtype,
        "prompt_tokens": prompt_tokens,
        "new_tokens": round(tokens),
        "measured": {
            str(k): {"prefill_s": round(v[0], 4), "decode_s_per_token": round(v[1], 5)}
            for k, v in timings.items()
        },
        "estimated_32_layer_prefill_s": round(prefill, 3),
        "estimated_32_layer_decode_s_per_token": round(per_token, 5),
        "estimated_32_layer_s": round(total, 3),
        "two_layer_s": round(two_layer, 3),
    }


def _real_vocoder(args: argparse.Namespace, seconds: float) -> dict:
    """Real-size flow (10 steps) + HiFT decoding ``seconds`` of output after a 10 s prompt."""
    from models.device import pick_device
    from models.vocoder import vocoder_dtype
    from scripts.bench.vocoder import real_size_vocoder, time_decode

    device = pick_device(args.device)
    vocoder = real_size_vocoder(device, vocoder_dtype(device, "auto"))
    timing_args = argparse.Namespace(seconds=seconds, prompt_seconds=REFERENCE_SECONDS, repeats=1)
    timed = time_decode(vocoder, timing_args, [10])
    per_audio_s = timed["flow_10_steps_s_per_audio_s"] + timed["hift_s_per_audio_s"]
    return {
        "flow_10_steps_s_per_audio_s": timed["flow_10_steps_s_per_audio_s"],
        "hift_s_per_audio_s": timed["hift_s_per_audio_s"],
        "s": round(per_audio_s * timed["audio_seconds"], 3),
        "audio_seconds": round(timed["audio_seconds"], 3),
    }
