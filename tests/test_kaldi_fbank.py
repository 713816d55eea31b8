"""kaldi_fbank: Kaldi's fbank as torchaudio computes it, checked without torchaudio.

Golden values come from (a) a float64 numpy re-derivation of Kaldi's documented recipe written here
independently (frames, DC removal, pre-emphasis, window, |FFT|^2, HTK mel triangles, log floor), and
(b) kaldi-native-fbank, a separate C++ implementation that agrees with Kaldi to about 1e-3.
"""

from __future__ import annotations

import math

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

import kaldi_fbank

SR = 16000
FRAME, HOP, NFFT = 400, 160, 512  # 25 ms / 10 ms at 16 kHz, next power of two
F32_EPS = float(np.finfo(np.float32).eps)


def _mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _reference_banks(bins: int, low: float = 20.0, high: float = 0.0) -> np.ndarray:
    """(bins, NFFT/2) float64 Kaldi MelBanks: triangles between equally spaced mel edges."""
    high = high if high > 0 else SR / 2 + high
    mel_low, mel_high = _mel(low), _mel(high)
    delta = (mel_high - mel_low) / (bins + 1)
    fft_mel = _mel(np.arange(NFFT // 2) * SR / NFFT)
    banks = np.zeros((bins, NFFT // 2))
    for b in range(bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        for i, m in enumerate(fft_mel):
            if left < m < right:
                banks[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    return banks


def _reference_fbank(x: np.ndarray, bins: int, window: str) -> np.ndarray:
    """(frames, bins) float64 log mel fbank following Kaldi's FeatureWindowFunction/ProcessWindow."""
    x = np.asarray(x, dtype=np.float64)
    n = np.arange(FRAME)
    cos = np.cos(2 * math.pi * n / (FRAME - 1))
    win = 0.54 - 0.46 * cos if window == "hamming" else (0.5 - 0.5 * cos) ** 0.85
    banks = _reference_banks(bins)
    count = 0 if len(x) < FRAME else 1 + (len(x) - FRAME) // HOP
    out = np.zeros((count, bins))
    for t in range(count):
        frame = x[t * HOP : t * HOP + FRAME].copy()
        frame -= frame.mean()
        frame[1:] -= 0.97 * frame[:-1].copy()
        frame[0] -= 0.97 * frame[0]
        power = np.abs(np.fft.rfft(frame * win, NFFT)) ** 2
        out[t] = np.log(np.maximum(banks @ power[: NFFT // 2], F32_EPS))
    return out


def _speech_like(samples: int, seed: int = 0) -> np.ndarray:
    """int16-range float32 test signal: harmonics + noise, with a stretch of exact zeros."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    x = 6000 * np.sin(2 * np.pi * 150 * t) + 3000 * np.sin(2 * np.pi * 1320 * t)
    x += 800 * rng.standard_normal(samples)
    x[FRAME + 3 * HOP : FRAME + 8 * HOP] = 0.0  # silent frames hit the float32-eps log floor
    return x.astype(np.float32)


def _knf(x: np.ndarray, bins: int, window: str) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = window
    opts.mel_opts.num_bins = bins
    opts.energy_floor = 0.0
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SR, x)
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def test_mel_banks_match_kaldi_formula():
    ours = kaldi_fbank.mel_banks(80, NFFT, SR).numpy()
    assert ours.shape == (80, NFFT // 2 + 1) and ours.dtype == np.float32
    assert not ours[:, -1].any(), "the Nyquist bin must carry no weight"
    np.testing.assert_allclose(ours[:, :-1], _reference_banks(80), atol=2e-5)
    other = kaldi_fbank.mel_banks(40, NFFT, SR, low_freq=50.0, high_freq=-400.0).numpy()
    np.testing.assert_allclose(other[:, :-1], _reference_banks(40, 50.0, -400.0), atol=2e-5)


@pytest.mark.parametrize("window", ["hamming", "povey"])
def test_fbank_matches_float64_kaldi_recipe(window):
    x = _speech_like(SR // 2)
    ours = kaldi_fbank.fbank(torch.from_numpy(x), num_mel_bins=80, window_type=window, energy_floor=0.0)
    assert ours.dtype == torch.float32
    expected = _reference_fbank(x, 80, window)
    assert ours.shape == expected.shape == (1 + (len(x) - FRAME) // HOP, 80)
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-3, rtol=0)
    # float32 FFT error is relative to a frame's loudest band; within 10 nats (43 dB) of it, far closer
    loud = expected > expected.max(axis=1, keepdims=True) - 10.0
    assert loud.mean() > 0.8 and np.abs(ours.numpy() - expected)[loud].max() < 1e-4
    silent = np.all(expected == np.log(F32_EPS), axis=1)
    assert silent.sum() >= 2 and np.all(ours.numpy()[silent] == np.float32(np.log(np.float32(F32_EPS))))


@pytest.mark.parametrize("window", ["hamming", "povey"])
def test_fbank_agrees_with_kaldi_native_fbank(window):
    x = _speech_like(SR // 4, seed=1)
    ours = kaldi_fbank.fbank(x, num_mel_bins=80, window_type=window, energy_floor=0.0).numpy()
    theirs = _knf(x, 80, window)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 2e-3


def test_windows_differ_and_are_kaldis():
    hamming = kaldi_fbank.feature_window("hamming", FRAME).numpy()
    povey = kaldi_fbank.feature_window("povey", FRAME).numpy()
    assert hamming[0] == pytest.approx(0.08) and povey[0] == 0.0
    for window in (hamming, povey):  # symmetric: peak 1 at the centre
        assert window[FRAME // 2] == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(window, window[::-1], atol=1e-6)
    x = _speech_like(SR // 10)
    a = kaldi_fbank.fbank(x, num_mel_bins=80, window_type="hamming")
    b = kaldi_fbank.fbank(x, num_mel_bins=80, window_type="povey")
    assert (a - b).abs().max() > 0.1
    with pytest.raises(ValueError, match="window_type"):
        kaldi_fbank.fbank(x, window_type="kaiser")


@pytest.mark.parametrize(
    "samples, frames", [(0, 0), (FRAME - 1, 0), (FRAME, 1), (FRAME + HOP - 1, 1), (FRAME + HOP, 2)]
)
def test_frame_count_edges(samples, frames):
    x = _speech_like(max(samples, 1))[:samples]
    out = kaldi_fbank.fbank(x, num_mel_bins=80)
    assert out.shape == (frames, 80) and out.dtype == torch.float32
    if frames:
        np.testing.assert_allclose(out.numpy(), _reference_fbank(x, 80, "povey"), atol=2e-3)


def test_channels_and_dtypes():
    x = _speech_like(2000)
    mono = kaldi_fbank.fbank(x, num_mel_bins=80)
    assert torch.equal(kaldi_fbank.fbank(torch.from_numpy(x)[None], num_mel_bins=80), mono)
    stereo = torch.from_numpy(np.stack([x, x[::-1].copy()]))
    with pytest.raises(ValueError, match="channels"):
        kaldi_fbank.fbank(stereo, num_mel_bins=80)
    assert torch.equal(kaldi_fbank.fbank(stereo, num_mel_bins=80, channel=0), mono)
    with pytest.raises(TypeError, match="floating point"):
        kaldi_fbank.fbank(torch.zeros(2000, dtype=torch.int16))
    assert kaldi_fbank.fbank(torch.from_numpy(x).double(), num_mel_bins=80).dtype == torch.float64


def test_dither_uses_the_torch_rng():
    x = torch.from_numpy(_speech_like(2000))
    torch.manual_seed(0)
    a = kaldi_fbank.fbank(x, num_mel_bins=80, dither=1.0)
    torch.manual_seed(0)
    b = kaldi_fbank.fbank(x, num_mel_bins=80, dither=1.0)
    assert torch.equal(a, b) and not torch.equal(a, kaldi_fbank.fbank(x, num_mel_bins=80))


def test_energy_column_and_options():
    x = _speech_like(2000)
    plain = kaldi_fbank.fbank(x, num_mel_bins=23)
    with_energy = kaldi_fbank.fbank(x, num_mel_bins=23, use_energy=True)
    assert with_energy.shape == (plain.shape[0], 24) and torch.equal(with_energy[:, 1:], plain)
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), FRAME)[::HOP]
    raw = np.sum((frames - frames.mean(1, keepdims=True)) ** 2, axis=1)
    np.testing.assert_allclose(
        with_energy[:, 0].numpy(), np.maximum(np.log(np.maximum(raw, F32_EPS)), 0.0), atol=1e-4
    )  # energy_floor 1.0: log floor 0
    htk = kaldi_fbank.fbank(x, num_mel_bins=23, use_energy=True, htk_compat=True)
    assert torch.equal(htk[:, -1], with_energy[:, 0])
    linear = kaldi_fbank.fbank(x, num_mel_bins=23, use_log_fbank=False)
    np.testing.assert_allclose(linear.clamp_min(F32_EPS).log().numpy(), plain.numpy(), atol=1e-5)
    with pytest.raises(NotImplementedError, match="VTLN"):
        kaldi_fbank.fbank(x, vtln_warp=0.9)


def test_speaker_features_use_cosyvoice_fbank():
    from models.speaker import kaldi_fbank as speaker_fbank

    x = _speech_like(SR // 5) / 32768.0  # CosyVoice feeds [-1, 1] audio, unscaled
    feats = speaker_fbank(x)
    assert feats.dtype == np.float32 and feats.shape == (1 + (len(x) - FRAME) // HOP, 80)
    expected = kaldi_fbank.fbank(torch.from_numpy(x), num_mel_bins=80, dither=0.0, sample_frequency=SR)
    np.testing.assert_array_equal(feats, expected.numpy())
    assert np.abs(feats - _reference_fbank(x, 80, "povey")).max() < 2e-3
    with pytest.raises(ValueError, match="too short"):
        speaker_fbank(x[: FRAME - 1])
