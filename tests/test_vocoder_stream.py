"""Streaming vocoder sessions through their public interface, on the demo model: the protocol's
lengths, and each deliberate difference from upstream (docs/STREAMING.md) with a test of its own."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model_layout import VOCODER_FOLDER
from models.prompt_features import PromptFeatures
from models.vocoder import Vocoder
from models.vocoder_stream import (
    CHUNK_FRAMES,
    ESTIMATOR_LEFT_CONTEXT,
    REFERENCE_OPTIONS,
    SOURCE_CACHE_SAMPLES,
    CrossFade,
    StreamChunk,
    estimator_cache_keep,
    mixed_token_count,
)

SAMPLES_PER_GROUP = 2880  # 5 mixed tokens = 3 frames at 25 Hz = 0.12 s at 24 kHz
STEPS = 2  # Euler steps: the streaming logic does not depend on their number; keeps the tests fast


@pytest.fixture(scope="module")
def vocoder(demo_vocoder_root: Path, one_torch_thread) -> Vocoder:
    return Vocoder.load(demo_vocoder_root / VOCODER_FOLDER, device="cpu")


def mixed_tokens(groups: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _ in range(groups):
        out += rng.integers(0, 1024, 2).tolist() + rng.integers(1024, 5120, 3).tolist()
    return out


def prompt_for(tokens: list[int], seed: int) -> PromptFeatures:
    """A prompt whose mel has the 50 Hz frame count of its tokens (random, like a real clip's scale)."""
    rng = np.random.default_rng(seed)
    frames = -(-len(tokens) // 5) * 6
    mel = (rng.standard_normal((frames, 80)) - 5).astype(np.float32)
    return PromptFeatures(mel=mel, speaker_embedding=rng.standard_normal(192).astype(np.float32))


PROMPT_TOKENS = mixed_tokens(8, seed=1)
PROMPT = prompt_for(PROMPT_TOKENS, seed=2)


def run(session, tokens: list[int], per_call: int, last_alone: bool = True) -> list[np.ndarray | None]:
    """Feed ``tokens`` ``per_call`` at a time; the last call flagged (alone, or with the final tokens)."""
    calls = [tokens[i : i + per_call] for i in range(0, len(tokens), per_call)]
    if last_alone or not calls:
        calls.append([])
    return [session.feed(part, last=i == len(calls) - 1) for i, part in enumerate(calls)]


def joined(pieces: list[np.ndarray | None]) -> np.ndarray:
    return np.concatenate([p for p in pieces if p is not None] or [np.zeros(0, np.float32)])


# ---- protocol ----------------------------------------------------------------------------------
@pytest.mark.parametrize("per_call", [1, 7, 40])
def test_stream_pieces_add_up_to_the_non_stream_length(vocoder, per_call):
    tokens = mixed_tokens(40, seed=3) + [7, 8]  # 202 tokens: a partial last group, as upstream pads it
    with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS, seed=0) as session:
        pieces = run(session, tokens, per_call)
    lengths = [p.size for p in pieces if p is not None]
    first = 2 * 480 * CHUNK_FRAMES[0] - SOURCE_CACHE_SAMPLES  # the first chunk holds its tail back
    assert lengths[0] == first
    assert sum(lengths) == SAMPLES_PER_GROUP * -(-len(tokens) // 5)
    assert sum(lengths) == vocoder.decode(tokens, PROMPT_TOKENS, PROMPT, STEPS, seed=0).size
    for piece in (p for p in pieces if p is not None):
        assert piece.dtype == np.float32 and piece.ndim == 1 and np.isfinite(piece).all()


def test_stream_is_deterministic_for_a_seed(vocoder):
    tokens = mixed_tokens(30, seed=4)
    waves = []
    for seed in (5, 5, 6):
        with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS, seed=seed) as session:
            waves.append(joined(run(session, tokens, 5)))
    np.testing.assert_array_equal(waves[0], waves[1])
    assert not np.array_equal(waves[0], waves[2])


def test_stream_at_most_one_chunk_per_call(vocoder):
    """A burst of tokens is worked off by later calls, one chunk each (empty calls included)."""
    tokens = mixed_tokens(40, seed=7)
    with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS) as session:
        assert session.feed(tokens) is None  # the setup call
        assert session.buffered == len(tokens)
        first = session.feed([])
        assert first is not None and session.buffered == len(tokens) - mixed_token_count(CHUNK_FRAMES[0])
        second = session.feed([])
        assert second is not None and second.size == 2 * 480 * CHUNK_FRAMES[1]


# ---- deliberate differences: flush, lifetime, randomness, cache sizes -------------------------------
def test_stream_all_tokens_in_one_last_call_returns_the_whole_waveform(vocoder):
    """Upstream returns None here and keeps the tokens; we set up and synthesise all of them, exactly
    what upstream's own protocol gives for feed(all) then feed([], last=True)."""
    tokens = mixed_tokens(12, seed=8)
    with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS, seed=3, options=REFERENCE_OPTIONS) as session:
        at_once = session.feed(tokens, last=True)
    with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS, seed=3, options=REFERENCE_OPTIONS) as session:
        assert session.feed(tokens) is None
        two_calls = session.feed([], last=True)
    assert at_once.size == vocoder.decode(tokens, PROMPT_TOKENS, PROMPT, STEPS).size == 12 * SAMPLES_PER_GROUP
    np.testing.assert_array_equal(at_once, two_calls)


@pytest.mark.parametrize("n_tokens", [1, 3, 4])
def test_stream_request_shorter_than_the_lookahead_still_gets_audio(vocoder, n_tokens):
    """Upstream never sets such a session up and returns nothing; we flush one padded group."""
    tokens = mixed_tokens(1, seed=9)[:n_tokens]
    with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS) as session:
        pieces = run(session, tokens, 1)
    assert pieces[:-1] == [None] * n_tokens
    assert pieces[-1].size == SAMPLES_PER_GROUP and np.abs(pieces[-1]).max() > 0
    with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS) as session:
        assert session.feed(tokens, last=True).size == SAMPLES_PER_GROUP


def test_stream_without_tokens_returns_an_empty_array(vocoder):
    with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS) as session:
        assert session.feed([]) is None
        out = session.feed([], last=True)
    assert out.dtype == np.float32 and out.shape == (0,)


def test_stream_state_is_freed_on_last_close_and_error(vocoder):
    tokens = mixed_tokens(20, seed=10)
    session = vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS)
    run(session, tokens, 5)
    assert session.closed and session.buffered == 0
    assert set(session.cache_shapes()) == {"hift_mel", "hift_source", "speech_tail"}  # no flow cache left
    assert all(0 in shape for shape in session.cache_shapes().values())
    with pytest.raises(RuntimeError, match="closed"):
        session.feed(tokens)

    with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS) as session:
        session.feed(tokens)
        assert "estimator_att" in session.cache_shapes()
    assert session.closed and session.buffered == 0 and "estimator_att" not in session.cache_shapes()
    session.close()  # idempotent

    session = vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS)
    session.feed(tokens[:10])
    with pytest.raises(ValueError, match="5120"):
        session.feed([5120])
    assert session.closed and session.buffered == 0


def test_stream_rejects_unusable_settings(vocoder):
    with pytest.raises(ValueError, match="prompt"):
        vocoder.stream([], PROMPT, STEPS)
    with pytest.raises(ValueError, match="n_steps"):
        vocoder.stream(PROMPT_TOKENS, PROMPT, 0)


def test_stream_sessions_in_threads_do_not_change_each_other(vocoder):
    """HiFT draws come from each session's own generator: two sessions interleaved call by call in
    two threads (drawing from the global RNG in between) give the audio each gives alone."""
    requests = [(mixed_tokens(25, seed=11), 21), (mixed_tokens(18, seed=12), 22)]

    def solo(tokens: list[int], seed: int) -> np.ndarray:
        with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS, seed=seed) as session:
            return joined(run(session, tokens, 3))

    alone = [solo(*request) for request in requests]
    barrier = threading.Barrier(2)
    results: list[np.ndarray | None] = [None, None]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        tokens, seed = requests[index]
        calls = [tokens[i : i + 3] for i in range(0, len(tokens), 3)]
        calls += [[]] * (max(len(t) for t, _ in requests) // 3 + 1 - len(calls))  # same call count
        try:
            with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS, seed=seed) as session:
                pieces = []
                for i, part in enumerate(calls):
                    barrier.wait(timeout=60)  # lock-step: both threads call feed between barriers
                    torch.rand(3)  # global RNG draws must not matter
                    pieces.append(session.feed(part, last=i == len(calls) - 1))
            results[index] = joined(pieces)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for got, expected in zip(results, alone, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_stream_prompt_longer_than_upstream_cache_buffers(vocoder):
    """Upstream's 1000-frame cache buffers fail once prompt + 96 + a chunk exceed 1000 mel frames
    (a prompt over ~16 s); ours grow with the request, and the estimator cache stays bounded."""
    prompt_tokens = mixed_tokens(145, seed=13)  # 435 pairs: 870 mel frames, 17.4 s
    prompt = prompt_for(prompt_tokens, seed=14)
    tokens = mixed_tokens(40, seed=15)
    records: list[StreamChunk] = []
    with vocoder.stream(prompt_tokens, prompt, STEPS, on_chunk=records.append) as session:
        pieces = run(session, tokens, 5)
    prompt_frames = records[0].mel.size(2)
    assert prompt_frames == 870
    assert max(r.estimator_frames for r in records) > 1000
    kept = [r.cache_shapes["estimator_att"][4] for r in records if not r.setup]  # (steps, depth, 2, H, t, 2d)
    assert max(kept) == prompt_frames + ESTIMATOR_LEFT_CONTEXT
    assert joined(pieces).size == 40 * SAMPLES_PER_GROUP and np.isfinite(joined(pieces)).all()


# ---- options that change the sound --------------------------------------------------------------
def test_stream_option_recent_context_keeps_the_most_recent_frames():
    """Cache order [newest chunk (30 frames), chunk before (96), prompt (10)]: upstream keeps the newest
    chunk and the *first* 66 frames of the one before; recent_context keeps its last 66."""
    prompt, before, newest = torch.arange(10), torch.arange(10, 106), torch.arange(106, 136)
    frames = torch.cat([newest, before, prompt])
    reference = frames[estimator_cache_keep(frames, 10, recent_context=False)]
    recent = frames[estimator_cache_keep(frames, 10, recent_context=True)]
    assert reference.tolist() == newest.tolist() + before[:66].tolist() + prompt.tolist()
    assert recent.tolist() == newest.tolist() + before[30:].tolist() + prompt.tolist()
    assert estimator_cache_keep(frames[:96], 10, recent_context=True) is None  # short enough: no cut


def test_stream_with_chunk_frames_both_cut_rules_keep_the_same_frames(vocoder):
    """With chunks of 15, 24, 48 token frames the newest chunk is exactly 96 mel frames whenever the
    cache is cut before a chunk that reads it, so upstream's rule already keeps the most recent frames
    (only the cut after the final chunk, which nothing reads, differs): same audio either way."""
    tokens = mixed_tokens(60, seed=16)
    waves, kept = [], []
    for recent in (False, True):
        records: list[StreamChunk] = []
        options = replace(REFERENCE_OPTIONS, recent_context=recent)
        with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS, options=options, on_chunk=records.append) as s:
            waves.append(joined(run(s, tokens, 5)))
        kept.append([r.kept_frames.tolist() for r in records if not r.last])
    cut = [k for k in kept[0] if len(k) == records[0].mel.size(2) + ESTIMATOR_LEFT_CONTEXT]
    assert len(cut) >= 2  # the cache was cut before at least two chunks
    assert kept[0] == kept[1]
    np.testing.assert_array_equal(waves[0], waves[1])


def test_stream_option_advancing_noise_reads_the_non_stream_positions(vocoder):
    """Upstream reads noise at the estimator cache length, stuck at P + 96 after the first cut; with
    advancing_noise each chunk reads at its own mel position, as the non-stream path does."""
    tokens = mixed_tokens(60, seed=17)
    offsets = {}
    for advancing in (False, True):
        records: list[StreamChunk] = []
        options = replace(REFERENCE_OPTIONS, advancing_noise=advancing)
        with vocoder.stream(PROMPT_TOKENS, PROMPT, STEPS, options=options, on_chunk=records.append) as s:
            run(s, tokens, 5)
        chunks = [r for r in records if not r.setup]
        offsets[advancing] = [r.noise_offset for r in chunks]
        prompt_frames = records[0].mel.size(2)
        positions = (prompt_frames + np.cumsum([0] + [r.mel.size(2) for r in chunks[:-1]])).tolist()
    assert offsets[True] == positions
    assert offsets[False][:3] == positions[:3]  # identical until the first cut
    assert offsets[False][3:] == [prompt_frames + ESTIMATOR_LEFT_CONTEXT] * (len(positions) - 3)


def test_stream_option_unity_crossfade_keeps_the_level_across_joins():
    """Two constant pieces joined: upstream's Hamming halves add up to ~1.08 over the join; unity to 1."""
    level = {}
    for unity in (False, True):
        fade = CrossFade(unity=unity)
        first = fade.join(torch.ones(1, 3 * SOURCE_CACHE_SAMPLES), last=False)
        second = fade.join(torch.ones(1, 3 * SOURCE_CACHE_SAMPLES), last=True)
        assert first.size(1) == 2 * SOURCE_CACHE_SAMPLES and second.size(1) == 3 * SOURCE_CACHE_SAMPLES
        level[unity] = second[0, :SOURCE_CACHE_SAMPLES]
    assert float(level[False].max()) == pytest.approx(1.08, abs=1e-3)
    torch.testing.assert_close(level[True], torch.ones(SOURCE_CACHE_SAMPLES), rtol=0, atol=1e-6)
