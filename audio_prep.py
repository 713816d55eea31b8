"""Reference-audio preparation shared by every stage: the prelude, the tokenizer's prep, validation.

Audio constants are named once here. Functions take numpy arrays (float32, samples) and return
arrays; the steps follow upstream tts.py / tokenizer.py / utils.py exactly, because the tokenizer's
codes shift with every sample. Reading files is ``audio_read.py``; resampling ``audio_resample.py``.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from audio_read import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from audio_resample import resample
from errors import AudioInputError
from lru import LRU

TOKENIZER_SAMPLE_RATE = 16000  # Hz, both tokenizer streams
SPEAKER_SAMPLE_RATE = TOKENIZER_SAMPLE_RATE  # Hz, the CAM++ speaker model's fbank reads 16 kHz too
VOCODER_SAMPLE_RATE = 24000  # Hz, the vocoder's output and its prompt mel

PROMPT_PEAK = 0.6  # the prelude scales a louder prompt down to this peak (upstream preprocess_prompt_wav)
ENERGY_NORM_PEAK = 0.999  # prep scales the 16 kHz clip to this peak ...
ENERGY_NORM_FLOOR = 0.01  # ... dividing by at least this, so near-silence is not blown up
TRIM_TOP_DB = 20  # librosa.effects.trim threshold below the clip's peak RMS
TRIM_FRAME_LENGTH = 512  # samples at 16 kHz, the RMS window of the trim
TRIM_HOP_LENGTH = 128
TRIM_KEEP_LEFT_SECONDS = 0.05  # silence kept before the first speech frame
TRIM_KEEP_RIGHT_SECONDS = 0.22  # and after the last one
TRIM_QUANTUM = 240  # samples; the kept speech span is rounded up to a multiple of this
MIN_SPEECH_SECONDS = 0.5  # validate_reference: shorter speech makes no usable voice prompt
SILENCE_PEAK = 1e-4  # a clip whose peak stays under this is treated as silent (about -80 dBFS)


def prompt_prelude(audio: np.ndarray, sr: int) -> np.ndarray:
    """Mono mean over channels, then scale down to peak 0.6 if louder (upstream ``preprocess_prompt_wav``).

    ``audio`` is (samples,) or (channels, samples) at ``sr`` Hz; returns float32 (samples,).
    ``sr`` is not used by the math; it is part of the signature so every step names its rate.
    """
    del sr
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(audio, dtype=np.float32)))
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise AudioInputError(
            f"expected audio of shape (samples,) or (channels, samples), got {tuple(x.shape)}"
        )
    if x.shape[0] > 1:
        x = x.mean(dim=0, keepdim=True)
    if x.shape[1] == 0:
        return np.zeros(0, dtype=np.float32)
    peak = x.abs().max()
    if peak > PROMPT_PEAK:
        x = x / peak * PROMPT_PEAK
    return x[0].numpy()


def energy_norm(audio: np.ndarray) -> np.ndarray:
    """``x / max(peak, 0.01) * 0.999`` in float32, as upstream ``energy_norm_fn`` on a tensor."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    peak = x.abs().max() if x.numel() else torch.tensor(0.0)
    return (x / max(peak, ENERGY_NORM_FLOOR) * ENERGY_NORM_PEAK).numpy()


def speech_span(audio_16k: np.ndarray) -> tuple[int, int]:
    """(start, end) sample indices of the non-silent part: ``librosa.effects.trim`` at top_db 20."""
    import librosa  # slow to import; only the tokenizer path needs it

    _, index = librosa.effects.trim(
        audio_16k, top_db=TRIM_TOP_DB, frame_length=TRIM_FRAME_LENGTH, hop_length=TRIM_HOP_LENGTH
    )
    return int(index[0]), int(index[1])


def trim_silence(audio_16k: np.ndarray, span: tuple[int, int] | None = None) -> np.ndarray:
    """Keep the speech span plus 0.05 s before and 0.22 s after, zero-padding where the clip ends.

    The output length is ``ceil((end - start) / 240) * 240 + 4320`` samples (upstream ``trim_silence``):
    the codes shift with every sample, so this reproduces the reference indices exactly.
    """
    start, end = speech_span(audio_16k) if span is None else span
    keep_left = int(TRIM_KEEP_LEFT_SECONDS * TOKENIZER_SAMPLE_RATE)
    n_quanta = math.ceil((end - start) / TRIM_QUANTUM)
    out_len = int(
        n_quanta * TRIM_QUANTUM + (TRIM_KEEP_LEFT_SECONDS + TRIM_KEEP_RIGHT_SECONDS) * TOKENIZER_SAMPLE_RATE
    )
    first = start - keep_left
    # upstream slices when first > 0 and left-pads by -first otherwise (a no-op at 0)
    x = audio_16k[first:] if first > 0 else np.pad(audio_16k, (-first, 0))
    if out_len < len(x):
        return np.ascontiguousarray(x[:out_len])
    return np.pad(x, (0, out_len - len(x)))


def prepare_for_tokenizer(mono: np.ndarray, sr: int) -> np.ndarray:
    """Resample to 16 kHz, energy-normalise and trim silence: the clip both token streams read.

    ``mono`` is float32 (samples,) at ``sr`` Hz (any rate: upstream asserts sr > 16 kHz, we do not).
    Returns float32 (L,) at 16 kHz with L a multiple of 240.
    """
    x = resample(np.asarray(mono, dtype=np.float32), int(sr), TOKENIZER_SAMPLE_RATE)
    return trim_silence(energy_norm(x))


def validate_reference(
    audio: np.ndarray,
    sr: int,
    max_seconds: float | None = None,
    min_speech_seconds: float = MIN_SPEECH_SECONDS,
) -> None:
    """Raise AudioInputError if ``audio`` ((samples,) or (channels, samples), ``sr`` Hz) is no usable prompt.

    Checks, in order: shape and rate, emptiness, NaN/inf samples, digital silence, total length above
    ``max_seconds``, and speech (after the tokenizer's silence trim) shorter than ``min_speech_seconds``.
    """
    check_samples(audio, sr, max_seconds)
    speech_s = speech_seconds(audio, sr)
    if speech_s < min_speech_seconds:
        raise AudioInputError(
            f"the reference holds only {speech_s:.2f} s of speech after trimming silence; "
            f"use a clip with at least {min_speech_seconds:.1f} s of clear speech (3-10 s works best)"
        )


_SPEECH_MEMO: LRU[bytes, float] = LRU(32)  # validating the same upload again costs a hash


def speech_seconds(audio: np.ndarray, sr: int) -> float:
    """Seconds of speech the tokenizer's trim keeps of ``audio`` ((samples,) or (channels, samples))."""
    raw = np.ascontiguousarray(audio, dtype=np.float32)
    key = hashlib.sha256(f"{raw.shape}:{int(sr)}:".encode() + memoryview(raw).cast("B")).digest()
    seconds = _SPEECH_MEMO.get(key)
    if seconds is not None:
        return seconds
    x = energy_norm(resample(prompt_prelude(raw, sr), int(sr), TOKENIZER_SAMPLE_RATE))
    start, end = speech_span(x)
    seconds = (end - start) / TOKENIZER_SAMPLE_RATE
    _SPEECH_MEMO.put(key, seconds)
    return seconds


def check_samples(audio: np.ndarray, sr: int, max_seconds: float | None = None) -> None:
    """Cheap checks (no resampling): rate (1-384 kHz), shape, empty, NaN/inf, silence, length."""
    if not isinstance(sr, int | np.integer) or sr <= 0:
        raise AudioInputError(f"sample rate must be a positive integer in Hz, got {sr!r}")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioInputError(
            f"the sample rate is {sr} Hz; rates from {MIN_SAMPLE_RATE // 1000} to "
            f"{MAX_SAMPLE_RATE // 1000} kHz work (export it at 16, 24, 44.1 or 48 kHz)"
        )
    a = np.asarray(audio)
    if a.ndim not in (1, 2):
        raise AudioInputError(f"expected audio of shape (samples,) or (channels, samples), got {a.shape}")
    if a.size == 0 or a.shape[-1] == 0:
        raise AudioInputError("the reference audio is empty; record or upload a clip of a few seconds")
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise AudioInputError(f"audio samples must be numbers, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise AudioInputError(
            "the reference audio contains NaN or infinite samples; the file is damaged, "
            "re-export it or record again"
        )
    if float(np.abs(a).max()) < SILENCE_PEAK:
        raise AudioInputError(
            "the reference audio is silent (all samples are (near) zero); check the "
            "microphone or upload a clip with speech"
        )
    seconds = a.shape[-1] / float(sr)
    if max_seconds is not None and seconds > max_seconds:
        raise AudioInputError(
            f"the reference audio is {seconds:.1f} s long; the limit is {max_seconds:g} s, "
            "cut it to a few seconds of clean speech"
        )
