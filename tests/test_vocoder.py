"""Vocoder behaviour through its public interface, on the demo model written by our own script."""

from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from errors import ModelFilesError
from model_layout import VOCODER_FOLDER
from models.cosyvoice_config import (
    DEMO_SIZES,
    load_cosyvoice_config,
    render_cosyvoice_yaml,
)
from models.dit import DiT
from models.flow import CausalMaskedDiffWithXvec, UpsampleConformerEncoderV2
from models.hift import ConvRNNF0Predictor, HiFTGenerator
from models.prompt_features import PromptFeatures
from models.vocoder import Vocoder, reshape_mixed_tokens

SUBDIR = Path(VOCODER_FOLDER)
SAMPLES_PER_GROUP = 2880  # 5 mixed tokens = 3 frames at 25 Hz = 0.12 s at 24 kHz


@pytest.fixture(scope="module")
def cosyvoice_dir(demo_vocoder_root: Path) -> Path:
    return demo_vocoder_root / SUBDIR


@pytest.fixture(scope="module")
def vocoder(cosyvoice_dir: Path) -> Vocoder:
    return Vocoder.load(cosyvoice_dir, device="cpu")


def mixed_tokens(groups: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _ in range(groups):
        out += rng.integers(0, 1024, 2).tolist() + rng.integers(1024, 5120, 3).tolist()
    return out


def voice(sample_rate: int, seconds: float = 0.6, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * 180 * t) + 0.2 * np.sin(2 * np.pi * 530 * t + 1.0)
    stacked = np.stack([tone * (0.8 + 0.1 * c) for c in range(channels)]).astype(np.float32)
    return stacked[0] if channels == 1 else stacked


@pytest.fixture(scope="module")
def prompt(vocoder: Vocoder) -> PromptFeatures:
    return vocoder.prompt_features(voice(24000), 24000)


# ---- reshape ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(15))
def test_reshape_pads_partial_groups_like_upstream(length):
    mixed = mixed_tokens(3, seed=length)[:length]
    out = reshape_mixed_tokens(mixed)
    groups = math.ceil(length / 5)
    assert out.shape == (3 * groups, 2) and out.dtype == np.int64
    padded = mixed + [0, 0, 0, 1024, 1024, 1024][len(mixed) % 5 + 1 :] if length % 5 else mixed
    assert len(padded) == 5 * groups
    for g in range(groups):
        a, b, x, y, z = padded[5 * g : 5 * g + 5]
        assert out[3 * g : 3 * g + 3, 0].tolist() == [a, b, 1024]
        assert out[3 * g : 3 * g + 3, 1].tolist() == [x + 1, y + 1, z + 1]  # vq06 - 1024 + 1025
    assert mixed == mixed_tokens(3, seed=length)[:length]  # the caller's list is not modified


def test_reshape_padding_tail_values():
    # the tail of [0, 0, 0, 1024, 1024, 1024] completes the group: one short -> [1024], four -> [0, 1024 x3]
    assert reshape_mixed_tokens([5, 6, 1030, 1031])[:, 1].tolist() == [1031, 1032, 1025]
    assert reshape_mixed_tokens([7])[:, 0].tolist() == [7, 0, 1024]
    assert reshape_mixed_tokens([7])[:, 1].tolist() == [1025, 1025, 1025]


# ---- config reader ---------------------------------------------------------------------------


def test_yaml_tags_map_to_our_classes():
    with torch.device("meta"):
        config = load_cosyvoice_config(render_cosyvoice_yaml(DEMO_SIZES))
    flow, hift = config["flow"], config["hift"]
    assert isinstance(flow, CausalMaskedDiffWithXvec) and isinstance(hift, HiFTGenerator)
    assert isinstance(flow.encoder, UpsampleConformerEncoderV2)
    assert isinstance(flow.decoder.estimator, DiT)
    assert isinstance(hift.f0_predictor, ConvRNNF0Predictor)
    assert flow.decoder.inference_cfg_rate == pytest.approx(DEMO_SIZES["inference_cfg_rate"])
    assert config["mel_conf"]["hop_size"] == 480


def test_yaml_ref_and_name_tags():
    text = """
width: 16
double: !ref <width> * 2
conf: {rate: 24000}
rate: !ref <conf[rate]>
make_dit: !name:some.module.DiT
    in_channels: 320
    out_channels: 80
    depth: 1
    num_heads: 2
    head_dim: 8
hift_f0: !new:anything.ConvRNNF0Predictor
    cond_channels: !ref <double>
"""
    with torch.device("meta"):
        config = load_cosyvoice_config(text)
        dit = config["make_dit"](hidden_size=config["width"])
    assert config["double"] == 32 and config["rate"] == 24000
    assert isinstance(config["make_dit"], functools.partial) and isinstance(dit, DiT)
    assert config["hift_f0"].classifier.in_features == 32


@pytest.mark.parametrize(
    "text, needle",
    [
        ("x: !apply:torch.manual_seed [0]\n", "!apply:torch.manual_seed"),
        ("x: !new:stepvocoder.cosyvoice2.bigvgan.bigvgan.BigVGAN\n    num_mels: 80\n", "BigVGAN"),
        ("x: !ref <missing>\n", "missing"),
        ("x: !new:models.dit.DiT\n    in_channels: 320\n    not_an_argument: 1\n", "not_an_argument"),
    ],
)
def test_yaml_unknown_tag_or_class_fails_clearly(text, needle):
    with pytest.raises(ModelFilesError, match=needle.replace("[", r"\[")):
        with torch.device("meta"):
            load_cosyvoice_config(text)


# ---- strict checkpoint loading ---------------------------------------------------------------


def _broken_copy(src: Path, dst: Path, file: str, edit) -> Path:
    shutil.copytree(src, dst)
    state = torch.load(dst / file, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, dst / file)
    return dst


def test_wrong_shaped_key_is_named(cosyvoice_dir, tmp_path):
    key = "decoder.estimator.in_proj.weight"
    bad = _broken_copy(
        cosyvoice_dir, tmp_path / "m", "flow.pt", lambda s: s.__setitem__(key, torch.zeros(3, 320))
    )
    with pytest.raises(ValueError, match=f"wrong shapes.*{key}"):
        Vocoder.load(bad, device="cpu")


def test_missing_and_unexpected_keys_are_named(cosyvoice_dir, tmp_path):
    key = "conv_post.parametrizations.weight.original1"
    bad = _broken_copy(
        cosyvoice_dir, tmp_path / "m", "hift.pt", lambda s: s.__setitem__("extra.weight", s.pop(key))
    )
    with pytest.raises(ValueError, match="missing keys") as err:
        Vocoder.load(bad, device="cpu")
    assert key in str(err.value) and "extra.weight" in str(err.value)


def test_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(ModelFilesError, match="cosyvoice.yaml"):
        Vocoder.load(tmp_path, device="cpu")


# ---- decoding --------------------------------------------------------------------------------


def test_decode_is_reproducible_per_seed(vocoder, prompt):
    tokens, prompt_tokens = mixed_tokens(4, seed=1), mixed_tokens(3, seed=2)
    first = vocoder.decode(tokens, prompt_tokens, prompt, n_steps=3, seed=5)
    again = vocoder.decode(tokens, prompt_tokens, prompt, n_steps=3, seed=5)
    other = vocoder.decode(tokens, prompt_tokens, prompt, n_steps=3, seed=6)
    assert first.dtype == np.float32 and first.shape == (4 * SAMPLES_PER_GROUP,)
    assert np.isfinite(first).all() and np.abs(first).max() <= 0.99
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-6


def test_decode_lengths_steps_and_partial_groups(vocoder, prompt):
    tokens = mixed_tokens(3, seed=3)[:-2]  # a stray partial group is padded, as upstream does
    wave = vocoder.decode(tokens, mixed_tokens(2, seed=4), prompt, n_steps=1, seed=0)
    assert wave.shape == (3 * SAMPLES_PER_GROUP,)
    no_prompt = vocoder.decode(mixed_tokens(2, seed=3), [], prompt, n_steps=2, seed=None)
    assert no_prompt.shape == (2 * SAMPLES_PER_GROUP,) and np.isfinite(no_prompt).all()


@pytest.mark.parametrize(
    "tokens, prompt_tokens, match",
    [
        ([], [1, 2, 1030, 1031, 1032], "no audio tokens"),
        ([1, 2, 1030, 1031, 5120], [], r"tokens\[4\] = 5120"),
        ([1, 2, 1030, 1031, 1032], [-1], r"prompt_tokens\[0\] = -1"),
    ],
)
def test_decode_rejects_bad_tokens(vocoder, prompt, tokens, prompt_tokens, match):
    with pytest.raises(ValueError, match=match):
        vocoder.decode(tokens, prompt_tokens, prompt)


# ---- prompt features -------------------------------------------------------------------------


@pytest.mark.parametrize("sample_rate", [8000, 16000, 22050, 24000, 44100, 48000])
def test_prompt_features_shapes(vocoder, sample_rate):
    feats = vocoder.prompt_features(voice(sample_rate), sample_rate)
    n_24k = math.ceil(int(0.6 * sample_rate) * 24000 / sample_rate)
    assert feats.mel.shape == (n_24k // 480, 80) and feats.mel.dtype == np.float32
    assert feats.speaker_embedding.shape == (192,) and feats.speaker_embedding.dtype == np.float32
    assert np.isfinite(feats.mel).all() and np.isfinite(feats.speaker_embedding).all()


def test_prompt_features_stereo_and_loud_input_follow_the_prelude(vocoder):
    stereo = 2 * voice(24000, channels=2)  # peak of the mono mix ~1.2 > 0.6
    mono_quiet = stereo.mean(axis=0)
    mono_quiet = mono_quiet / np.abs(mono_quiet).max() * 0.6
    a = vocoder.prompt_features(stereo, 24000)
    b = vocoder.prompt_features(mono_quiet, 24000)
    np.testing.assert_allclose(a.mel, b.mel, atol=1e-4)
    np.testing.assert_allclose(a.speaker_embedding, b.speaker_embedding, atol=1e-4)


def test_prompt_features_differ_between_voices(vocoder):
    low = vocoder.prompt_features(voice(16000), 16000)
    t = np.arange(9600) / 16000
    high = vocoder.prompt_features((0.4 * np.sign(np.sin(2 * np.pi * 900 * t))).astype(np.float32), 16000)
    assert np.abs(low.speaker_embedding - high.speaker_embedding).max() > 1e-3


def test_fingerprint_is_stable_and_cpu_stays_float32(cosyvoice_dir, vocoder):
    again = Vocoder.load(cosyvoice_dir, device="cpu", dtype="bf16")
    assert again.fingerprint == vocoder.fingerprint and len(vocoder.fingerprint) == 16
    assert again.dtype == torch.float32 and again.sample_rate == 24000
