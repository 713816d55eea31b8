"""patches.funasr_fbank: FunASR's frontends compute torchaudio's fbank (kaldi_fbank) instead of knf's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kaldi_fbank
from models.vq02 import import_funasr
from patches import funasr_fbank

SR = 16000
INT16_SCALE = 1 << 15  # FunASR scales [-1, 1] audio to int16 range before the fbank


@pytest.fixture(scope="module")
def funasr_modules():
    import_funasr()
    import funasr.utils.fbank as dispatcher
    from funasr.register import tables

    if getattr(dispatcher, "_HAS_TORCHAUDIO", False):
        pytest.fail(
            "torchaudio imports here, so the patch is a no-op; these tests assume the "
            "project's stack (no torchaudio build for the pinned torch)"
        )
    return dispatcher, tables


def _audio(samples: int = 9000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x += 0.02 * rng.standard_normal(samples)
    x[2000:2600] = 0.0  # exact zeros, as the tokenizer's trim padding gives
    return x.astype(np.float32)


def _online_frontend_fbank(tables, audio: np.ndarray) -> torch.Tensor:
    """(frames, 80) fbank from WavFrontendOnline, the frontend of the vq02 stream (hamming, no CMVN)."""
    frontend = tables.frontend_classes["WavFrontendOnline"](
        cmvn_file=None, n_mels=80, window="hamming", lfr_m=1, lfr_n=1, dither=0.0
    )
    cache = {"input_cache": torch.empty(1, 0)}
    wave = torch.from_numpy(audio)[None]
    _, feats, _ = frontend.forward_fbank(wave, torch.tensor([wave.shape[1]]), cache=cache)
    return feats[0]


def _ours(audio: np.ndarray) -> torch.Tensor:
    return kaldi_fbank.fbank(
        torch.from_numpy(audio) * INT16_SCALE,
        num_mel_bins=80,
        window_type="hamming",
        energy_floor=0.0,
        dither=0.0,
    )


def test_apply_routes_funasr_frontend_to_kaldi_fbank(funasr_modules):
    dispatcher, tables = funasr_modules
    assert funasr_fbank.apply() is True
    audio = _audio()
    feats = _online_frontend_fbank(tables, audio)
    expected = _ours(audio)
    assert feats.shape == expected.shape == ((len(audio) - 400) // 160 + 1, 80)
    assert torch.equal(feats, expected)


def test_apply_is_idempotent(funasr_modules):
    dispatcher, tables = funasr_modules
    funasr_fbank.apply()
    first = dispatcher.fbank
    assert funasr_fbank.apply() is True and funasr_fbank.apply() is True
    assert dispatcher.fbank is first
    audio = _audio(seed=1)
    assert torch.equal(_online_frontend_fbank(tables, audio), _ours(audio))


def test_without_patch_the_knf_fallback_differs(funasr_modules, monkeypatch):
    dispatcher, tables = funasr_modules
    monkeypatch.setattr(dispatcher, "fbank", dispatcher._fbank_knf)  # FunASR's own fallback, unpatched
    audio = _audio(seed=2)
    knf_feats, ours = _online_frontend_fbank(tables, audio), _ours(audio)
    assert knf_feats.shape == ours.shape
    diff = float((knf_feats - ours).abs().max())
    assert 1e-5 < diff < 2e-3, f"knf vs kaldi_fbank max diff {diff:.3g}"


def test_apply_leaves_torchaudio_backed_funasr_alone(funasr_modules, monkeypatch):
    dispatcher, _ = funasr_modules

    def torchaudio_fbank(waveform, **kwargs):
        raise AssertionError("stands in for torchaudio; never called here")

    monkeypatch.setattr(dispatcher, "_HAS_TORCHAUDIO", True)
    monkeypatch.setattr(dispatcher, "fbank", torchaudio_fbank)
    assert funasr_fbank.apply() is False
    assert dispatcher.fbank is torchaudio_fbank
