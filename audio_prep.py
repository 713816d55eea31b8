"""Reference-audio preparation shared by every stage: loading, mono, resampling, trimming, validation.

Audio constants are named once here. Functions take numpy arrays (float32, samples) and return
arrays. The resampler reproduces ``torchaudio.functional.resample`` (windowed sinc, Hann window,
lowpass_filter_width 6, rolloff 0.99) because the tokenizer's codes are sensitive to it:
soxr or librosa's default resampler flips 10-16 % of the vq02 codes.

Loading reads the file's header first and refuses a clip that is too long, has too many channels or
an unusable sample rate before decoding it, and never decodes more than those limits allow.
libsndfile reads WAV, FLAC, OGG (and MP3); everything else (M4A/AAC, WebM/Opus, video files with
sound) goes through PyAV, whose wheels bring FFmpeg's decoders.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import re
import time
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


# Loading limits. The engine applies its own, configurable reference limit (30 s by default) after
# loading; these defaults only bound what a file may cost to decode (60 s of 384 kHz stereo float32 is
# 184 MB), and every loader refuses past them from the header, before decoding anything.
MIN_SAMPLE_RATE = 1000  # Hz; the resampler's bounded range (see resample)
MAX_SAMPLE_RATE = 384000
DEFAULT_MAX_SECONDS = 60.0  # load_audio / read_audio: longest clip decoded
DEFAULT_MAX_CHANNELS = 2  # a voice prompt is mono or stereo; surround tracks cost 3-4x for nothing
AUDIO_FORMATS = ("MP3, M4A/AAC, WebM/Opus, a video with sound (MP4, MOV, MKV, WebM), "
                 "or WAV, FLAC or OGG")  # what the two decoders below read, for messages
_FORMATS_HINT = f"use a recording in a common format: {AUDIO_FORMATS}"
# FFmpeg demuxers allowed to read an upload. Playlist and reference formats (hls, concat, dash ...)
# would make FFmpeg open other files or URLs named inside the upload, so they are not on the list.
FFMPEG_DEMUXERS = ("mov,matroska,mp3,aac,ogg,flac,wav,w64,aiff,caf,au,avi,asf,mpegts,mpeg,flv,amr,ac3,"
                   "eac3,wv")
_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX when a header does not give the length
_DIRECTORIES = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"]*)+[\\/]")  # ".../" prefixes of paths


def load_audio(path_or_bytes: str | Path | bytes | BinaryIO, *,
               max_seconds: float | None = DEFAULT_MAX_SECONDS,
               max_channels: int | None = DEFAULT_MAX_CHANNELS) -> tuple[np.ndarray, int]:
    """Read an audio or video file's first audio track without resampling, within limits.

    Returns ``(audio, sample_rate)`` with ``audio`` float32 of shape (channels, samples) in [-1, 1] at
    the file's own rate (Hz). The header is checked first: a clip longer than ``max_seconds``, with
    more than ``max_channels`` channels or a rate outside 1-384 kHz is refused before decoding, and
    at most ``max_seconds`` (+1 sample) is ever decoded when the header does not tell the length.
    ``None`` lifts a limit. libsndfile reads WAV, FLAC, OGG (and MP3); PyAV (FFmpeg) reads the rest.
    Raises AudioInputError, naming the file by its name only, for missing, unsupported, corrupt,
    empty or too large files.
    """
    label = _label(path_or_bytes)
    started = time.perf_counter()
    if isinstance(path_or_bytes, bytes | bytearray):
        source: str | BinaryIO = io.BytesIO(path_or_bytes)
        size = len(path_or_bytes)
    elif isinstance(path_or_bytes, str | Path):
        path = Path(path_or_bytes)
        if not path.is_file():
            raise AudioInputError(f"audio file {label} was not found; upload or record it again")
        source, size = str(path), path.stat().st_size
    else:
        source, size = path_or_bytes, None
    if size == 0:
        raise AudioInputError(f"could not read {label} as audio (the file is empty); {_FORMATS_HINT}")
    start = source.tell() if not isinstance(source, str) and source.seekable() else None
    try:
        sound_file = soundfile.SoundFile(source)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        log.debug("libsndfile cannot open %s (%s); trying FFmpeg", label, _reason(exc))
        if start is not None:
            source.seek(start)
        audio, sr = _read_with_ffmpeg(source, label, max_seconds, max_channels)
        decoder = "FFmpeg"
    else:
        with sound_file:
            audio, sr = _read_with_libsndfile(sound_file, label, max_seconds, max_channels)
        decoder = "libsndfile"
    if audio.shape[1] == 0:
        raise AudioInputError(f"{label} contains no audio samples (is the file complete?); record or upload "
                              f"a clip of a few seconds ({_FORMATS_HINT})")
    log.debug("loaded %s with %s: %d channel(s), %d Hz, %.2f s in %.3f s", label, decoder, audio.shape[0],
              sr, audio.shape[1] / sr, time.perf_counter() - started)
    return audio, sr


def _read_with_libsndfile(sound_file: soundfile.SoundFile, label: str, max_seconds: float | None,
                          max_channels: int | None) -> tuple[np.ndarray, int]:
    """Header checks, then at most the allowed frames: float32 (channels, samples) and the rate in Hz."""
    sr, channels, frames = int(sound_file.samplerate), int(sound_file.channels), int(sound_file.frames)
    known = 0 <= frames < _UNKNOWN_FRAMES
    check_header(label, sr, channels, frames / sr if known and sr > 0 else None, max_seconds, max_channels)
    cap = _frame_cap(sr, max_seconds)
    wanted = frames if known and (cap is None or frames < cap) else (cap if cap is not None else -1)
    try:
        data = sound_file.read(frames=wanted, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioInputError(f"could not decode {label} ({_reason(exc)}): the file is damaged; "
                              f"export it again ({_FORMATS_HINT})") from exc
    _check_decoded_length(label, data.shape[0], sr, max_seconds)
    return np.ascontiguousarray(data.T), sr


def _read_with_ffmpeg(source: str | BinaryIO, label: str, max_seconds: float | None,
                      max_channels: int | None) -> tuple[np.ndarray, int]:
    """The first audio track through PyAV: header checks, then decode until done or past the limit.

    Returns float32 (channels, samples) at the track's rate (Hz), converted from any sample format.
    """
    import av  # FFmpeg's libraries; only files libsndfile cannot open need them

    # A file object, never a name: FFmpeg would read "concat:..." or "http://..." names as URLs.
    with open(source, "rb") if isinstance(source, str) else contextlib.nullcontext(source) as stream_in:
        try:
            container = av.open(stream_in, metadata_errors="ignore",
                                options={"format_whitelist": FFMPEG_DEMUXERS})
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise AudioInputError(f"could not read {label} as audio ({_reason(exc)}); "
                                  f"{_FORMATS_HINT}") from exc
        return _decode_first_track(container, label, max_seconds, max_channels)


def _decode_first_track(container, label: str, max_seconds: float | None,
                        max_channels: int | None) -> tuple[np.ndarray, int]:
    """Header checks on the container's first audio track, then decode it within the limits."""
    import av

    with container:
        if not container.streams.audio:
            raise AudioInputError(f"could not read {label} as audio (it holds no audio track); "
                                  f"{_FORMATS_HINT}")
        stream = container.streams.audio[0]
        sr, channels = int(stream.codec_context.sample_rate or 0), int(stream.codec_context.channels or 0)
        if sr <= 0 or channels <= 0:
            raise AudioInputError(f"could not read {label} as audio (its audio track has no sample rate or "
                                  f"channels); {_FORMATS_HINT}")
        if stream.duration and stream.time_base:
            seconds: float | None = float(stream.duration * stream.time_base)
        else:
            seconds = container.duration / av.time_base if container.duration else None
        check_header(label, sr, channels, seconds, max_seconds, max_channels)
        cap = _frame_cap(sr, max_seconds)
        blocks: list[np.ndarray] = []
        decoded = 0
        try:
            for frame in container.decode(stream):
                block = _frame_samples(frame, label, sr, channels)
                blocks.append(block)
                decoded += block.shape[1]
                if cap is not None and decoded >= cap:
                    break  # one sample past the limit is proof enough; decode no further
        except av.FFmpegError as exc:
            if not blocks:
                raise AudioInputError(f"could not decode {label} ({_reason(exc)}): the file is damaged; "
                                      f"export it again ({_FORMATS_HINT})") from exc
            log.warning("%s: decoding stopped after %.2f s (%s); using the part before the damage",
                        label, decoded / sr, _reason(exc))
    _check_decoded_length(label, decoded, sr, max_seconds)
    if not blocks:
        return np.zeros((channels, 0), dtype=np.float32), sr
    return np.concatenate(blocks, axis=1), sr


def _frame_samples(frame, label: str, sr: int, channels: int) -> np.ndarray:
    """One decoded PyAV AudioFrame -> float32 (channels, samples), from any planar or packed format."""
    if frame.sample_rate != sr or frame.layout.nb_channels != channels:
        raise AudioInputError(f"{label} changes its sample rate or channel count partway through; "
                              "convert it to a WAV file first")
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row of interleaved samples
        data = data.reshape(-1, channels).T
    return pcm_to_float32(data)


def _frame_cap(sr: int, max_seconds: float | None) -> int | None:
    """Frames to decode at most: the limit plus one sample, which proves a clip is too long."""
    return None if max_seconds is None else math.floor(max_seconds * sr) + 1


def _check_decoded_length(label: str, frames: int, sr: int, max_seconds: float | None) -> None:
    """Refuse a clip that decoded past the limit (its header gave no length, or a wrong one)."""
    if max_seconds is not None and frames > max_seconds * sr:
        raise AudioInputError(f"{label} is longer than {max_seconds:g} s, the limit: cut it to a few seconds "
                              "of clean speech (3-10 s works best)")


def check_header(label: str, sr: int, channels: int, seconds: float | None, max_seconds: float | None,
                 max_channels: int | None) -> None:
    """Refuse audio from what its header (or array shape) says, before any decoding or resampling.

    ``sr`` in Hz must lie in 1-384 kHz; ``seconds`` (None when unknown) at most ``max_seconds`` and
    ``channels`` at most ``max_channels`` (None lifts a limit). One message lists every problem, each
    with what to do; ``label`` names the audio (a file name, never its folder).
    """
    problems = []
    if seconds is not None and max_seconds is not None and seconds > max_seconds:
        problems.append(f"it is {seconds:.1f} s long and the limit is {max_seconds:g} s (cut it to a few "
                        "seconds of clean speech; 3-10 s works best)")
    if max_channels is not None and channels > max_channels:
        mix = "a mono" if max_channels == 1 else "a mono or stereo"
        problems.append(f"it has {channels} channels and the limit is {max_channels} (export {mix} mix)")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        problems.append(f"its sample rate is {sr} Hz and rates from {MIN_SAMPLE_RATE // 1000} to "
                        f"{MAX_SAMPLE_RATE // 1000} kHz work (export it at 16, 24, 44.1 or 48 kHz)")
    if problems:
        raise AudioInputError(f"{label} cannot be used: " + "; ".join(problems))


def _label(source: object) -> str:
    """How messages name an input: the file's name in quotes, never its folder (upload folders are the
    server's); bytes and nameless streams are "the upload"."""
    name = source if isinstance(source, str | Path) else getattr(source, "name", None)
    if isinstance(name, str | Path):
        base = str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        if base:
            return f"'{base}'"
    return "the upload"


def _reason(exc: BaseException) -> str:
    """A decoder's own words for a failure, without the path it often quotes."""
    if isinstance(exc, soundfile.LibsndfileError):
        text = exc.error_string
    elif type(exc).__name__ in ("InvalidDataError", "ArgumentError"):  # no (allowed) FFmpeg demuxer fits
        text = "not a recognised audio or video format, or the file is incomplete"
    else:
        text = getattr(exc, "strerror", None) or str(exc)
    return _DIRECTORIES.sub("", str(text)).strip().rstrip(".") or type(exc).__name__


def read_audio(source: str | Path | bytes | tuple, *, max_seconds: float | None = DEFAULT_MAX_SECONDS,
               max_channels: int | None = DEFAULT_MAX_CHANNELS) -> tuple[np.ndarray, int]:
    """Any accepted audio input -> (float32 array (samples,) or (channels, samples), rate in Hz).

    ``source`` is a file path, the file's bytes, ``(array, rate)`` or Gradio's ``(rate, array)``
    (integer PCM is scaled to [-1, 1]; (samples, channels) arrays are transposed). Files go through
    ``load_audio``; arrays get the same checks of length (``max_seconds``), channels
    (``max_channels``) and rate (1-384 kHz). ``None`` lifts a limit.
    """
    if source is None:
        raise AudioInputError("no audio was given: upload or record a clip first")
    if isinstance(source, (str, Path, bytes, bytearray)):
        # float32 (channels, samples); a missing or unreadable file is named
        return load_audio(source, max_seconds=max_seconds, max_channels=max_channels)
    if isinstance(source, tuple) and len(source) == 2:
        first, second = source
        rate, data = (first, second) if np.isscalar(first) else (second, first)
        audio = to_float(np.asarray(data))
        channels = 1 if audio.ndim == 1 else audio.shape[0]
        sr = int(rate)
        check_header("the audio", sr, channels, audio.shape[-1] / sr if sr > 0 else None, max_seconds,
                     max_channels)
        return audio, sr
    raise AudioInputError(f"unsupported audio input of type {type(source).__name__}; "
                          "give a file or (array, rate)")


def pcm_to_float32(data: np.ndarray) -> np.ndarray:
    """PCM samples of any integer or float dtype -> float32 in [-1, 1], same shape."""
    if data.dtype.kind == "i":
        return data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    if data.dtype.kind == "u":
        info = np.iinfo(data.dtype)
        return (data.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    if data.dtype.kind != "f":
        raise AudioInputError(f"audio samples of type {data.dtype} are not supported; use PCM or float")
    return data.astype(np.float32, copy=False)


def to_float(data: np.ndarray) -> np.ndarray:
    """PCM of any dtype -> float32 in [-1, 1], channels first when 2-D."""
    data = pcm_to_float32(data)
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
    """Cheap checks (no resampling): rate (1-384 kHz), shape, empty, NaN/inf, silence, length."""
    if not isinstance(sr, int | np.integer) or sr <= 0:
        raise AudioInputError(f"sample rate must be a positive integer in Hz, got {sr!r}")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioInputError(f"the sample rate is {sr} Hz; rates from {MIN_SAMPLE_RATE // 1000} to "
                              f"{MAX_SAMPLE_RATE // 1000} kHz work (export it at 16, 24, 44.1 or 48 kHz)")
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
