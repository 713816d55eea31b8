"""audio_prep: loading, the prompt prelude, the tokenizer's 16 kHz prep and reference validation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile

from audio_prep import (
    prepare_for_tokenizer,
    prompt_prelude,
    speech_span,
    trim_silence,
    validate_reference,
)
from audio_read import load_audio
from errors import AudioInputError


def _voice(seconds: float, sr: int, lead: float = 0.0, tail: float = 0.0, amp: float = 0.5) -> np.ndarray:
    """A harmonic, syllable-modulated tone with digital silence before and after."""
    t = np.arange(int(seconds * sr)) / sr
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2
    x = amp * env * sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 910), 1))
    return np.concatenate([np.zeros(int(lead * sr)), x / 2, np.zeros(int(tail * sr))]).astype(np.float32)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_load_audio_formats_keep_channels_and_rate(tmp_path, fmt):
    stereo = np.stack([_voice(0.5, 22050), 0.5 * _voice(0.5, 22050)])
    path = tmp_path / f"clip.{fmt.lower()}"
    soundfile.write(path, stereo.T, 22050, format=fmt)
    audio, sr = load_audio(path)
    assert sr == 22050 and audio.dtype == np.float32 and audio.shape == stereo.shape
    if fmt != "OGG":  # lossless formats round-trip within 16-bit quantisation
        np.testing.assert_allclose(audio, stereo, atol=1e-4)
    audio_b, sr_b = load_audio(path.read_bytes())
    assert sr_b == sr and audio_b.shape == audio.shape


def test_load_audio_errors_name_the_problem(tmp_path):
    with pytest.raises(AudioInputError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(AudioInputError, match="WAV, FLAC or OGG"):
        load_audio(text)
    buf = io.BytesIO()
    soundfile.write(buf, _voice(1.0, 16000), 16000, format="WAV")
    with pytest.raises(AudioInputError):
        load_audio(buf.getvalue()[:30])  # truncated header


def test_prompt_prelude_mono_mean_and_peak_limit():
    loud = np.stack([np.full(100, 0.9, np.float32), np.full(100, 0.3, np.float32)])
    out = prompt_prelude(loud, 16000)
    assert out.shape == (100,)
    np.testing.assert_allclose(out, 0.6, atol=1e-7)  # mean 0.6 -> not above the limit, unchanged
    louder = np.stack([np.full(100, 1.0, np.float32), np.full(100, 0.8, np.float32)])
    assert np.abs(prompt_prelude(louder, 16000)).max() == pytest.approx(0.6, abs=1e-7)
    quiet = 0.2 * np.ones(50, np.float32)
    np.testing.assert_array_equal(prompt_prelude(quiet, 16000), quiet)


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
def test_prepare_accepts_any_rate_and_keeps_the_length_rule(sr):
    mono = prompt_prelude(_voice(1.3, sr, lead=0.4, tail=0.5), sr)
    out = prepare_for_tokenizer(mono, sr)
    assert out.dtype == np.float32 and len(out) % 240 == 0
    assert np.abs(out).max() == pytest.approx(0.999, abs=1e-3)
    from audio_prep import energy_norm
    from audio_resample import resample

    start, end = speech_span(energy_norm(resample(mono, sr, 16000)))
    assert len(out) == math.ceil((end - start) / 240) * 240 + 4320
    assert 1.2 < (end - start) / 16000 < 1.5  # the silences were cut


def test_trim_silence_pads_with_exact_zeros_when_speech_touches_the_edges():
    x = _voice(1.0, 16000)
    out = trim_silence(x)
    assert len(out) == math.ceil(16000 / 240) * 240 + 4320
    np.testing.assert_array_equal(out[:800], 0.0)  # 0.05 s of left padding
    np.testing.assert_array_equal(out[800 : 800 + 16000], x)
    assert not np.any(out[800 + 16000 :])


def test_trim_silence_follows_the_speech_span():
    x = _voice(1.0, 16000, lead=0.7, tail=0.9)
    start, end = speech_span(x)
    out = trim_silence(x)
    np.testing.assert_array_equal(out, x[start - 800 : start - 800 + len(out)])


def test_validate_reference_accepts_speech_and_rejects_bad_clips():
    sr = 24000
    validate_reference(_voice(2.0, sr, lead=0.3), sr, max_seconds=30)
    validate_reference(np.stack([_voice(2.0, sr)] * 2), sr)  # stereo
    with pytest.raises(AudioInputError, match="silent"):
        validate_reference(np.zeros(sr * 2, np.float32), sr)
    nan = _voice(2.0, sr)
    nan[100] = np.nan
    with pytest.raises(AudioInputError, match="NaN"):
        validate_reference(nan, sr)
    inf = _voice(2.0, sr)
    inf[5] = np.inf
    with pytest.raises(AudioInputError, match="NaN or infinite"):
        validate_reference(inf, sr)
    with pytest.raises(AudioInputError, match="0.5 s of clear speech"):
        validate_reference(_voice(0.2, sr, lead=1.0, tail=1.0), sr)
    with pytest.raises(AudioInputError, match="limit is 5 s"):
        validate_reference(_voice(6.0, sr), sr, max_seconds=5)
    with pytest.raises(AudioInputError, match="empty"):
        validate_reference(np.zeros(0, np.float32), sr)
    with pytest.raises(AudioInputError, match="sample rate"):
        validate_reference(_voice(1.0, sr), 0)
