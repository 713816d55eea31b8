"""The engine as a generator: long text in chunks, pieces before the result, retries, Stop keeps audio."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from audio_join import DEFAULT_CROSSFADE_S
from demo.examples import synthetic_voice
from engine import CloneEngine
from errors import EmptyGenerationError
from models.llm import Step1LLM
from synthesis import (
    AudioPiece,
    CloneRequest,
    EditRequest,
    EngineConfig,
    Progress,
    SynthesisOptions,
    SynthesisResult,
)
from takes import chunk_seed

SR = 16000
LONG_TEXT = (
    "The first sentence is here. The second one follows it closely. A third sentence ends the "
    "first paragraph.\nThen a new paragraph starts, with a clause, and another clause. Done."
)
OPTIONS = dict(max_new_tokens=60, chunk_chars=60)


@pytest.fixture(scope="module")
def engine(demo_models_root, tmp_path_factory) -> CloneEngine:
    return CloneEngine.load(
        demo_models_root, EngineConfig(max_reference_seconds=20.0), cache_dir=tmp_path_factory.mktemp("cache")
    )


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return synthetic_voice(2.5, SR, f0=125.0, seed=41)


def run(engine: CloneEngine, request, cancel=None) -> tuple[list, SynthesisResult]:
    events = list(
        engine.clone_stream(request, cancel)
        if isinstance(request, CloneRequest)
        else engine.edit_stream(request, cancel)
    )
    assert isinstance(events[-1], SynthesisResult)
    assert not any(isinstance(e, SynthesisResult) for e in events[:-1])
    return events[:-1], events[-1]


@pytest.mark.parametrize("stream", [False, True], ids=["whole_chunks", "streaming_vocoder"])
def test_long_text_is_spoken_chunk_by_chunk_and_joined(engine, reference, stream):
    request = CloneRequest(
        reference, SR, "a test voice", LONG_TEXT, SynthesisOptions(seed=3, stream=stream, **OPTIONS)
    )
    events, result = run(engine, request)
    chunks = result.report.chunks
    assert len(chunks) >= 4 and all(len(c.text) <= OPTIONS["chunk_chars"] for c in chunks)
    assert [c.seed for c in chunks] == [chunk_seed(3, k, c.attempts - 1) for k, c in enumerate(chunks)]
    pieces = [e.audio for e in events if isinstance(e, AudioPiece)]
    assert pieces and np.array_equal(np.concatenate(pieces), result.audio)
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[0].chunk == 1 and {p.chunks for p in progress} == {len(chunks)}
    assert [p.chunk for p in progress] == sorted(p.chunk for p in progress)
    # one segment per chunk that made audio; the joined length is the chunks plus the pauses minus
    # one crossfade per join
    segments = result.segments
    assert len(segments) == len(chunks) - len(result.warnings)
    crossfade = round(DEFAULT_CROSSFADE_S * result.sample_rate)
    gaps = [b.start - a.end for a, b in zip(segments, segments[1:], strict=False)]
    assert all(g > 0 for g in gaps)
    lengths = sum(s.end - s.start for s in segments)
    pauses = sum(g + crossfade for g in gaps)
    assert len(result.audio) == lengths + pauses - crossfade * (len(segments) - 1)
    assert sum(len(s.tokens) for s in segments) == len(result.audio_tokens)
    for segment in segments:  # each segment is exactly its tokens' audio: 2880 samples per group
        assert segment.end - segment.start == 2880 * len(segment.tokens) // 5


def test_pieces_come_before_the_last_chunk_is_made(engine, reference):
    request = CloneRequest(reference, SR, "a test voice", LONG_TEXT, SynthesisOptions(seed=4, **OPTIONS))
    stream = engine.clone_stream(request)
    seen: list = []
    for event in stream:
        seen.append(event)
        if isinstance(event, AudioPiece):
            break
    assert not any(isinstance(e, SynthesisResult) for e in seen)
    last_chunk = max(e.chunk for e in seen if isinstance(e, Progress))
    assert last_chunk < 4  # audio of the first chunk arrived while later chunks were still to come
    stream.close()  # abandoning the generator frees the LLM: the next request runs normally
    _, result = run(
        engine,
        CloneRequest(
            reference, SR, "a test voice", "Short one.", SynthesisOptions(seed=4, max_new_tokens=60)
        ),
    )
    assert len(result.audio)


class SilentChunkLLM(Step1LLM):
    """The real demo LLM, except that a chunk whose prompt says "Zebra" ends at once (eos)."""

    def stream_ids(self, prompt_ids, options, cancel=None):
        sp = self.tokenizer.sp
        if "Zebra" in sp.decode([i for i in prompt_ids if i < sp.get_piece_size()]):
            yield self.eos_id
            return
        yield from super().stream_ids(prompt_ids, options, cancel)


def test_a_chunk_without_audio_is_retried_once_then_reported(engine, reference):
    silent = SilentChunkLLM(
        engine.llm(None).model, engine.llm(None).tokenizer, "base", engine.llm(None).model_dir
    )
    other = CloneEngine(
        engine.tokenizer,
        {"base": silent},
        engine.vocoder,
        engine.cache,
        engine.config,
        engine.model_root,
        engine.demo,
    )
    text = "First part is fine. Zebra stripes here. Last part is fine too."
    request = CloneRequest(
        reference, SR, "a test voice", text, SynthesisOptions(seed=5, max_new_tokens=60, chunk_chars=20)
    )
    events, result = run(other, request)
    zebra = [c for c in result.report.chunks if "Zebra" in c.text]
    assert len(zebra) == 1 and zebra[0].attempts == 2 and zebra[0].seed == chunk_seed(5, 1, 1)
    assert any("Zebra" in w and "no audio" in w for w in result.warnings)
    assert "Zebra" not in result.text and len(result.segments) == len(result.report.chunks) - 1
    assert any(isinstance(e, Progress) and e.stage == "retry" for e in events)
    with pytest.raises(EmptyGenerationError, match="no audio for any"):
        run(other, CloneRequest(reference, SR, "a test voice", "Zebra only.", SynthesisOptions(seed=5)))


def test_stop_keeps_the_audio_made_so_far(engine, reference):
    stop = threading.Event()
    request = CloneRequest(reference, SR, "a test voice", LONG_TEXT, SynthesisOptions(seed=6, **OPTIONS))
    events = []
    for event in engine.clone_stream(request, stop):
        events.append(event)
        if isinstance(event, AudioPiece):
            stop.set()  # pressed once the first audio has arrived
    result = events[-1]
    assert isinstance(result, SynthesisResult) and result.stopped and result.report.stopped
    # the first chunk's audio is kept; the second chunk stopped at its first token; no third began
    assert len(result.audio) > 0 and len(result.segments) == 1 and len(result.report.chunks) == 2


def test_a_long_version_is_edited_segment_by_segment(engine, reference):
    request = CloneRequest(reference, SR, "a test voice", LONG_TEXT, SynthesisOptions(seed=7, **OPTIONS))
    _, cloned = run(engine, request)
    _, edited = run(
        engine,
        EditRequest.from_result(cloned, "emotion", "happy", options=SynthesisOptions(seed=8, **OPTIONS)),
    )
    assert len(cloned.voices) == len(cloned.segments) > 1
    assert [c.text for c in edited.report.chunks] == [s.text for s in cloned.segments]
    assert edited.report.tokens_from == "kept" and len(edited.audio)


def test_the_streaming_vocoder_plays_while_the_llm_is_still_sampling(engine, reference):
    # The random demo LLM ends at a seed-dependent length: take the first seed whose take is long
    # enough for the vocoder's first stream chunk (15 tokens + lookahead) to come before the end.
    for seed in range(9, 29):
        request = CloneRequest(
            reference,
            SR,
            "a test voice",
            "One sentence, spoken as it is made.",
            SynthesisOptions(seed=seed, stream=True, max_new_tokens=120),
        )
        events, result = run(engine, request)
        if len(result.audio_tokens) >= 40:
            break
    assert len(result.audio_tokens) >= 40, "no seed in 9..28 made a take of 40 tokens"
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioPiece))
    last_llm = max(i for i, e in enumerate(events) if isinstance(e, Progress) and e.stage == "llm")
    assert first_audio < last_llm  # audio came out before the LLM's last group of the chunk
    assert result.report.stream and 0 < result.report.ttfa_s < result.report.total_s
    pieces = [e.audio for e in events if isinstance(e, AudioPiece)]
    assert len(pieces) > 1 and np.array_equal(np.concatenate(pieces), result.audio)
    assert len(result.audio) == 2880 * len(result.audio_tokens) // 5


def test_streaming_inline_as_on_a_gpu_makes_the_same_audio_as_with_the_llm_thread(
    engine, reference, monkeypatch
):
    # A native LLM on a GPU streams inline (render.runs_ahead): the groups are vocoded between
    # tokens instead of beside an LLM thread. Same seed, same tokens, same pieces, same audio.
    import copy

    import torch

    import render

    llm = engine.llm(None)
    assert render.runs_ahead(llm)  # the CPU: a thread of its own
    on_gpu = copy.copy(llm)
    on_gpu.device = torch.device("cuda", 0)
    assert not render.runs_ahead(on_gpu)

    request = CloneRequest(
        reference, SR, "a test voice", LONG_TEXT, SynthesisOptions(seed=5, stream=True, **OPTIONS)
    )
    threaded_events, threaded = run(engine, request)
    monkeypatch.setattr(render, "runs_ahead", lambda _llm: False)
    inline_events, inline = run(engine, request)
    assert inline.audio_tokens == threaded.audio_tokens and len(inline.audio_tokens)
    assert np.array_equal(inline.audio, threaded.audio)
    pieces = [len(e.audio) for e in inline_events if isinstance(e, AudioPiece)]
    assert pieces == [len(e.audio) for e in threaded_events if isinstance(e, AudioPiece)]
    assert len(pieces) > 1 and inline.report.llm_s > 0 and inline.report.vocoder_s > 0
