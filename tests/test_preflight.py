"""Reference preflight: measurements on synthetic clips, warnings via the demo Paraformer."""

from __future__ import annotations

import numpy as np
import pytest

from audio_prep import TOKENIZER_SAMPLE_RATE
from demo.examples import synthetic_voice
from model_layout import TOKENIZER_FOLDER
from preflight import (
    MAX_SNR_DB,
    MIN_SNR_DB,
    clipped_share,
    loudness_lufs,
    snr_estimate_db,
)
from synthesis import EngineConfig
from tokenizer import StepAudioTokenizer
from voice_prompts import VoicePrompts

SR = 24000


@pytest.fixture(scope="module")
def voices(demo_tokenizer_root) -> VoicePrompts:
    """The preflight needs the tokenizer only (its Paraformer gives the transcript)."""
    tokenizer = StepAudioTokenizer(demo_tokenizer_root / TOKENIZER_FOLDER)
    return VoicePrompts(tokenizer, None, None, None, EngineConfig(max_reference_seconds=20.0))


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return synthetic_voice(4.0, SR, f0=140.0, seed=3)


def codes(check) -> list[str]:
    return [w.code for w in check.warnings]


def test_measurements_are_real_computations():
    t = np.arange(3 * 48000) / 48000
    sine = np.sin(2 * np.pi * 997 * t).astype(np.float32)  # BS.1770: a full-scale 997 Hz sine is -3.01 LUFS
    assert loudness_lufs(sine, 48000) == pytest.approx(-3.01, abs=0.1)
    assert loudness_lufs(0.1 * sine, 48000) == pytest.approx(-23.01, abs=0.1)
    assert loudness_lufs(sine[:4000], 48000) is None  # shorter than one 400 ms block
    assert loudness_lufs(np.zeros(48000, np.float32), 48000) is None  # gated away: silence
    assert clipped_share(np.array([0.0, 0.995, -1.0, 0.5], np.float32)) == 0.5
    voice = synthetic_voice(4.0, TOKENIZER_SAMPLE_RATE, seed=1)
    noise = np.random.default_rng(0).standard_normal(voice.size).astype(np.float32)
    assert snr_estimate_db(voice) > 30
    assert snr_estimate_db(voice + 0.1 * noise) < MIN_SNR_DB
    assert snr_estimate_db(np.concatenate([voice, np.zeros(8000, np.float32)])) == MAX_SNR_DB


def test_a_clean_reference_with_its_own_words_passes(voices, clean):
    transcript = voices.tokenizer.encode(clean, SR, transcribe=True).transcript
    check = voices.preflight(clean, SR, transcript)
    assert check.warnings == [] and check.usable
    assert check.text_error_rate == 0.0 and check.transcript == transcript
    assert check.duration_s == pytest.approx(4.0) and check.clipped_share == 0.0 and check.snr_db > 30
    assert -30 < check.loudness_lufs < -15 and check.channels == 1 and check.seconds > 0
    assert voices.preflight(clean, SR).warnings == []  # no text typed: nothing to compare


def test_a_clipped_reference_is_flagged(voices, clean):
    check = voices.preflight(np.clip(4 * clean, -1.0, 1.0), SR)
    assert codes(check) == ["clipped"] and check.clipped_share > 0.01
    assert check.warnings[0].message.startswith(f"clipped {check.clipped_share:.1%} of samples")


def test_a_short_reference_is_flagged(voices):
    check = voices.preflight(synthetic_voice(2.1, SR, seed=4), SR)
    assert codes(check) == ["short"] and check.warnings[0].message.startswith("2.1 s: use at least 3 s")


def test_a_text_that_is_not_what_is_said_is_flagged(voices, clean):
    check = voices.preflight(clean, SR, "completely different words that nobody said")
    assert codes(check) == ["text_mismatch"] and check.text_error_rate > 0.3 and check.text_metric == "wer"
    message = check.warnings[0].message
    assert message.startswith("the text you typed does not match what is said (WER ")
    assert message.endswith("the clone will follow the audio, fix the text or leave it empty")
    assert voices.preflight(clean, SR, "こんにちは").text_note.endswith("not scored")


def test_noise_and_silence_suggest_the_edit_that_fixes_them(voices, clean):
    noise = np.random.default_rng(1).standard_normal(clean.size).astype(np.float32)
    noisy = voices.preflight(clean + 0.1 * noise, SR)
    assert codes(noisy) == ["noisy"] and noisy.warnings[0].suggestion == "denoise"
    padded = voices.preflight(np.concatenate([clean[: 2 * SR], np.zeros(4 * SR, np.float32)]), SR)
    assert codes(padded) == ["silence"] and padded.warnings[0].suggestion == "vad"


def test_a_clip_the_clone_would_refuse_is_measured_and_marked_unusable(voices):
    blip = np.concatenate([synthetic_voice(0.3, SR, seed=2), np.zeros(3 * SR, np.float32)])
    check = voices.preflight(blip, SR)
    assert not check.usable and "unusable" in codes(check) and check.transcript is None
    assert check.to_dict()["warnings"][0]["code"] == "unusable"
