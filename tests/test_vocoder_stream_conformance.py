"""Conformance of the streaming vocoder with upstream ``CosyVoice.token2wav_stream``.

Reads ``$EDITX_REFERENCE_DIR/vocoder/stream_reference.npz`` (fixture ``reference_dir``): every case
listed in its ``cases`` array is replayed call by call from its recorded schedule (``call_sizes``,
``call_last``) in the reference-compatible configuration (``REFERENCE_OPTIONS``), with the recorded
flow noise and HiFT draws injected through the session's own hooks. Every size comes from the
files. Bounds are the fixture README's (measured float32-vs-float64 error of the reference itself).

Deliberate differences (models/vocoder_stream.py, docs/STREAMING.md): where the reference's last
call returns nothing (a session never set up: fewer than 5 tokens, or every token in that call),
ours flushes the whole remaining waveform. Those calls are asserted as our behaviour; all else
as the fixture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from models.hift import SineDraws
from models.prompt_features import PromptFeatures
from models.vocoder import Vocoder, reshape_mixed_tokens
from models.vocoder_stream import (
    CHUNK_FRAMES,
    ESTIMATOR_LEFT_CONTEXT,
    MEL_CACHE_FRAMES,
    PRE_LOOKAHEAD_FRAMES,
    REFERENCE_OPTIONS,
    SOURCE_CACHE_SAMPLES,
    SPEECH_WINDOW,
    CrossFade,
    StreamChunk,
)

STREAM_FILE = "stream_reference.npz"
MEL_TOL = 1e-4  # setup_mu, chunk_mu, setup_feat, chunk_flow_mel, hift_mel_in (abs)
F0_REL_TOL = 1e-5  # f0 relative to the chunk's peak
DECODE_TOL = 1e-5  # hift_speech from decode(hift_mel_in, hift_source)
PIECE_TOL = 1e-6  # returned pieces from hift_speech (cross-fade + hold-back)
SOURCE_TOL = 1e-3  # source rebuilt from f0 + recorded draws + cached prefix
SPEECH_TOL = 2e-3  # end-to-end waveform with recorded noise and draws


@pytest.fixture(scope="module")
def fixture_dir(reference_dir: Path) -> Path:
    return reference_dir / "vocoder"


@pytest.fixture(scope="module")
def ref(fixture_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixture_dir / STREAM_FILE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def vocoder(fixture_dir: Path) -> Vocoder:
    dirs = sorted(p.parent for p in (fixture_dir / "small").glob("*/cosyvoice.yaml"))
    assert dirs, f"no model folder with cosyvoice.yaml under {fixture_dir / 'small'}"
    return Vocoder.load(dirs[0], device="cpu")


@pytest.fixture(scope="module")
def n_steps(fixture_dir: Path) -> int:
    """Euler steps of the recorded sessions: from the non-stream fixture's t_span (upstream's default 10)."""
    with np.load(fixture_dir / "reference.npz") as data:
        return len(data["t_span"]) - 1 if "t_span" in data.files else 10


def cases(ref: dict) -> list[str]:
    names = [str(c) for c in ref["cases"]]
    assert names, f"{STREAM_FILE} lists no case"
    return names


def max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def bounds(lengths) -> list[tuple[int, int]]:
    """Consecutive [start, end) spans of the given lengths (how the fixture concatenates per-chunk arrays)."""
    lengths = np.asarray(lengths, dtype=np.int64).tolist()
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    return [(end - n, end) for n, end in zip(lengths, ends, strict=True)]


def recorded_draws(ref: dict, p: str, k: int, samples_per_frame: int) -> SineDraws:
    """The k-th HiFT call's recorded draws (sine_rand_ini row k, slice k of sine_noise)."""
    start, end = bounds(np.asarray(ref[p + "hift_mel_len"]) * samples_per_frame)[k]
    rand_ini = torch.from_numpy(ref[p + "sine_rand_ini"][k : k + 1])
    return SineDraws(rand_ini, torch.from_numpy(ref[p + "sine_noise"][:, start:end]))


def samples_for(vocoder: Vocoder, n_tokens: int) -> int:
    """Waveform samples of n mixed tokens: whole padded groups, as the non-stream path makes."""
    pairs = reshape_mixed_tokens([0] * n_tokens).shape[0] if n_tokens else 0
    return pairs * vocoder.flow.up_rate * vocoder.hift.upsample_scale


def expected_outputs(ref: dict, p: str, vocoder: Vocoder) -> tuple[list[int], list[int]]:
    """Samples returned per call (-1: None): the fixture's, except where its last call returned None
    (the reference never set the session up, or set it up in that very call): we flush the rest there.
    Also returns the indices of those calls."""
    out = ref[p + "call_out_len"].astype(np.int64).tolist()
    sizes = ref[p + "call_sizes"].tolist()
    deviations = []
    for i, last in enumerate(ref[p + "call_last"].tolist()):
        if last and out[i] < 0:
            out[i] = samples_for(vocoder, sum(sizes[: i + 1])) - sum(n for n in out[:i] if n > 0)
            deviations.append(i)
    return out, deviations


@dataclass
class Replay:
    outputs: list[np.ndarray | None]
    setup: list[StreamChunk]
    chunks: list[StreamChunk]
    closed: bool


def replay(ref: dict, case: str, vocoder: Vocoder, n_steps: int) -> Replay:
    """Run one recorded schedule through a reference-compatible session with the recorded randomness."""
    p = case + "_"
    tokens = ref[p + "token"].reshape(-1).tolist()
    prompt_tokens = ref[p + "prompt_token"].reshape(-1).tolist()
    sizes, lasts = ref[p + "call_sizes"].tolist(), ref[p + "call_last"].tolist()
    assert sum(sizes) <= len(tokens), f"case {case}: the schedule feeds more tokens than recorded"
    assert lasts and lasts[-1] and not any(lasts[:-1]), f"case {case}: only the final call may be last"
    recorded = len(ref[p + "hift_mel_len"])
    samples_per_frame = vocoder.hift.upsample_scale

    def sine_draws(k: int, samples: int) -> SineDraws:
        if k < recorded:
            draws = recorded_draws(ref, p, k, samples_per_frame)
            assert samples == draws.noise.size(1), f"case {case}: HiFT call {k} has {samples} samples"
            return draws
        # a chunk the reference never made (our flush): any fixed draws
        return SineDraws.draw(1, samples, vocoder.hift.m_source.dim, torch.Generator().manual_seed(k))

    # every noise frame the reference read, then seeded frames for chunks only we make
    pairs = len(reshape_mixed_tokens(prompt_tokens)) + len(reshape_mixed_tokens(tokens))
    extra = torch.randn(1, 80, vocoder.flow.up_rate * pairs, generator=torch.Generator().manual_seed(0))
    noise = torch.cat([torch.from_numpy(ref[p + "flow_noise"]), extra], dim=2)
    records: list[StreamChunk] = []
    prompt = PromptFeatures(mel=ref[p + "prompt_feat"][0], speaker_embedding=ref[p + "embedding"][0])
    stream = vocoder.stream(
        prompt_tokens,
        prompt,
        n_steps,
        seed=0,
        options=REFERENCE_OPTIONS,
        noise=noise,
        sine_draws=sine_draws,
        on_chunk=records.append,
    )
    outputs, fed = [], 0
    for size, last in zip(sizes, lasts, strict=True):
        outputs.append(stream.feed(tokens[fed : fed + size], last=bool(last)))
        fed += size
    setup, chunks = [r for r in records if r.setup], [r for r in records if not r.setup]
    return Replay(outputs, setup, chunks, stream.closed)


@pytest.fixture(scope="module")
def replays(ref, vocoder, n_steps, one_torch_thread) -> dict[str, Replay]:
    return {case: replay(ref, case, vocoder, n_steps) for case in cases(ref)}


def fixture_shape(row: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in row if v >= 0)


def check_cache_shapes(ours: dict, rows: np.ndarray, vocoder: Vocoder, n_steps: int, where: str) -> None:
    """Our cache layout against the fixture's rows (conformer cnn, conformer att, estimator cnn,
    estimator att, HiFT mel, source, speech): every frame count exact, widths from the model."""
    cnn, att, est_cnn, est_att, hift_mel, source, speech = (fixture_shape(r) for r in rows)
    lookahead, upsample = ours["encoder_lookahead"], ours["encoder_upsample"]
    assert (*lookahead[:2], lookahead[2] + upsample[2]) == cnn, where
    token_att, mel_att = ours["encoder_token_att"], ours["encoder_mel_att"]
    assert (token_att[0] + mel_att[0], *mel_att[1:]) == att, where
    # upstream stores the token-rate stage's frames twice along time; we keep them once
    assert (*token_att[1:3], vocoder.flow.up_rate * token_att[3], token_att[4]) == mel_att[1:], where
    for name, expected in (("estimator_conv", est_cnn), ("estimator_att", est_att)):
        # one slot per Euler step (upstream: a fixed 16-slot buffer of which the first n_steps are used)
        assert ours[name][0] == n_steps <= expected[0], f"{where} {name}"
        assert ours[name][1:] == expected[1:], f"{where} {name}"
    assert (ours["hift_mel"], ours["hift_source"], ours["speech_tail"]) == (hift_mel, source, speech), where


def test_conformance_vocoder_stream_constants(ref, vocoder):
    assert list(CHUNK_FRAMES) == ref["chunk_size_list"].tolist()
    assert PRE_LOOKAHEAD_FRAMES == int(ref["pre_lookahead_len"]) == vocoder.flow.pre_lookahead_len
    assert MEL_CACHE_FRAMES == int(ref["mel_cache_len"])
    assert SOURCE_CACHE_SAMPLES == int(ref["source_cache_len"])
    assert SOURCE_CACHE_SAMPLES == MEL_CACHE_FRAMES * vocoder.hift.upsample_scale
    assert ESTIMATOR_LEFT_CONTEXT == int(ref["estimator_left_context"])
    assert SPEECH_WINDOW.dtype == ref["speech_window"].dtype
    np.testing.assert_array_equal(SPEECH_WINDOW, ref["speech_window"])


def test_conformance_vocoder_stream_protocol(ref, replays, vocoder, n_steps):
    """Per-call output lengths (None included), setup call, chunk calls, tokens, noise offsets, caches."""
    for case in cases(ref):
        p, run = case + "_", replays[case]
        expected, deviations = expected_outputs(ref, p, vocoder)
        got = [-1 if out is None else out.size for out in run.outputs]
        assert got == expected, f"case {case}: samples per call"
        assert run.closed, f"case {case}: the session must be closed after its last call"
        for out in run.outputs:
            assert out is None or (out.dtype == np.float32 and out.ndim == 1), f"case {case}"

        setup_call = int(ref[p + "setup_call"])
        # never set up by the reference: ours sets up in the flushing call if it holds any token
        expected_setup = [setup_call] if setup_call >= 0 else [i for i in deviations if expected[i] > 0]
        assert [r.call for r in run.setup] == expected_setup, f"case {case}: setup call"
        if setup_call >= 0:
            setup = run.setup[0]
            np.testing.assert_array_equal(setup.tokens, ref[p + "setup_token_reshaped"], f"case {case}")
            prompt = PromptFeatures(mel=ref[p + "prompt_feat"][0], speaker_embedding=ref[p + "embedding"][0])
            _, prompt_mel, _ = vocoder.prompt_inputs(ref[p + "prompt_token"].reshape(-1).tolist(), prompt)
            np.testing.assert_array_equal(prompt_mel.numpy(), ref[p + "setup_mel"], f"case {case} setup_mel")
            rows = ref[p + "cache_shapes"][0]
            check_cache_shapes(setup.cache_shapes, rows, vocoder, n_steps, f"{case} setup")

        n_chunks = len(ref[p + "chunk_call"])
        ours, extra = run.chunks[:n_chunks], run.chunks[n_chunks:]
        assert [r.call for r in ours] == ref[p + "chunk_call"].tolist(), f"case {case}: chunk calls"
        assert [r.last for r in ours] == ref[p + "chunk_last"].tolist(), f"case {case}: last chunk"
        assert all(r.last and r.call in deviations for r in extra), f"case {case}: chunks the reference lacks"
        assert [r.tokens.size(1) for r in ours] == ref[p + "chunk_token_len"].tolist(), f"case {case}"
        tokens = np.concatenate([r.tokens.numpy() for r in ours] or [np.zeros((1, 0, 2), np.int64)], axis=1)
        np.testing.assert_array_equal(tokens, ref[p + "chunk_token_reshaped"], f"case {case} tokens")
        assert [r.mel.size(2) for r in ours] == ref[p + "chunk_mel_len"].tolist(), f"case {case}: mel frames"
        assert [r.noise_offset for r in ours] == ref[p + "chunk_noise_offset"].tolist(), f"case {case}: noise"
        assert [r.estimator_frames for r in ours] == ref[p + "chunk_est_att_len_raw"].tolist(), f"case {case}"
        for k, record in enumerate(ours):
            rows = ref[p + "cache_shapes"][k + 1]
            check_cache_shapes(record.cache_shapes, rows, vocoder, n_steps, f"{case} chunk {k}")


def test_conformance_vocoder_stream_deliberate_flush(ref, replays, vocoder):
    """Where the reference's last call returns nothing, ours returns the rest of the waveform: the
    pieces then add up to the non-stream length (the fixture's ``nonstream_speech``)."""
    for case in cases(ref):
        p, run = case + "_", replays[case]
        _, deviations = expected_outputs(ref, p, vocoder)
        total = sum(out.size for out in run.outputs if out is not None)
        if sum(ref[p + "call_sizes"]) == ref[p + "token"].size:
            assert total == ref[p + "nonstream_speech"].shape[-1], f"case {case}"
        for i in deviations:
            out = run.outputs[i]
            assert out is not None and np.isfinite(out).all(), f"case {case} call {i}"
            assert out.size == 0 or float(np.abs(out).max()) > 0, f"case {case} call {i}: silent"


def test_conformance_vocoder_stream_flow(ref, replays):
    """Encoder output and flow mel of the setup pass and of every chunk; HiFT mel input."""
    for case in cases(ref):
        p, run = case + "_", replays[case]
        if int(ref[p + "setup_call"]) >= 0:
            assert max_abs(run.setup[0].mu, ref[p + "setup_mu"]) <= MEL_TOL, f"case {case} setup_mu"
            assert max_abs(run.setup[0].mel, ref[p + "setup_feat"]) <= MEL_TOL, f"case {case} setup_feat"
        ours = run.chunks[: len(ref[p + "chunk_call"])]
        for k, (start, end) in enumerate(bounds(ref[p + "chunk_mel_len"])):
            where = f"case {case} chunk {k}"
            assert max_abs(ours[k].mu, ref[p + "chunk_mu"][:, start:end]) <= MEL_TOL, f"{where} mu"
            assert max_abs(ours[k].mel, ref[p + "chunk_flow_mel"][:, :, start:end]) <= MEL_TOL, f"{where} mel"
        for k, (start, end) in enumerate(bounds(ref[p + "hift_mel_len"])):
            mel_in = ref[p + "hift_mel_in"][:, :, start:end]
            assert max_abs(ours[k].hift_mel, mel_in) <= MEL_TOL, f"case {case} chunk {k} hift_mel_in"


def test_conformance_vocoder_stream_hift_f0(ref, vocoder):
    for case in cases(ref):
        p = case + "_"
        for k, (start, end) in enumerate(bounds(ref[p + "hift_mel_len"])):
            with torch.inference_mode():
                f0 = vocoder.hift.f0_predictor(torch.from_numpy(ref[p + "hift_mel_in"][:, :, start:end]))
            expected = ref[p + "hift_f0"][:, start:end]
            bound = F0_REL_TOL * float(np.abs(expected).max())
            assert max_abs(f0, expected) <= bound, f"case {case} chunk {k}"


def test_conformance_vocoder_stream_hift_decode_with_recorded_source(ref, vocoder):
    for case in cases(ref):
        p = case + "_"
        scale = vocoder.hift.upsample_scale
        for k, (start, end) in enumerate(bounds(ref[p + "hift_mel_len"])):
            mel = torch.from_numpy(ref[p + "hift_mel_in"][:, :, start:end])
            source = torch.from_numpy(ref[p + "hift_source"][:, :, start * scale : end * scale])
            with torch.inference_mode():
                speech = vocoder.hift.decode(mel, source)
            assert max_abs(speech, ref[p + "hift_speech"][:, start * scale : end * scale]) <= DECODE_TOL, (
                f"case {case} chunk {k}"
            )


def test_conformance_vocoder_stream_source_from_f0_draws_and_cache(ref, vocoder):
    """Each chunk's source: f0 + its recorded draws, the previous chunk's last source samples in front."""
    for case in cases(ref):
        p = case + "_"
        scale = vocoder.hift.upsample_scale
        prefix = None
        for k, (start, end) in enumerate(bounds(ref[p + "hift_mel_len"])):
            f0 = torch.from_numpy(ref[p + "hift_f0"][:, start:end])
            with torch.inference_mode():
                source = vocoder.hift.f0_to_source(f0, recorded_draws(ref, p, k, scale), prefix)
            expected = ref[p + "hift_source"][:, :, start * scale : end * scale]
            assert max_abs(source, expected) <= SOURCE_TOL, f"case {case} chunk {k}"
            prefix = torch.from_numpy(expected[:, :, -SOURCE_CACHE_SAMPLES:])


def fixture_pieces(ref: dict, p: str) -> list[np.ndarray | None]:
    """The fixture's returned pieces, split from ``speech`` by ``call_out_len``."""
    pieces, start = [], 0
    for n in ref[p + "call_out_len"].tolist():
        pieces.append(None if n < 0 else ref[p + "speech"][0, start : start + n])
        start += max(n, 0)
    return pieces


def test_conformance_vocoder_stream_pieces_from_hift_speech(ref, vocoder):
    """Cross-fade and hold-back (``CrossFade`` as the session uses it) on the recorded HiFT output."""
    for case in cases(ref):
        p = case + "_"
        scale = vocoder.hift.upsample_scale
        pieces = fixture_pieces(ref, p)
        fade = CrossFade(unity=REFERENCE_OPTIONS.unity_crossfade)
        for k, (start, end) in enumerate(bounds(ref[p + "hift_mel_len"])):
            speech = torch.from_numpy(ref[p + "hift_speech"][:, start * scale : end * scale])
            piece = fade.join(speech, bool(ref[p + "chunk_last"][k]))
            expected = pieces[int(ref[p + "chunk_call"][k])]
            assert expected is not None and max_abs(piece[0], expected) <= PIECE_TOL, f"case {case} chunk {k}"


def test_conformance_vocoder_stream_end_to_end(ref, replays, vocoder):
    """Returned pieces, source and HiFT output of the replayed sessions (recorded noise and draws)."""
    for case in cases(ref):
        p, run = case + "_", replays[case]
        _, deviations = expected_outputs(ref, p, vocoder)
        for i, (got, expected) in enumerate(zip(run.outputs, fixture_pieces(ref, p), strict=True)):
            if i in deviations:
                continue  # asserted by test_conformance_vocoder_stream_deliberate_flush
            assert (got is None) == (expected is None), f"case {case} call {i}"
            if got is not None:
                assert max_abs(got, expected) <= SPEECH_TOL, f"case {case} call {i}"
        scale = vocoder.hift.upsample_scale
        for k, (start, end) in enumerate(bounds(np.asarray(ref[p + "hift_mel_len"]) * scale)):
            chunk = run.chunks[k]
            assert max_abs(chunk.hift_source, ref[p + "hift_source"][:, :, start:end]) <= SOURCE_TOL, (
                f"case {case} chunk {k} source"
            )
            assert max_abs(chunk.hift_speech, ref[p + "hift_speech"][:, start:end]) <= SPEECH_TOL, (
                f"case {case} chunk {k} speech"
            )


def test_conformance_vocoder_stream_tolerance_file_agrees(fixture_dir, ref):
    """stream_tolerance.json describes the same protocol constants and cases as the npz."""
    tolerance = json.loads((fixture_dir / "stream_tolerance.json").read_text())
    keys = ("chunk_size_list", "pre_lookahead_len", "mel_cache_len", "source_cache_len")
    keys += ("estimator_left_context",)
    for key in keys:
        if key in tolerance:
            assert np.asarray(tolerance[key]).tolist() == ref[key].tolist(), key
    if "cases" in tolerance:
        assert sorted(tolerance["cases"]) == sorted(cases(ref))
