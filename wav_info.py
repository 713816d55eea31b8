"""16-bit PCM WAV files that carry a text comment (a RIFF LIST/INFO ICMT chunk), and reading it back.

    data = write_wav(samples, 24000, comment=json.dumps(manifest))    # bytes of a whole .wav file
    read_wav_comment(data)                                             # the comment, or None

Written by hand with the RIFF layout (``RIFF``/``WAVE``, ``fmt ``, ``LIST``/``INFO``/``ICMT``,
``data``) because soundfile's ``comment`` does not round-trip a provenance record: libsndfile 1.2
writes an ICMT of any length but reads back only comments shorter than 2 KiB (longer ones come back
empty). Samples are quantised as the ``pcm`` response format (``audio_formats.pcm16``). Any reader
of WAV files plays the result; the comment shows as the file's "comment" tag.
"""

from __future__ import annotations

import struct

import numpy as np

from audio_formats import pcm16

INFO_COMMENT = b"ICMT"
MAX_COMMENT_BYTES = 16 << 20  # a sanity bound for a chunk size read from a file


def _chunk(tag: bytes, payload: bytes) -> bytes:
    """One RIFF chunk: 4-byte tag, little-endian size, payload, a pad byte to an even length."""
    return tag + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def write_wav(samples: np.ndarray, sample_rate: int, comment: str | None = None) -> bytes:
    """(samples,) float32 in [-1, 1] at ``sample_rate`` Hz -> mono 16-bit WAV bytes, with ``comment``
    (UTF-8, NUL-terminated as INFO strings are) in a LIST/INFO ICMT chunk before the samples."""
    pcm = pcm16(np.asarray(samples, dtype=np.float32).reshape(-1)).tobytes()
    rate = int(sample_rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, rate, bytes/s, align, bits
    body = b"WAVE" + _chunk(b"fmt ", fmt)
    if comment is not None:
        body += _chunk(b"LIST", b"INFO" + _chunk(INFO_COMMENT, comment.encode("utf-8") + b"\0"))
    body += _chunk(b"data", pcm)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunks(data: bytes, start: int, end: int):
    """(tag, payload) of the chunks in data[start:end]; a size past the end is cut to what is there
    (a streamed file has unknown sizes)."""
    pos = start
    while pos + 8 <= end:
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        payload_end = min(end, pos + 8 + size)
        yield tag, data[pos + 8 : payload_end]
        pos = pos + 8 + size + (size % 2)


def read_wav_comment(data: bytes) -> str | None:
    """The LIST/INFO ICMT comment of WAV bytes (trailing NULs removed), or None when there is none.
    Raises ValueError when the bytes are not a RIFF/WAVE file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file (no RIFF/WAVE header)")
    for tag, payload in _chunks(data, 12, len(data)):
        if tag == b"LIST" and payload[:4] == b"INFO":
            for sub, text in _chunks(payload, 4, len(payload)):
                if sub == INFO_COMMENT and len(text) <= MAX_COMMENT_BYTES:
                    return text.rstrip(b"\0").decode("utf-8", errors="replace")
    return None
