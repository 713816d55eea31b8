"""Vocoder streaming: stream-vs-non-stream distance with and without each sound-changing fix.

    python scripts/benchmark.py vocoder_stream --json OUT [--quick] [--device cuda]

For each seed: random mixed tokens (``--seconds`` of target, ``--prompt-seconds`` of prompt) and a
synthetic prompt clip (its log mel from models/mel.py, a random speaker embedding) go through the
REAL-size networks with random weights (built as scripts/bench/vocoder.py does; ``--weights model``
uses the --model-dir / ./checkpoints / demo model instead). The same request is decoded once
non-stream and streamed (one group of 5 tokens per call, then an empty last call) under each
``StreamOptions`` configuration, with the same seed.

Figures per configuration, averaged over the seeds:
- ``wave_log_mel_l1``: mean |log mel(stream waveform) - log mel(non-stream waveform)| with the
  vocoder's own mel frontend; ``_joins`` over the mel frames of the cross-faded joins only, and
  ``join_level`` the mean signed difference there minus the one elsewhere (the joins' gain, log).
- ``flow_mel_l1``: mean |stream flow mel - non-stream flow mel| (deterministic: no HiFT draws), also
  split into chunks before the first estimator cache cut (``_before_cut``, same noise positions
  in every configuration) and after it (``_after_cut``).
The HiFT source draws of stream and non-stream differ (per chunk vs per request), so the
waveform figures have a floor that no option removes: ``hift_redraw_floor`` is the same figure
for the non-stream mel vocoded twice with different draws. The flow figures have no such floor.

Cost: the flow dominates. Each configuration that changes the flow (reference, advancing_noise,
and each with recent_context) is one streamed run, except that a recent_context run is skipped
and reported identical to its twin when both cut rules keep the same estimator cache entries at
every cut a later chunk reads (checked on the twin's recorded cache positions; then the session
computes bitwise the same). unity_crossfade only changes the joins: rebuilt exactly from the same
run's HiFT output. The full settings (3 s prompt, 10 s target, 3 seeds, 10 steps) take well
under a minute on a GPU and over an hour on 2 busy CPU cores; ``--quick`` (1 seed, 3 s prompt,
5 s target, 2 Euler steps) took 3 min of CPU time there (4 min wall on a shared machine).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.device import pick_device
from models.mel import log_mel_spectrogram
from models.prompt_features import PromptFeatures
from models.vocoder import Vocoder, reshape_mixed_tokens, vocoder_dtype
from models.vocoder_stream import (
    REFERENCE_OPTIONS,
    SOURCE_CACHE_SAMPLES,
    CrossFade,
    StreamChunk,
    StreamOptions,
    estimator_cache_keep,
)
from scripts.bench.vocoder import mixed_tokens, real_size_vocoder, resolve_model

log = logging.getLogger("bench.vocoder_stream")

# Configurations that change the flow (each one streamed run); unity_crossfade is rebuilt from them.
FLOW_VARIANTS = {
    "reference": REFERENCE_OPTIONS,
    "recent_context": replace(REFERENCE_OPTIONS, recent_context=True),
    "advancing_noise": replace(REFERENCE_OPTIONS, advancing_noise=True),
    "recent_context+advancing_noise": replace(REFERENCE_OPTIONS, recent_context=True, advancing_noise=True),
}
# recent_context variant -> its twin without it
TWINS = {"recent_context": "reference", "recent_context+advancing_noise": "advancing_noise"}
QUICK = {"seeds": "0", "seconds": 5.0, "prompt_seconds": 3.0, "steps": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="target audio per request (s)")
    parser.add_argument("--prompt-seconds", type=float, default=3.0, help="prompt (reference) length (s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated request seeds")
    parser.add_argument("--steps", type=int, default=10, help="Euler steps of the flow")
    parser.add_argument(
        "--weights",
        choices=("random", "model"),
        default="random",
        help="random: real-size random weights; model: --model-dir, ./checkpoints or demo",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 seed, 3 s prompt, 5 s target, 2 Euler steps (~3 CPU-minutes on 2 cores)",
    )


def synthetic_prompt(vocoder: Vocoder, seconds: float, rng: np.random.Generator) -> PromptFeatures:
    """A voiced-like clip (harmonics of a gliding f0 with a syllable envelope) -> its log mel, and a
    random speaker embedding."""
    rate = vocoder.mel_conf.sampling_rate
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    clip = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) ** 2
    clip = (0.3 * clip / np.abs(clip).max() + 0.003 * rng.standard_normal(t.size)).astype(np.float32)
    mel = log_mel_spectrogram(clip, vocoder.mel_conf)[0].T.contiguous().numpy()
    return PromptFeatures(mel=mel, speaker_embedding=rng.standard_normal(192).astype(np.float32))


def stream_once(
    vocoder: Vocoder,
    tokens: list[int],
    prompt_tokens: list[int],
    prompt: PromptFeatures,
    steps: int,
    seed: int,
    options: StreamOptions,
) -> tuple[np.ndarray, list[StreamChunk], float]:
    """Stream ``tokens`` one group per call, then an empty last call: waveform, records (setup first),
    seconds."""
    records: list[StreamChunk] = []
    pieces: list[np.ndarray] = []
    start = time.perf_counter()
    with vocoder.stream(prompt_tokens, prompt, steps, seed, options, on_chunk=records.append) as session:
        for i in range(0, len(tokens), 5):
            piece = session.feed(tokens[i : i + 5])
            if piece is not None:
                pieces.append(piece)
        pieces.append(session.feed([], last=True))
    return np.concatenate(pieces), records, time.perf_counter() - start


def cut_rules_agree(records: list[StreamChunk], prompt_frames: int) -> bool:
    """Whether keeping the most recent frames keeps the same estimator cache entries as upstream's rule
    at every cut that a later chunk reads (records of a run, setup first)."""
    kept, position = records[0].kept_frames, prompt_frames
    for record in records[1:]:
        n_frames = record.mel.size(2)
        frames = torch.cat([torch.arange(position, position + n_frames), kept])
        position += n_frames
        if not record.last:
            upstream, recent = (estimator_cache_keep(frames, prompt_frames, rule) for rule in (False, True))
            if not torch.equal(*(frames if keep is None else frames[keep] for keep in (upstream, recent))):
                return False
        kept = record.kept_frames
    return True


def rejoin(chunks: list[StreamChunk], unity: bool) -> np.ndarray:
    """The session's waveform rebuilt from its HiFT outputs with another cross-fade (exact: the fade
    is the only thing ``unity_crossfade`` changes)."""
    fade = CrossFade(unity=unity)
    return np.concatenate([fade.join(c.hift_speech, c.last)[0].numpy() for c in chunks])


def wave_figures(
    vocoder: Vocoder, stream: np.ndarray, nonstream: np.ndarray, chunks: list[StreamChunk]
) -> dict:
    """Log-mel L1 of the two waveforms: all frames, join frames, and the joins' level offset."""
    conf, hop = vocoder.mel_conf, vocoder.mel_conf.hop_size
    diff = (log_mel_spectrogram(stream, conf) - log_mel_spectrogram(nonstream, conf))[0]
    frames = diff.size(1)
    joins = torch.zeros(frames, dtype=torch.bool)
    start = 0
    for k, chunk in enumerate(chunks):  # piece k (k >= 1) starts with the faded join
        if k:
            joins[start // hop : min(frames, (start + SOURCE_CACHE_SAMPLES) // hop)] = True
        start += chunk.audio.size
    per_frame = diff.mean(dim=0)
    return {
        "wave_log_mel_l1": float(diff.abs().mean()),
        "wave_log_mel_l1_joins": float(diff[:, joins].abs().mean()) if joins.any() else 0.0,
        "join_level": float(per_frame[joins].mean() - per_frame[~joins].mean()) if joins.any() else 0.0,
    }


def flow_figures(chunks: list[StreamChunk], nonstream_mel: torch.Tensor, prompt_frames: int) -> dict:
    """Flow mel L1 against the non-stream flow mel, before and after the first estimator cache cut."""
    stream_mel = torch.cat([c.mel for c in chunks], dim=2)
    diff = (stream_mel - nonstream_mel).abs()
    after = torch.zeros(diff.size(2), dtype=torch.bool)
    start, seen = 0, prompt_frames
    for chunk in chunks:
        n = chunk.mel.size(2)
        if chunk.estimator_frames - n < seen:  # it started from a cache holding fewer frames than came before
            after[start : start + n] = True
        start, seen = start + n, seen + n
    return {
        "flow_mel_l1": float(diff.mean()),
        "flow_mel_l1_before_cut": float(diff[:, :, ~after].mean()) if (~after).any() else 0.0,
        "flow_mel_l1_after_cut": float(diff[:, :, after].mean()) if after.any() else 0.0,
        "frames_after_cut": int(after.sum()),
    }


def measure_seed(vocoder: Vocoder, args: argparse.Namespace, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tokens, prompt_tokens = mixed_tokens(args.seconds, rng), mixed_tokens(args.prompt_seconds, rng)
    prompt = synthetic_prompt(vocoder, len(prompt_tokens) / 5 * 3 / 25, rng)
    start = time.perf_counter()
    prompt_token, prompt_mel, embedding = vocoder.prompt_inputs(prompt_tokens, prompt)
    noise, generator = vocoder.request_randomness(seed)
    token = torch.from_numpy(reshape_mixed_tokens(tokens))[None]
    nonstream, nonstream_mel, _ = vocoder.synthesize(
        token, prompt_token, prompt_mel, embedding, noise, args.steps, generator=generator
    )
    nonstream = nonstream[0].numpy()
    result: dict = {"seed": seed, "nonstream_s": round(time.perf_counter() - start, 2), "configs": {}}
    other = torch.Generator().manual_seed(seed + 1)
    redraw, _ = vocoder.hift.inference(nonstream_mel.to(vocoder.device), generator=other)
    conf = vocoder.mel_conf
    floor = log_mel_spectrogram(redraw[0].float().cpu().numpy(), conf) - log_mel_spectrogram(nonstream, conf)
    result["hift_redraw_floor"] = float(floor.abs().mean())
    waves: dict[str, np.ndarray] = {}
    runs: dict[str, tuple[np.ndarray, list[StreamChunk], float]] = {}
    for name, options in FLOW_VARIANTS.items():
        twin = TWINS.get(name)
        if twin in runs and cut_rules_agree(runs[twin][1], prompt_mel.size(1)):
            runs[name] = runs[twin]
            result.setdefault("identical_by_cut_check", []).append(f"{name} = {twin}")
            log.info("seed %d %s: same kept cache entries as %s at every cut; same run", seed, name, twin)
        else:
            runs[name] = stream_once(vocoder, tokens, prompt_tokens, prompt, args.steps, seed, options)
        wave, records, seconds = runs[name]
        chunks = [r for r in records if not r.setup]
        if wave.size != nonstream.size:
            raise RuntimeError(f"{name}: streamed {wave.size} samples, non-stream made {nonstream.size}")
        log.info("seed %d %s: %d chunks in %.1f s", seed, name, len(chunks), seconds)
        unity = name + "+unity_crossfade" if name != "reference" else "unity_crossfade"
        for variant, audio in ((name, wave), (unity, rejoin(chunks, True))):
            figures = {
                **wave_figures(vocoder, audio, nonstream, chunks),
                **flow_figures(chunks, nonstream_mel, prompt_mel.size(1)),
            }
            figures["stream_s"] = round(seconds, 2)
            result["configs"][variant] = figures
            waves[variant] = audio
    reference = waves["reference"]
    for variant, audio in waves.items():
        result["configs"][variant]["max_abs_vs_reference"] = float(np.abs(audio - reference).max())
    result["chunks"] = len(chunks)
    result["audio_seconds"] = nonstream.size / vocoder.sample_rate
    return result


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":  # measure the float32 networks, not TF32 rounding
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if args.weights == "random":
            vocoder, weights = real_size_vocoder(device, vocoder_dtype(device, "auto")), "real-size random"
        else:
            folder, kind = resolve_model(args.model_dir, Path(scratch))
            vocoder, weights = Vocoder.load(folder, device=str(device)), f"{kind} model {folder}"
        per_seed = [measure_seed(vocoder, args, seed) for seed in seeds]
    names = list(per_seed[0]["configs"])
    figures = [k for k in per_seed[0]["configs"]["reference"] if k not in ("stream_s",)]
    summary = {
        name: {k: round(statistics.mean(s["configs"][name][k] for s in per_seed), 5) for k in figures}
        for name in names
    }
    return {
        "stage": "vocoder_stream",
        "weights": weights,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "seeds": seeds,
        "steps": args.steps,
        "prompt_seconds": args.prompt_seconds,
        "target_seconds": round(per_seed[0]["audio_seconds"], 2),
        "chunks": per_seed[0]["chunks"],
        "hift_redraw_floor": round(statistics.mean(s["hift_redraw_floor"] for s in per_seed), 5),
        "mean_over_seeds": summary,
        "per_seed": per_seed,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
