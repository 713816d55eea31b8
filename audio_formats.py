"""Encoding generated audio for clients: wav, mp3, flac, opus, aac or raw pcm, whole or as it streams.

    data = encode_audio(samples, 24000, "mp3")               # whole file
    encoder = StreamEncoder("opus", 24000)                   # chunked: bytes as samples arrive
    parts = [encoder.write(piece) for piece in pieces] + [encoder.finish()]

Every container and codec comes from FFmpeg through PyAV (its wheels bring the codecs; no system
ffmpeg), so there is no hand-written encoder here. Containers are written to a non-seekable sink,
so the bytes can leave as soon as the muxer produces them. ``pcm`` is raw 16-bit little-endian
mono at the sample rate (OpenAI's pcm format), which needs no container.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

PCM16_MAX = 32767


@dataclass(frozen=True)
class Format:
    """One response format: the FFmpeg muxer and codec, the codec's rate, and the MIME type."""

    name: str
    muxer: str | None  # None: raw samples, no container
    codec: str | None
    rate: int | None  # the codec's sample rate (None: keep the audio's)
    media_type: str
    bit_rate: int | None = None


FORMATS: dict[str, Format] = {
    "wav": Format("wav", "wav", "pcm_s16le", None, "audio/wav"),
    "mp3": Format("mp3", "mp3", "libmp3lame", None, "audio/mpeg", 64_000),
    "flac": Format("flac", "flac", "flac", None, "audio/flac"),
    "opus": Format("opus", "ogg", "libopus", 48000, "audio/ogg; codecs=opus", 48_000),
    "aac": Format("aac", "adts", "aac", None, "audio/aac", 64_000),
    "pcm": Format("pcm", None, None, None, "audio/L16"),
}


class _Sink(io.RawIOBase):
    """A write-only, non-seekable byte sink the muxer writes into; ``take()`` drains it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class StreamEncoder:
    """Encodes (samples,) float32 pieces at ``sample_rate`` Hz into one ``fmt`` file, incrementally."""

    def __init__(self, fmt: str, sample_rate: int):
        if fmt not in FORMATS:
            raise ValueError(f"unknown audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.format = FORMATS[fmt]
        self.sample_rate = int(sample_rate)
        self._closed = False
        if self.format.muxer is None:
            return
        import av  # here: only the formats with a container need FFmpeg

        self._av = av
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=self.format.muxer)
        rate = self.format.rate or self.sample_rate
        self._stream = self._container.add_stream(self.format.codec, rate=rate)
        self._stream.layout = "mono"
        if self.format.bit_rate:
            self._stream.bit_rate = self.format.bit_rate
        self._resampler = av.AudioResampler(format=self._stream.format.name, layout="mono", rate=rate)
        self._pts = 0

    @property
    def media_type(self) -> str:
        return self.format.media_type

    def write(self, samples: np.ndarray) -> bytes:
        """Encode more samples; returns the bytes the encoder released (often empty for a tiny piece)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.format.muxer is None:
            return pcm16(samples).tobytes()
        if samples.size:
            frame = self._av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._pts
            self._pts += samples.size
            for converted in self._resampler.resample(frame):
                self._mux(converted)
        return self._sink.take()

    def finish(self) -> bytes:
        """Flush the encoder and close the file; returns the last bytes."""
        if self._closed or self.format.muxer is None:
            self._closed = True
            return b""
        self._closed = True
        for converted in self._resampler.resample(None):
            self._mux(converted)
        self._mux(None)
        self._container.close()
        return self._sink.take()

    def _mux(self, frame) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A whole (samples,) float32 clip at ``sample_rate`` Hz as one ``fmt`` file."""
    encoder = StreamEncoder(fmt, sample_rate)
    return encoder.write(samples) + encoder.finish()


def pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 samples in [-1, 1] -> little-endian int16 (clipped, rounded, full scale 32767)."""
    return np.round(np.clip(samples, -1.0, 1.0) * PCM16_MAX).astype("<i2")


MIN_SPEED, MAX_SPEED = 0.25, 4.0  # OpenAI's speed range
ATEMPO_RANGE = (0.5, 2.0)  # one FFmpeg atempo stage keeps its best quality within this range


class TempoFilter:
    """Changes the speed of a stream of (samples,) float32 pieces without changing the pitch.

    FFmpeg's ``atempo`` (WSOLA) through PyAV, chained for factors outside 0.5..2; streaming:
    ``push`` returns what is ready, ``finish`` the rest. A speed of 1 passes samples through.
    """

    def __init__(self, speed: float, sample_rate: int):
        if not (MIN_SPEED <= speed <= MAX_SPEED):
            raise ValueError(f"speed must be in {MIN_SPEED}..{MAX_SPEED}, got {speed}")
        self.speed = float(speed)
        self.sample_rate = int(sample_rate)
        if self.speed == 1.0:
            return
        import av
        from av.filter import Graph

        self._av = av
        self._graph = Graph()
        node = self._graph.add_abuffer(
            format="flt", sample_rate=self.sample_rate, layout="mono", time_base=f"1/{self.sample_rate}"
        )
        for factor in _atempo_factors(self.speed):
            stage = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(stage)
            node = stage
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()
        self._pts = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.speed == 1.0 or samples.size == 0:
            return samples if self.speed == 1.0 else np.zeros(0, np.float32)
        frame = self._av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        self._graph.push(frame)
        return self._drain()

    def finish(self) -> np.ndarray:
        if self.speed == 1.0:
            return np.zeros(0, np.float32)
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> np.ndarray:
        out = []
        while True:
            try:
                frame = self._graph.pull()
            except (self._av.BlockingIOError, self._av.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1).astype(np.float32))
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def _atempo_factors(speed: float) -> list[float]:
    low, high = ATEMPO_RANGE
    factors = []
    while speed > high:
        factors.append(high)
        speed /= high
    while speed < low:
        factors.append(low)
        speed /= low
    return factors + [speed]


def reference_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """A reference clip ((samples,) or (channels, samples) float32) kept as mono 24-bit FLAC bytes."""
    import soundfile

    mono = np.asarray(audio, dtype=np.float32)
    if mono.ndim == 2:
        mono = mono.mean(axis=0)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(mono, -1.0, 1.0), int(sample_rate), format="FLAC", subtype="PCM_24")
    return buffer.getvalue()
