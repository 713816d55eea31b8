"""Conformance of the vocoder with upstream Step-Audio-EditX ``stepvocoder/cosyvoice2``.

Reads ``$EDITX_REFERENCE_DIR/vocoder`` (fixture ``reference_dir``): the small model folder is
loaded with our normal loader, every case in reference.npz (case a: no prefix, case b: "b_",
...) is discovered from its keys, and every size comes from the files. Bounds follow the
fixture README (measured float32-vs-float64 error of the reference itself).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models.cosyvoice_config import REAL_SIZES, render_cosyvoice_yaml
from models.flow import cosine_t_span
from models.hift import SineDraws
from models.mel import log_mel_spectrogram
from models.vocoder import (
    Vocoder,
    align_prompt_mel,
    bf16_round,
    build_networks,
    reshape_mixed_tokens,
)

MEL_TOL = 1e-4  # frontend mel, flow_mu, estimator outputs, flow_mel (abs)
F0_REL_TOL = 1e-5  # f0 relative to its peak
DECODE_TOL = 1e-5  # waveform from decode(flow_mel, recorded source)
SOURCE_TOL = 1e-3  # source rebuilt from f0 + recorded draws
SPEECH_TOL = 2e-3  # end-to-end waveform with recorded noise and draws


@pytest.fixture(scope="module")
def fixture_dir(reference_dir: Path) -> Path:
    return reference_dir / "vocoder"


@pytest.fixture(scope="module")
def ref(fixture_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixture_dir / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def model_dir(fixture_dir: Path) -> Path:
    dirs = sorted(p.parent for p in (fixture_dir / "small").glob("*/cosyvoice.yaml"))
    assert dirs, f"no model folder with cosyvoice.yaml under {fixture_dir / 'small'}"
    return dirs[0]


@pytest.fixture(scope="module")
def vocoder(model_dir: Path) -> Vocoder:
    return Vocoder.load(model_dir, device="cpu")


def cases(ref: dict) -> list[str]:
    """Case prefixes present: '' for case a, 'b_' for case b, ... (a case has token and prompt_token)."""
    found = [
        k[: -len("token")] for k in ref if k.endswith("token") and k[: -len("token")] + "prompt_token" in ref
    ]
    found = [p for p in found if not p.endswith("prompt_")]
    assert found, "reference.npz lists no case (token / prompt_token arrays)"
    return sorted(found)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def case_inputs(ref: dict, p: str, up_rate: int) -> dict[str, torch.Tensor]:
    token = torch.from_numpy(reshape_mixed_tokens(ref[p + "token"].reshape(-1).tolist()))[None]
    prompt_token = torch.from_numpy(reshape_mixed_tokens(ref[p + "prompt_token"].reshape(-1).tolist()))[None]
    prompt_feat = bf16_round(torch.from_numpy(ref[p + "prompt_feat"]))
    return {
        "token": token,
        "prompt_token": prompt_token,
        "prompt_mel": align_prompt_mel(prompt_feat, up_rate * prompt_token.size(1)),
        "embedding": bf16_round(torch.from_numpy(ref[p + "embedding"])),
        "noise": torch.from_numpy(ref[p + "flow_noise"]),
    }


def n_steps(ref: dict) -> int:
    return len(ref["t_span"]) - 1 if "t_span" in ref else 10


def draws(ref: dict, p: str) -> SineDraws:
    return SineDraws(torch.from_numpy(ref[p + "sine_rand_ini"]), torch.from_numpy(ref[p + "sine_noise"]))


def test_conformance_vocoder_reshape(ref):
    indices = sorted(int(m.group(1)) for k in ref if (m := re.fullmatch(r"reshape_in_(\d+)", k)))
    assert indices, "reference.npz has no reshape_in_i arrays"
    for i in indices:
        out = reshape_mixed_tokens(ref[f"reshape_in_{i}"].tolist())
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, ref[f"reshape_out_{i}"], err_msg=f"reshape case {i}")
    for p in cases(ref):
        for name in ("token", "prompt_token"):
            out = reshape_mixed_tokens(ref[p + name].reshape(-1).tolist())[None]
            np.testing.assert_array_equal(out, ref[p + name + "_reshaped"], err_msg=f"case {p!r} {name}")


def test_conformance_vocoder_prompt_alignment(ref, vocoder):
    for p in cases(ref):
        inputs = case_inputs(ref, p, vocoder.flow.up_rate)
        np.testing.assert_array_equal(
            inputs["prompt_mel"].numpy(), ref[p + "prompt_feat_aligned"], err_msg=f"case {p!r}"
        )


def test_conformance_vocoder_frontend_mel(ref, vocoder):
    names = [k for k in ref if k.endswith("mel_test_signal")]
    assert names
    for name in names:
        expected = ref[name[: -len("_signal")]]
        got = log_mel_spectrogram(ref[name], vocoder.mel_conf).numpy()
        assert got.shape == expected.shape, name
        assert max_abs(got, expected) <= MEL_TOL, name


def test_conformance_vocoder_t_span_and_cfg_rate(ref, fixture_dir, vocoder):
    if "t_span" in ref:
        assert max_abs(cosine_t_span(n_steps(ref)).numpy(), ref["t_span"]) <= 1e-7
    tolerance = json.loads((fixture_dir / "tolerance.json").read_text())
    if "inference_cfg_rate" in tolerance:
        assert vocoder.flow.decoder.inference_cfg_rate == pytest.approx(tolerance["inference_cfg_rate"])


def test_conformance_vocoder_flow_intermediates(ref, vocoder):
    """Speaker projection, encoder output mu and every estimator call, for each case that records them."""
    recorded = [p for p in cases(ref) if any(p + k in ref for k in ("flow_spk_proj", "flow_mu", "est_x"))]
    assert recorded, "reference.npz records no flow intermediates"
    for p in recorded:
        inputs = case_inputs(ref, p, vocoder.flow.up_rate)
        with torch.inference_mode():
            spk = vocoder.flow.speaker_projection(inputs["embedding"])
            mu = vocoder.flow.encode(torch.cat([inputs["prompt_token"], inputs["token"]], dim=1))
        if p + "flow_spk_proj" in ref:
            assert max_abs(spk, ref[p + "flow_spk_proj"]) <= MEL_TOL, f"case {p!r}"
        if p + "flow_mu" in ref:
            assert max_abs(mu, ref[p + "flow_mu"]) <= MEL_TOL, f"case {p!r}"
        calls: list[tuple] = []
        hook = vocoder.flow.decoder.estimator.register_forward_hook(
            lambda _m, args, out, calls=calls: calls.append(tuple(a.clone() for a in args) + (out.clone(),))
        )
        try:
            mel = vocoder.flow.inference(
                inputs["token"],
                inputs["prompt_token"],
                inputs["prompt_mel"],
                inputs["embedding"],
                inputs["noise"],
                n_steps(ref),
            )
        finally:
            hook.remove()
        assert len(calls) == n_steps(ref)
        _x, mask, est_mu, _t, spks, cond, _out = calls[0]
        for name, got in (("est_mask", mask), ("est_mu", est_mu), ("est_spks", spks), ("est_cond", cond)):
            if p + name in ref:
                assert max_abs(got, ref[p + name]) <= MEL_TOL, f"case {p!r} {name}"
        for step, (x, _mask, _mu, t, _spks, _cond, out) in enumerate(calls):
            for name, got in (("est_x", x), ("est_t", t), ("est_out", out)):
                if p + name in ref:
                    assert max_abs(got, ref[p + name][step]) <= MEL_TOL, f"case {p!r} {name} step {step}"
        assert max_abs(mel, ref[p + "flow_mel"]) <= MEL_TOL, f"case {p!r}"


def test_conformance_vocoder_hift_f0(ref, vocoder):
    for p in cases(ref):
        with torch.inference_mode():
            f0 = vocoder.hift.f0_predictor(torch.from_numpy(ref[p + "flow_mel"]))
        expected = ref[p + "hift_f0"]
        assert max_abs(f0, expected) <= F0_REL_TOL * float(np.abs(expected).max()), f"case {p!r}"


def test_conformance_vocoder_hift_decode_with_recorded_source(ref, vocoder):
    for p in cases(ref):
        mel, source = torch.from_numpy(ref[p + "flow_mel"]), torch.from_numpy(ref[p + "hift_source"])
        with torch.inference_mode():
            if p + "hift_s_stft" in ref:
                s_stft = vocoder.hift.source_stft(source)
                assert max_abs(s_stft, ref[p + "hift_s_stft"]) <= DECODE_TOL, f"case {p!r} s_stft"
                if p + "hift_decoder_out" in ref:
                    out = vocoder.hift.decode_without_stft(mel, s_stft)
                    assert max_abs(out, ref[p + "hift_decoder_out"]) <= MEL_TOL, f"case {p!r} decoder"
            speech = vocoder.hift.decode(mel, source)
        assert speech.shape == ref[p + "speech"].shape
        assert max_abs(speech, ref[p + "speech"]) <= DECODE_TOL, f"case {p!r}"


def test_conformance_vocoder_source_from_f0_and_draws(ref, vocoder):
    for p in cases(ref):
        with torch.inference_mode():
            source = vocoder.hift.f0_to_source(torch.from_numpy(ref[p + "hift_f0"]), draws(ref, p))
        assert source.shape == ref[p + "hift_source"].shape
        assert max_abs(source, ref[p + "hift_source"]) <= SOURCE_TOL, f"case {p!r}"


def test_conformance_vocoder_end_to_end(ref, vocoder):
    """Token lists -> reshape -> alignment -> flow -> HiFT, with the recorded noise and draws injected."""
    for p in cases(ref):
        inputs = case_inputs(ref, p, vocoder.flow.up_rate)
        speech, mel, source = vocoder.synthesize(
            inputs["token"],
            inputs["prompt_token"],
            inputs["prompt_mel"],
            inputs["embedding"],
            inputs["noise"],
            n_steps(ref),
            draws=draws(ref, p),
        )
        assert max_abs(mel, ref[p + "flow_mel"]) <= MEL_TOL, f"case {p!r} mel"
        assert max_abs(source, ref[p + "hift_source"]) <= SOURCE_TOL, f"case {p!r} source"
        assert speech.shape == ref[p + "speech"].shape
        assert max_abs(speech, ref[p + "speech"]) <= SPEECH_TOL, f"case {p!r} speech"


def test_conformance_vocoder_small_files_match_manifest(fixture_dir, model_dir, vocoder):
    manifest = json.loads((fixture_dir / "manifest_small.json").read_text())
    for name in ("flow.pt", "hift.pt"):
        entry = manifest[name]
        if "sha256" in entry:
            assert hashlib.sha256((model_dir / name).read_bytes()).hexdigest() == entry["sha256"], name
        state = torch.load(model_dir / name, map_location="cpu", weights_only=True)
        assert len(state) == entry["keys"]
        assert {k: list(v.shape) for k, v in state.items()} == {
            t["key"]: t["shape"] for t in entry["tensors"]
        }
    # the loaded (weight-norm folded) networks are in float32 and finite
    assert all(torch.isfinite(v).all() for v in vocoder.flow.state_dict().values())


def test_conformance_vocoder_real_size_keys_and_shapes(fixture_dir):
    """The reconstructed real cosyvoice.yaml builds (on the meta device) exactly the real checkpoint keys."""
    text = (fixture_dir / "cosyvoice.reconstructed.yaml").read_text()
    flow, hift, _ = build_networks(text, "meta")
    manifest = json.loads((fixture_dir / "manifest_real.json").read_text())
    for name, module in (("flow.pt", flow), ("hift.pt", hift)):
        entry = manifest[name]
        got = {k: list(v.shape) for k, v in module.state_dict().items()}
        expected = {t["key"]: t["shape"] for t in entry["tensors"]}
        assert len(got) == entry["keys"], name
        assert sorted(set(expected) - set(got)) == [], f"{name}: keys we lack"
        assert sorted(set(got) - set(expected)) == [], f"{name}: keys we add"
        assert got == expected, name
        if "numel" in entry:
            assert sum(v.numel() for v in module.state_dict().values()) == entry["numel"], name


def test_conformance_vocoder_rendered_real_yaml_matches_manifest(fixture_dir):
    """Our own real-size cosyvoice.yaml (used by the benchmark) builds the same keys and shapes."""
    flow, hift, _ = build_networks(render_cosyvoice_yaml(REAL_SIZES), "meta")
    manifest = json.loads((fixture_dir / "manifest_real.json").read_text())
    for name, module in (("flow.pt", flow), ("hift.pt", hift)):
        expected = {t["key"]: t["shape"] for t in manifest[name]["tensors"]}
        assert {k: list(v.shape) for k, v in module.state_dict().items()} == expected, name
