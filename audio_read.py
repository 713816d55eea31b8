"""Reading audio and video files, header first: soundfile (libsndfile) and PyAV (FFmpeg), within limits.

Loading reads the file's header first and refuses a clip that is too long, has too many channels or
an unusable sample rate before decoding it, and never decodes more than those limits allow.
libsndfile reads WAV, FLAC, OGG (and MP3); everything else (M4A/AAC, WebM/Opus, video files with
sound) goes through PyAV, whose wheels bring FFmpeg's decoders. Arrays handed in directly
(``read_audio((array, rate))``) get the same checks. Output is float32 (channels, samples) in [-1, 1].
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile

from errors import AudioInputError

log = logging.getLogger(__name__)

# Loading limits. The engine applies its own, configurable reference limit (30 s by default) after
# loading; these defaults only bound what a file may cost to decode (60 s of 384 kHz stereo float32 is
# 184 MB), and every loader refuses past them from the header, before decoding anything.
MIN_SAMPLE_RATE = 1000  # Hz; the resampler's bounded range (see audio_resample.resample)
MAX_SAMPLE_RATE = 384000
DEFAULT_MAX_SECONDS = 60.0  # load_audio / read_audio: longest clip decoded
DEFAULT_MAX_CHANNELS = 2  # a voice prompt is mono or stereo; surround tracks cost 3-4x for nothing
AUDIO_FORMATS = (
    "MP3, M4A/AAC, WebM/Opus, a video with sound (MP4, MOV, MKV, WebM), "
    "or WAV, FLAC or OGG"
)  # what the two decoders below read, for messages
_FORMATS_HINT = f"use a recording in a common format: {AUDIO_FORMATS}"
# FFmpeg demuxers allowed to read an upload. Playlist and reference formats (hls, concat, dash ...)
# would make FFmpeg open other files or URLs named inside the upload, so they are not on the list.
FFMPEG_DEMUXERS = "mov,matroska,mp3,aac,ogg,flac,wav,w64,aiff,caf,au,avi,asf,mpegts,mpeg,flv,amr,ac3,eac3,wv"
_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX when a header does not give the length
_DIRECTORIES = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"]*)+[\\/]")  # ".../" prefixes of paths


def load_audio(
    path_or_bytes: str | Path | bytes | BinaryIO,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    max_channels: int | None = DEFAULT_MAX_CHANNELS,
) -> tuple[np.ndarray, int]:
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
        raise AudioInputError(
            f"{label} contains no audio samples (is the file complete?); record or upload "
            f"a clip of a few seconds ({_FORMATS_HINT})"
        )
    log.debug(
        "loaded %s with %s: %d channel(s), %d Hz, %.2f s in %.3f s",
        label,
        decoder,
        audio.shape[0],
        sr,
        audio.shape[1] / sr,
        time.perf_counter() - started,
    )
    return audio, sr


def _read_with_libsndfile(
    sound_file: soundfile.SoundFile, label: str, max_seconds: float | None, max_channels: int | None
) -> tuple[np.ndarray, int]:
    """Header checks, then at most the allowed frames: float32 (channels, samples) and the rate in Hz."""
    sr, channels, frames = int(sound_file.samplerate), int(sound_file.channels), int(sound_file.frames)
    known = 0 <= frames < _UNKNOWN_FRAMES
    check_header(label, sr, channels, frames / sr if known and sr > 0 else None, max_seconds, max_channels)
    cap = _frame_cap(sr, max_seconds)
    wanted = frames if known and (cap is None or frames < cap) else (cap if cap is not None else -1)
    try:
        data = sound_file.read(frames=wanted, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioInputError(
            f"could not decode {label} ({_reason(exc)}): the file is damaged; "
            f"export it again ({_FORMATS_HINT})"
        ) from exc
    _check_decoded_length(label, data.shape[0], sr, max_seconds)
    return np.ascontiguousarray(data.T), sr


def _read_with_ffmpeg(
    source: str | BinaryIO, label: str, max_seconds: float | None, max_channels: int | None
) -> tuple[np.ndarray, int]:
    """The first audio track through PyAV: header checks, then decode until done or past the limit.

    Returns float32 (channels, samples) at the track's rate (Hz), converted from any sample format.
    """
    import av  # FFmpeg's libraries; only files libsndfile cannot open need them

    # A file object, never a name: FFmpeg would read "concat:..." or "http://..." names as URLs.
    with open(source, "rb") if isinstance(source, str) else contextlib.nullcontext(source) as stream_in:
        try:
            container = av.open(
                stream_in, metadata_errors="ignore", options={"format_whitelist": FFMPEG_DEMUXERS}
            )
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise AudioInputError(
                f"could not read {label} as audio ({_reason(exc)}); {_FORMATS_HINT}"
            ) from exc
        return _decode_first_track(container, label, max_seconds, max_channels)


def _decode_first_track(
    container, label: str, max_seconds: float | None, max_channels: int | None
) -> tuple[np.ndarray, int]:
    """Header checks on the container's first audio track, then decode it within the limits."""
    import av

    with container:
        if not container.streams.audio:
            raise AudioInputError(
                f"could not read {label} as audio (it holds no audio track); {_FORMATS_HINT}"
            )
        stream = container.streams.audio[0]
        sr, channels = int(stream.codec_context.sample_rate or 0), int(stream.codec_context.channels or 0)
        if sr <= 0 or channels <= 0:
            raise AudioInputError(
                f"could not read {label} as audio (its audio track has no sample rate or "
                f"channels); {_FORMATS_HINT}"
            )
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
                raise AudioInputError(
                    f"could not decode {label} ({_reason(exc)}): the file is damaged; "
                    f"export it again ({_FORMATS_HINT})"
                ) from exc
            log.warning(
                "%s: decoding stopped after %.2f s (%s); using the part before the damage",
                label,
                decoded / sr,
                _reason(exc),
            )
    _check_decoded_length(label, decoded, sr, max_seconds)
    if not blocks:
        return np.zeros((channels, 0), dtype=np.float32), sr
    return np.concatenate(blocks, axis=1), sr


def _frame_samples(frame, label: str, sr: int, channels: int) -> np.ndarray:
    """One decoded PyAV AudioFrame -> float32 (channels, samples), from any planar or packed format."""
    if frame.sample_rate != sr or frame.layout.nb_channels != channels:
        raise AudioInputError(
            f"{label} changes its sample rate or channel count partway through; "
            "convert it to a WAV file first"
        )
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
        raise AudioInputError(
            f"{label} is longer than {max_seconds:g} s, the limit: cut it to a few seconds "
            "of clean speech (3-10 s works best)"
        )


def check_header(
    label: str,
    sr: int,
    channels: int,
    seconds: float | None,
    max_seconds: float | None,
    max_channels: int | None,
) -> None:
    """Refuse audio from what its header (or array shape) says, before any decoding or resampling.

    ``sr`` in Hz must lie in 1-384 kHz; ``seconds`` (None when unknown) at most ``max_seconds`` and
    ``channels`` at most ``max_channels`` (None lifts a limit). One message lists every problem, each
    with what to do; ``label`` names the audio (a file name, never its folder).
    """
    problems = []
    if seconds is not None and max_seconds is not None and seconds > max_seconds:
        problems.append(
            f"it is {seconds:.1f} s long and the limit is {max_seconds:g} s (cut it to a few "
            "seconds of clean speech; 3-10 s works best)"
        )
    if max_channels is not None and channels > max_channels:
        mix = "a mono" if max_channels == 1 else "a mono or stereo"
        problems.append(f"it has {channels} channels and the limit is {max_channels} (export {mix} mix)")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        problems.append(
            f"its sample rate is {sr} Hz and rates from {MIN_SAMPLE_RATE // 1000} to "
            f"{MAX_SAMPLE_RATE // 1000} kHz work (export it at 16, 24, 44.1 or 48 kHz)"
        )
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


def read_audio(
    source: str | Path | bytes | tuple,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    max_channels: int | None = DEFAULT_MAX_CHANNELS,
) -> tuple[np.ndarray, int]:
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
        check_header(
            "the audio", sr, channels, audio.shape[-1] / sr if sr > 0 else None, max_seconds, max_channels
        )
        return audio, sr
    raise AudioInputError(
        f"unsupported audio input of type {type(source).__name__}; give a file or (array, rate)"
    )


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
