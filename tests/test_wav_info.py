"""WAV files carrying a comment chunk: written by hand, read back by us, soundfile and FFmpeg."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
import soundfile as sf

from audio_formats import pcm16
from wav_info import read_wav_comment, write_wav


def test_a_long_comment_round_trips_and_the_file_stays_an_ordinary_wav():
    comment = json.dumps({"text": "x" * 20000, "zh": "你好"}, ensure_ascii=True)  # past libsndfile's 2 KiB
    samples = np.sin(np.linspace(0, 200, 24001)).astype(np.float32)
    data = write_wav(samples, 24000, comment)
    assert read_wav_comment(data) == comment
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and np.array_equal(audio, pcm16(samples))
    with av.open(io.BytesIO(data)) as container:  # FFmpeg shows the chunk as the file's comment
        assert container.metadata["comment"] == comment
        assert container.streams.audio[0].rate == 24000


def test_odd_sizes_are_padded_and_utf8_survives():
    data = write_wav(np.zeros(3, np.float32), 16000, "é" * 3)  # 6 bytes + NUL: an odd chunk
    assert len(data) % 2 == 0 and read_wav_comment(data) == "ééé"


def test_no_comment_and_not_a_wav():
    assert read_wav_comment(write_wav(np.zeros(10, np.float32), 24000)) is None
    with pytest.raises(ValueError, match="not a WAV"):
        read_wav_comment(b"ID3 not a wav file at all")
