"""Reference-audio preparation shared by every stage: loading, mono, resampling, trimming, validation.

Audio constants are named once here. Functions take numpy arrays (float32, samples) and return
arrays. The resampler reproduces ``torchaudio.functional.resample`` (windowed sinc, Hann window,
lowpass_filter_width 6, rolloff 0.99) because the tokenizer's codes are sensitive to it:
soxr or librosa's default resampler flips 10-16 % of the vq02 codes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import torch

from errors import AudioInputError
from lru import LRU

log = logging.getLogger(__name__)

TOKENIZER_SAMPLE_RATE = 16000  # Hz, both tokenizer streams
SPEAKER_SAMPLE_RATE = TOKENIZER_SAMPLE_RATE  # Hz, the CAM++ speaker model's fbank reads 16 kHz too
VOCODER_SAMPLE_RATE = 24000  # Hz, the vocoder's output and its prompt mel

SINC_WIDTH = 6  # lowpass_filter_width of torchaudio's default Resample
SINC_ROLLOFF = 0.99
# torchaudio's polyphase kernel has shape (new, 2*width + orig) for the gcd-reduced rates: fine for the
# common rates (44.1 kHz -> 16 kHz is 160 x 475), but 16001 Hz -> 16 kHz makes it 16000 x 16015 (10 GB
# to build). Past these bounds the same windowed sinc is evaluated per output phase over only the
# 2*width + 1 input samples it can reach (the rest of each kernel row is exactly zero in float32).
POLYPHASE_MAX_TAPS = 1024  # 2*width + orig; the common pairs to and from 16/24 kHz stay under ~720
POLYPHASE_MAX_KERNEL_BYTES = 4 << 20  # new * (2*width + orig) float32
KERNEL_CACHE_BYTES = 64 << 20  # every cached kernel together (a phase kernel is at most ~19 MB up to 384 kHz)
RESAMPLE_BLOCK_ELEMENTS = 1 << 20  # float32 elements per working buffer of the phase-wise path (4 MB)

_KERNELS: LRU[tuple[str, int, int], torch.Tensor] = LRU(64, max_bytes=KERNEL_CACHE_BYTES,
                                                        size_of=lambda kernel: kernel.nbytes)


def _kernel_geometry(orig: int, new: int) -> tuple[float, int]:
    """(cutoff ``base`` in reduced-rate units, half-width in input samples), as torchaudio computes them."""
    base = min(orig, new) * SINC_ROLLOFF
    return base, math.ceil(SINC_WIDTH * orig / base)


def _windowed_sinc(t: torch.Tensor, base: float, orig: int) -> torch.Tensor:
    """torchaudio's Hann-windowed sinc at offsets ``t`` (float64, in input periods of the reduced rate).

    Each element is ``sinc(t * base) * hann(t * base) * base / orig`` with the argument clamped to
    +-6 zero crossings; the operations and their order are torchaudio's, so both resampling paths
    build the same float64 weights.
    """
    t = (t * base).clamp_(-SINC_WIDTH, SINC_WIDTH)
    window = (t * math.pi).div_(SINC_WIDTH).div_(2).cos_().pow_(2)  # in place: same values, fewer buffers
    t.mul_(math.pi)
    kernel = torch.sin(t).div_(t).masked_fill_(t == 0, 1.0)
    return kernel.mul_(window).mul_(base / orig)


def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Polyphase kernel of shape (new, 1, 2*width + orig) float32 for rates already divided by gcd.

    Built in float64 and cast to float32, as torchaudio's ``Resample`` transform builds it; cached
    (by bytes, with the phase kernels) because the conformance-critical rates repeat.
    """
    base, width = _kernel_geometry(orig, new)
    key = ("polyphase", orig, new)
    kernel = _KERNELS.get(key)
    if kernel is None:
        idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
        # torchaudio divides an integer arange here, which yields float32 before the float64 sum
        t = torch.arange(0, -new, -1)[:, None, None] / new + idx
        kernel = _windowed_sinc(t, base, orig).to(torch.float32)
        _KERNELS.put(key, kernel)
    return kernel, width


def _phase_weights(orig: int, new: int, first: int, last: int) -> torch.Tensor:
    """Weights of output phases ``first`` .. ``last - 1``: float32 (last - first, 2*width + 1).

    Row k weighs input samples ``floor(k * orig / new) - width`` ... ``+ width`` of period 0 (input
    sample n, output sample k): the same float64 values torchaudio's kernel holds at those taps.
    """
    base, width = _kernel_geometry(orig, new)
    k = torch.arange(first, last)
    rel = ((k * orig) // new - width)[:, None] + torch.arange(2 * width + 1)
    # -k / new in float32, as torchaudio's ``arange(0, -new, -1) / new``, then the float64 sum
    t = (-k)[:, None] / new + rel.to(torch.float64) / orig
    return _windowed_sinc(t, base, orig).to(torch.float32)


def _phase_kernel(orig: int, new: int) -> torch.Tensor | None:
    """All ``new`` rows of ``_phase_weights`` (new, 2*width + 1) float32, cached; None past half the cache."""
    _, width = _kernel_geometry(orig, new)
    taps = 2 * width + 1
    if new * taps * 4 > KERNEL_CACHE_BYTES // 2:
        return None  # only for rates far outside 1-384 kHz: the caller builds each block's rows itself
    key = ("phase", orig, new)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = torch.empty(new, taps, dtype=torch.float32)
        step = max(1, RESAMPLE_BLOCK_ELEMENTS // taps)  # bounds the float64 temporaries
        for first in range(0, new, step):
            kernel[first:first + step] = _phase_weights(orig, new, first, min(new, first + step))
        _KERNELS.put(key, kernel)
    return kernel


def _resample_polyphase(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """torchaudio's own algorithm: a strided conv1d with the (new, 1, 2*width + orig) kernel.

    ``x`` is float32 (n_wavs, samples); returns (n_wavs, new * (samples // orig + 1)) before trimming.
    """
    kernel, width = _sinc_kernel(orig, new)
    n_wavs = x.shape[0]
    x = torch.nn.functional.pad(x, (width, width + orig))
    y = torch.nn.functional.conv1d(x[:, None], kernel, stride=orig)
    return y.transpose(1, 2).reshape(n_wavs, -1)


def _resample_phasewise(x: np.ndarray, orig: int, new: int, target: int) -> np.ndarray:
    """The same windowed sinc evaluated per output phase over its 2*width + 1 reachable taps.

    ``x`` is float32 (n_wavs, samples); returns float32 (n_wavs, ``target``). Output ``j = i*new + k``
    is centred on input sample ``c = floor(j * orig / new) = i*orig + floor(k * orig / new)`` and reads
    ``x[c - width : c + width + 1]`` (zero outside the clip), weighted by row k of the phase kernel.
    Work is done in blocks of phases x periods of at most ``RESAMPLE_BLOCK_ELEMENTS`` taps, so the
    extra memory is the padded copy of ``x``, the kernel and a few 4 MB buffers.
    """
    n_wavs, length = x.shape
    if target == 0:
        return np.zeros((n_wavs, 0), dtype=np.float32)
    _, width = _kernel_geometry(orig, new)
    taps = 2 * width + 1
    periods = -(-target // new)
    centre = (np.arange(new, dtype=np.int64) * orig) // new  # floor(k * orig / new) for each phase k
    last = (periods - 1) * orig + int(centre[-1]) + width  # the last input sample any output reads
    padded = np.zeros((n_wavs, width + max(length, last + 1)), dtype=np.float32)
    padded[:, width:width + length] = x
    # row r of this view is padded[r : r + taps], i.e. x[r - width : r + width + 1]: output j reads row c
    rows = np.lib.stride_tricks.sliding_window_view(padded, taps, axis=-1)
    # a clip shorter than one period needs only its own phases: weigh those, keep nothing
    phases = new if periods > 1 else target
    kernel = _phase_kernel(orig, new) if periods > 1 else None
    out = np.zeros((n_wavs, periods, new), dtype=np.float32)
    per_output = n_wavs * taps
    phase_step = min(phases, max(1, RESAMPLE_BLOCK_ELEMENTS // (per_output * periods)))
    period_step = min(periods, max(1, RESAMPLE_BLOCK_ELEMENTS // (per_output * phase_step)))
    for k0 in range(0, phases, phase_step):
        k1 = min(phases, k0 + phase_step)
        weights = (kernel[k0:k1] if kernel is not None else _phase_weights(orig, new, k0, k1)).numpy()
        for i0 in range(0, periods, period_step):
            i1 = min(periods, i0 + period_step)
            index = np.arange(i0, i1, dtype=np.int64)[:, None] * orig + centre[None, k0:k1]
            out[:, i0:i1, k0:k1] = np.einsum("cikt,kt->cik", rows[:, index], weights)
    return out.reshape(n_wavs, -1)[:, :target]


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample the last axis of ``audio`` from ``orig_sr`` to ``new_sr`` Hz (float32 out).

    Output length is ``ceil(len * new_sr / orig_sr)``, exactly as torchaudio computes it. Rate pairs
    whose gcd-reduced polyphase kernel is small (every common rate: 8, 11.025, 16, 22.05, 24, 32,
    44.1, 48, 88.2, 96 ... 384 kHz to 16 or 24 kHz) run torchaudio's own conv1d, bit for bit; odd
    rates (16001 Hz, 22051 Hz ...) evaluate the same weights per output phase, which matches
    torchaudio to float32 rounding (about 1e-7) in bounded memory: for 1-384 kHz to 16 or 24 kHz,
    under 100 MB beyond the input and output for any rates from 1 to 384 kHz to 16 or 24 kHz.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == new_sr:
        return audio.copy()
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    shape = audio.shape
    flat = np.ascontiguousarray(audio.reshape(math.prod(shape[:-1]), shape[-1]))  # (n_wavs, samples)
    length = flat.shape[1]
    target = math.ceil(new * length / orig)
    _, width = _kernel_geometry(orig, new)
    span = 2 * width + orig
    if span <= POLYPHASE_MAX_TAPS and new * span * 4 <= POLYPHASE_MAX_KERNEL_BYTES:
        with torch.inference_mode():
            y = _resample_polyphase(torch.from_numpy(flat), orig, new)[:, :target].numpy()
    else:
        with torch.inference_mode():
            y = _resample_phasewise(flat, orig, new, target)
    return y.reshape(shape[:-1] + (-1,))


# --- loading, prelude and the tokenizer's prep (upstream tts.py / tokenizer.py / utils.py semantics) ---

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


def load_audio(path_or_bytes: str | Path | bytes | BinaryIO) -> tuple[np.ndarray, int]:
    """Read an audio file (wav, flac, ogg, or anything libsndfile reads) without resampling.

    Returns ``(audio, sample_rate)`` with ``audio`` float32 of shape (channels, samples) in [-1, 1].
    Raises AudioInputError for missing, unsupported, corrupt or empty files.
    """
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes | bytearray) else path_or_bytes
    name = "uploaded audio" if isinstance(path_or_bytes, bytes | bytearray) else str(path_or_bytes)
    if isinstance(source, str | Path) and not Path(source).is_file():
        raise AudioInputError(f"audio file not found: {name}")
    try:
        data, sr = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioInputError(
            f"could not read {name} as audio ({exc}); use a WAV, FLAC or OGG file "
            "(convert other formats, e.g. with `ffmpeg -i in.m4a out.wav`)"
        ) from exc
    if data.size == 0:
        raise AudioInputError(f"{name} contains no audio samples; record or upload a clip of a few seconds")
    return np.ascontiguousarray(data.T), int(sr)


def read_audio(source: str | Path | bytes | tuple) -> tuple[np.ndarray, int]:
    """Any accepted audio input -> (float32 array (samples,) or (channels, samples), rate in Hz).

    ``source`` is a file path, the file's bytes, ``(array, rate)`` or Gradio's ``(rate, array)``
    (integer PCM is scaled to [-1, 1]; (samples, channels) arrays are transposed).
    """
    if source is None:
        raise AudioInputError("no audio was given: upload or record a clip first")
    if isinstance(source, (str, Path, bytes, bytearray)):
        return load_audio(source)  # float32 (channels, samples); a missing or unreadable file is named
    if isinstance(source, tuple) and len(source) == 2:
        first, second = source
        rate, data = (first, second) if np.isscalar(first) else (second, first)
        return to_float(np.asarray(data)), int(rate)
    raise AudioInputError(f"unsupported audio input of type {type(source).__name__}; "
                          "give a file or (array, rate)")


def to_float(data: np.ndarray) -> np.ndarray:
    """PCM of any dtype -> float32 in [-1, 1], channels first when 2-D."""
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    elif data.dtype.kind == "u":
        info = np.iinfo(data.dtype)
        data = (data.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    elif data.dtype.kind != "f":
        raise AudioInputError(f"audio samples of type {data.dtype} are not supported; use PCM or float")
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2 and data.shape[0] > data.shape[1]:
        data = data.T  # (samples, channels) as soundfile and Gradio give it
    if data.ndim not in (1, 2):
        raise AudioInputError(f"audio must be 1-D or 2-D (channels, samples), got shape {data.shape}")
    return np.ascontiguousarray(data)


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
        raise AudioInputError(f"expected audio of shape (samples,) or (channels, samples), "
                              f"got {tuple(x.shape)}")
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

    _, index = librosa.effects.trim(audio_16k, top_db=TRIM_TOP_DB, frame_length=TRIM_FRAME_LENGTH,
                                    hop_length=TRIM_HOP_LENGTH)
    return int(index[0]), int(index[1])


def trim_silence(audio_16k: np.ndarray, span: tuple[int, int] | None = None) -> np.ndarray:
    """Keep the speech span plus 0.05 s before and 0.22 s after, zero-padding where the clip ends.

    The output length is ``ceil((end - start) / 240) * 240 + 4320`` samples (upstream ``trim_silence``):
    the codes shift with every sample, so this reproduces the reference indices exactly.
    """
    start, end = speech_span(audio_16k) if span is None else span
    keep_left = int(TRIM_KEEP_LEFT_SECONDS * TOKENIZER_SAMPLE_RATE)
    n_quanta = math.ceil((end - start) / TRIM_QUANTUM)
    out_len = int(n_quanta * TRIM_QUANTUM
                  + (TRIM_KEEP_LEFT_SECONDS + TRIM_KEEP_RIGHT_SECONDS) * TOKENIZER_SAMPLE_RATE)
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


def validate_reference(audio: np.ndarray, sr: int, max_seconds: float | None = None,
                       min_speech_seconds: float = MIN_SPEECH_SECONDS) -> None:
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
    """Cheap checks (no resampling): rate, shape, empty, NaN/inf, silence, length."""
    if not isinstance(sr, int | np.integer) or sr <= 0:
        raise AudioInputError(f"sample rate must be a positive integer in Hz, got {sr!r}")
    a = np.asarray(audio)
    if a.ndim not in (1, 2):
        raise AudioInputError(f"expected audio of shape (samples,) or (channels, samples), got {a.shape}")
    if a.size == 0 or a.shape[-1] == 0:
        raise AudioInputError("the reference audio is empty; record or upload a clip of a few seconds")
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise AudioInputError(f"audio samples must be numbers, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise AudioInputError("the reference audio contains NaN or infinite samples; the file is damaged, "
                              "re-export it or record again")
    if float(np.abs(a).max()) < SILENCE_PEAK:
        raise AudioInputError("the reference audio is silent (all samples are (near) zero); check the "
                              "microphone or upload a clip with speech")
    seconds = a.shape[-1] / float(sr)
    if max_seconds is not None and seconds > max_seconds:
        raise AudioInputError(f"the reference audio is {seconds:.1f} s long; the limit is {max_seconds:g} s, "
                              "cut it to a few seconds of clean speech")
