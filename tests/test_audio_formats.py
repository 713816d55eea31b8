"""audio_read.load_audio / read_audio: the formats people have, header-first limits, bounded decoding,
and messages that name the file but never the server's folders.

Every file is made here: PyAV's encoders write the compressed formats, and ``_silent_flac`` writes a
valid FLAC of digital silence frame by frame (a 10-minute, 8-channel, 96 kHz one is 476 KB and
decodes to 1.8 GB of float32), so the decode-bomb tests cost well under a second to set up.
"""

from __future__ import annotations

import fractions
import io
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

import audio_prep
from audio_read import DEFAULT_MAX_CHANNELS, DEFAULT_MAX_SECONDS, load_audio, read_audio
from errors import AudioInputError

ROOT = Path(__file__).resolve().parents[1]
TONE_HZ = 523.25  # C5: well inside every codec's band


def _encode(
    path: Path,
    codec: str,
    rate: int,
    channels: int,
    seconds: float,
    *,
    video: bool = False,
    options: dict | None = None,
) -> Path:
    """Write a sine of TONE_HZ (peak 0.3, every channel) with one of FFmpeg's encoders through PyAV."""
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), "w") as out:
        audio = out.add_stream(codec, rate=rate, options=options or {})
        audio.layout = layout
        if video:  # a tiny video track beside the sound, as in a phone's MP4
            picture = out.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 32, 32, "yuv420p"
            for i in range(int(seconds * 10)):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 90, np.uint8), format="rgb24")
                frame.pts = i
                out.mux(picture.encode(frame))
            out.mux(picture.encode())
        t = np.arange(int(seconds * rate)) / rate
        tone = np.tile((0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32), (channels, 1))
        for start in range(0, tone.shape[1], 1024):
            block = np.ascontiguousarray(tone[:, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, fractions.Fraction(1, rate)
            out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return path


def _dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


# name, codec, rate, channels, extra keyword arguments of _encode
FORMATS = [
    ("voice.mp3", "libmp3lame", 44100, 2, {}),
    ("voice.m4a", "aac", 44100, 2, {}),
    ("recording.webm", "libopus", 48000, 1, {}),  # what browsers' MediaRecorder produces
    ("clip.mp4", "aac", 48000, 2, {"video": True}),
    ("voice.ogg", "vorbis", 44100, 2, {"options": {"strict": "experimental"}}),
    ("voice.mkv", "flac", 22050, 1, {}),
]


@pytest.mark.parametrize(("name", "codec", "rate", "channels", "extra"), FORMATS, ids=[f[0] for f in FORMATS])
def test_common_formats_load_with_their_rate_channels_and_content(
    tmp_path, name, codec, rate, channels, extra
):
    path = _encode(tmp_path / name, codec, rate, channels, 1.5, **extra)
    audio, sr = load_audio(path)
    assert sr == rate and audio.dtype == np.float32 and audio.shape[0] == channels
    assert abs(audio.shape[1] / sr - 1.5) < 0.05  # encoder delay and padding: a frame or two
    middle = audio[:, int(0.25 * sr) : int(1.25 * sr)]
    for channel in middle:
        assert abs(_dominant_hz(channel, sr) - TONE_HZ) < 3
        assert 0.25 < np.abs(channel).max() < 0.36
    from_bytes, sr_bytes = read_audio(path.read_bytes())
    assert sr_bytes == sr and from_bytes.shape == audio.shape


def _png() -> bytes:
    """A 2 x 2 grey PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0\x80\x80" * 2)  # per row: filter byte 0, two grey pixels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_bytes(seconds: float, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, 0.3 * np.sin(np.arange(int(seconds * sr)) / 5.0), sr, format="WAV")
    return buf.getvalue()


def _m4a_bytes(tmp_path: Path) -> bytes:
    return _encode(tmp_path / "whole.m4a", "aac", 44100, 1, 1.0).read_bytes()


@pytest.fixture
def deep_folder(tmp_path) -> Path:
    """Where an upload lands on a server: a deep, private temporary folder."""
    folder = tmp_path / "srv" / "gradio-tmp" / "9f2c1e77b0d4a6" / "uploads"
    folder.mkdir(parents=True)
    return folder


UNREADABLE = {
    "notes.wav": lambda tmp: b"this is not audio, just a note\n" * 20,  # text named .wav
    "photo.png": lambda tmp: _png(),
    "voice.wav": lambda tmp: b"",  # empty
    "cut.wav": lambda tmp: _wav_bytes(1.0)[:30],  # truncated inside the header
    "cut.m4a": lambda tmp: _m4a_bytes(tmp)[:1500],  # truncated before the index (moov)
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_files_name_the_file_and_the_formats_that_work(tmp_path, deep_folder, name):
    path = deep_folder / name
    path.write_bytes(UNREADABLE[name](tmp_path))
    with pytest.raises(AudioInputError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert f"'{name}'" in message and "could not read" in message
    assert "MP3" in message and "WAV, FLAC or OGG" in message
    assert str(deep_folder) not in message and "gradio-tmp" not in message
    assert not re.search(r"/[^/\s]+/", message), message  # no folder of any path


def test_limit_and_missing_file_messages_never_show_the_folder(deep_folder):
    long_clip = deep_folder / "long voice.wav"
    long_clip.write_bytes(_wav_bytes(3.0))
    surround = deep_folder / "surround.flac"
    surround.write_bytes(_silent_flac(1.0, channels=6, rate=48000))
    cases = [
        (long_clip, {"max_seconds": 2.0}, "3.0 s long"),
        (surround, {}, "6 channels"),
        (deep_folder / "gone.wav", {}, "not found"),
    ]
    for path, limits, expected in cases:
        with pytest.raises(AudioInputError, match=expected) as caught:
            load_audio(path, **limits)
        assert f"'{path.name}'" in str(caught.value)
        assert "gradio-tmp" not in str(caught.value) and str(deep_folder) not in str(caught.value)


def test_a_playlist_cannot_make_ffmpeg_read_another_file(tmp_path):
    """An uploaded HLS playlist naming a file on the server is refused, not decoded."""
    secret = _encode(tmp_path / "private.mp3", "libmp3lame", 44100, 1, 1.0)
    playlist = tmp_path / "voice.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n")
    with pytest.raises(AudioInputError, match="could not read 'voice.m3u8'"):
        load_audio(playlist)


# --- limits: from the header first, and never more decoded than they allow ---


def test_length_limit_is_exact_and_checked_on_every_path(tmp_path):
    sr = 16000
    exact = tmp_path / "exact.wav"
    soundfile.write(exact, np.full(2 * sr, 0.1, np.float32), sr)
    assert load_audio(exact, max_seconds=2.0)[0].shape == (1, 2 * sr)
    longer = tmp_path / "longer.wav"
    soundfile.write(longer, np.full(2 * sr + 1, 0.1, np.float32), sr)
    with pytest.raises(AudioInputError, match="limit is 2 s"):
        load_audio(longer, max_seconds=2.0)
    assert load_audio(longer, max_seconds=None)[0].shape == (1, 2 * sr + 1)
    webm = _encode(tmp_path / "talk.webm", "libopus", 48000, 1, 3.0)
    with pytest.raises(AudioInputError, match="limit is 2 s"):
        load_audio(webm, max_seconds=2.0)


def test_channel_and_rate_limits(tmp_path):
    quad = tmp_path / "quad.wav"
    soundfile.write(quad, np.full((1600, 4), 0.1, np.float32), 16000)
    with pytest.raises(AudioInputError, match="4 channels and the limit is 2"):
        load_audio(quad)
    assert load_audio(quad, max_channels=4)[0].shape == (4, 1600)
    assert load_audio(quad, max_channels=None)[0].shape == (4, 1600)
    slow = tmp_path / "slow.wav"
    soundfile.write(slow, np.full(800, 0.1, np.float32), 800)
    with pytest.raises(AudioInputError, match="800 Hz"):
        load_audio(slow)


def test_default_limits_keep_todays_callers_working(tmp_path):
    assert DEFAULT_MAX_SECONDS >= 30 and DEFAULT_MAX_CHANNELS == 2  # the engine's default limit is 30 s
    stereo = tmp_path / "stereo.flac"
    soundfile.write(stereo, np.full((16000 * 20, 2), 0.1, np.float32), 16000)
    audio, sr = read_audio(stereo)  # the call signature every caller uses today
    assert audio.shape == (2, 320000) and sr == 16000


def test_arrays_get_the_same_limits():
    sr = 16000
    audio, rate = read_audio((sr, np.zeros((sr, 2), np.int16)))  # Gradio's (rate, (samples, channels))
    assert audio.shape == (2, sr) and rate == sr
    with pytest.raises(AudioInputError, match="8 channels"):
        read_audio((np.zeros((8, sr), np.float32), sr))
    with pytest.raises(AudioInputError, match="limit is 1 s"):
        read_audio((np.zeros(2 * sr, np.float32), sr), max_seconds=1)
    with pytest.raises(AudioInputError, match="500 Hz"):
        read_audio((np.zeros(500, np.float32), 500))
    assert read_audio((np.zeros((8, sr), np.float32), sr), max_channels=None)[0].shape == (8, sr)


def test_check_samples_refuses_rates_the_resampler_does_not_bound():
    with pytest.raises(AudioInputError, match="1 to 384 kHz"):
        audio_prep.check_samples(np.full(1000, 0.1, np.float32), 1_000_000)


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return table


_CRC16 = _crc16_table()


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc


def _silent_flac(
    seconds: float, channels: int = 8, rate: int = 96000, length_in_header: bool = True
) -> bytes:
    """A valid 16-bit FLAC of digital silence: each 4096-sample frame is one CONSTANT subframe per channel.

    ``length_in_header=False`` writes 0 (unknown) as STREAMINFO's total samples, as streaming encoders do.
    """
    block, total = 4096, int(seconds * rate)
    streaminfo = struct.pack(">HH", block, block) + bytes(6)  # block sizes; frame sizes unknown
    fields = (rate << 44) | ((channels - 1) << 41) | (15 << 36) | (total if length_in_header else 0)
    streaminfo += fields.to_bytes(8, "big") + bytes(16)  # no MD5
    parts = [b"fLaC", bytes([0x80, 0, 0, len(streaminfo)]), streaminfo]
    rate_code = {96000: 0b1011, 48000: 0b1010, 44100: 0b1001, 16000: 0b0101}[rate]
    for number, start in enumerate(range(0, total, block)):
        n = min(block, total - start)
        size_code, size = (0b1100, b"") if n == block else (0b0111, (n - 1).to_bytes(2, "big"))
        header = bytes([0xFF, 0xF8, (size_code << 4) | rate_code, ((channels - 1) << 4) | 0b1000])
        header += chr(number).encode("utf-8", "surrogatepass") + size  # FLAC's UTF-8 coded frame number
        frame = header + bytes([_crc8(header)]) + bytes(3) * channels  # subframe 0x00 + the value 0
        parts.append(frame + _crc16(frame).to_bytes(2, "big"))
    return b"".join(parts)


def test_silent_flac_is_real_audio():
    audio, sr = load_audio(_silent_flac(0.3, channels=2, rate=48000))
    assert sr == 48000 and audio.shape == (2, int(0.3 * 48000)) and not audio.any()
    with av.open(io.BytesIO(_silent_flac(0.3, channels=2, rate=48000))) as container:
        assert sum(frame.samples for frame in container.decode(audio=0)) == int(0.3 * 48000)


def _without_duration(flac: bytes) -> bytes:
    """Remux a FLAC stream into Matroska written as a live stream: no duration anywhere in the header."""

    class Pipe(io.RawIOBase):  # not seekable, so the muxer cannot go back to write the duration
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, chunk):
            self.data += chunk
            return len(chunk)

    pipe = Pipe()
    with av.open(io.BytesIO(flac)) as source, av.open(pipe, "w", format="matroska") as out:
        track = out.add_stream_from_template(source.streams.audio[0])
        for packet in source.demux(source.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = track
                out.mux(packet)
    return bytes(pipe.data)


_LOAD_PROBE = r"""
import json, resource, sys
import audio_read
from errors import AudioInputError
# a refusal must come without decoding the file: fail fast rather than swap if it does decode
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path, limits in json.loads(sys.argv[1]):
    try:
        audio, sr = audio_read.load_audio(path, **limits)
        message = f"loaded {audio.shape} at {sr} Hz"
    except AudioInputError as exc:
        message = "refused: " + str(exc)
    except MemoryError as exc:
        message = f"out of memory: {exc}"
    # peak RSS only grows, so each case's figure also bounds every case before it
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"message": message, "growth_mb": growth_mb}), flush=True)
"""


@pytest.fixture(scope="module")
def bomb_reports(tmp_path_factory) -> dict[str, dict]:
    """Load the decode bombs in one fresh process (imports cost seconds), cheapest refusals first.

    The issue's file: 10 minutes, 8 channels, 96 kHz FLAC (476 KB; 1.8 GB once decoded), with and
    without its length in the header (total samples 0, as streaming encoders write), and remuxed to
    live Matroska without any duration (the FFmpeg path).
    """
    folder = tmp_path_factory.mktemp("bombs")
    bomb = _silent_flac(600.0)
    (folder / "bomb.flac").write_bytes(bomb)
    unknown = _silent_flac(0.1, length_in_header=False)[:42] + bomb[42:]  # same header, total samples 0
    (folder / "stream.flac").write_bytes(unknown)
    (folder / "stream.mka").write_bytes(_without_duration(unknown))
    cases = {
        "header": ("bomb.flac", {}),
        "header_any_channels": ("bomb.flac", {"max_channels": None}),
        "flac": ("stream.flac", {"max_seconds": 20, "max_channels": None}),
        "mka": ("stream.mka", {"max_seconds": 20, "max_channels": None}),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_PROBE,
            json.dumps([[str(folder / name), limits] for name, limits in cases.values()]),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads(line) for line in done.stdout.strip().splitlines()[-len(cases) :]]
    return {"size": len(bomb), **dict(zip(cases, reports, strict=True))}


def test_a_decode_bomb_is_refused_from_its_header(bomb_reports):
    assert bomb_reports["size"] < 500_000
    report = bomb_reports["header"]
    assert report["message"].startswith("refused: 'bomb.flac' cannot be used")
    assert "600.0 s long and the limit is 60 s" in report["message"] and "8 channels" in report["message"]
    report = bomb_reports["header_any_channels"]  # the length alone refuses it too
    assert "600.0 s long" in report["message"] and "channels" not in report["message"]
    assert report["growth_mb"] < 50, report  # nothing decoded (both refusals above)


@pytest.mark.parametrize("container", ["flac", "mka"])
def test_without_a_length_in_the_header_decoding_stops_at_the_limit(bomb_reports, container):
    """FLAC with total samples 0 (libsndfile path) and live Matroska without duration (FFmpeg path)."""
    report = bomb_reports[container]
    assert report["message"] == (
        f"refused: 'stream.{container}' is longer than 20 s, the limit: cut it to a "
        "few seconds of clean speech (3-10 s works best)"
    )
    assert report["growth_mb"] < 200, report  # 20 s of 8 x 96 kHz float32 is 61 MB; all of it 1.8 GB
