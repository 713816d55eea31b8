"""Output checks on the demo models (the audio is noise, the mechanics are real): scores, best-of-N,
provenance records in the report, the WAV and replays, and the text rules they use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audio_prep import prompt_prelude
from demo.examples import synthetic_voice
from engine import CloneEngine
from errors import OptionsError
from models.llm import Step1LLM
from provenance import MANIFEST_VERSION, audio_sha256, manifest_json
from scoring import Score, detect_language, error_rate, normalize_text, speaker_similarity
from synthesis import AudioPiece, CloneRequest, EditRequest, EngineConfig, Progress, SynthesisOptions
from takes import RETRY_SEED_STEP, chunk_seed
from wav_info import read_wav_comment, write_wav

SR = 16000
TWO_CHUNKS = "The first sentence is here. The second one follows it closely."
FAST = dict(max_new_tokens=25)


@pytest.fixture(scope="module")
def engine(demo_models_root, tmp_path_factory) -> CloneEngine:
    return CloneEngine.load(
        demo_models_root,
        EngineConfig(max_reference_seconds=20.0),
        cache_dir=tmp_path_factory.mktemp("scores_cache"),
    )


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return synthetic_voice(2.5, SR, f0=125.0, seed=41)


@pytest.fixture(scope="module")
def cloned(engine, reference):
    """One real clone of two chunks with the real scorer (shared by the report and manifest tests)."""
    options = SynthesisOptions(seed=3, chunk_chars=40, **FAST)
    return engine.clone(CloneRequest(reference, SR, "a test voice", TWO_CHUNKS, options))


# ---- text rules ------------------------------------------------------------------------------------


def test_language_comes_from_the_script_or_a_leading_language_tag():
    assert detect_language("Hello there.") == "en"
    assert detect_language("你好，世界") == "zh"
    assert detect_language("こんにちは、世界") == "ja" and detect_language("今日は晴れです") == "ja"
    assert detect_language("안녕하세요") == "ko"
    assert detect_language("[Cantonese]你好") == "zh" and detect_language("[Japanese]今日") == "ja"
    assert detect_language("[Laughter] Hello") == "en"


def test_normalisation_handles_width_case_punctuation_numbers_and_tags():
    assert normalize_text("ＨＥＬＬＯ,  World! [laugh]", "en") == ["hello", "world"]
    assert normalize_text("I paid 3.14 for the 21st, don't!", "en") == [
        "i",
        "paid",
        "three",
        "point",
        "one",
        "four",
        "for",
        "the",
        "twenty",
        "first",
        "dont",
    ]
    assert normalize_text("１,000 people", "en") == ["one", "thousand", "people"]
    assert normalize_text("今天３月1日，温度50%。", "zh") == list("今天三月一日温度百分之五十")
    assert normalize_text("你好 world", "zh") == ["你", "好", "world"]


def test_error_rates_are_cer_for_chinese_wer_for_english_and_none_for_japanese_and_korean():
    assert error_rate("今天是3月1日。", "今天是三月一日").rate == 0.0
    rate = error_rate("今天是三月一日", "今天是四月一日")
    assert rate.metric == "cer" and rate.rate == pytest.approx(1 / 7) and rate.reference_tokens == 7
    rate = error_rate("Hello, there big world!", "hello their world")
    assert rate.metric == "wer" and rate.rate == pytest.approx(2 / 4)
    assert error_rate("Hello world", "").rate == 1.0  # nothing heard: every word deleted
    assert error_rate("[Laughter]", "ha").rate is None
    for text in ("こんにちは", "안녕하세요", "[Korean]hello"):
        rate = error_rate(text, "anything")
        assert rate.rate is None and rate.metric is None and "not scored" in rate.reason


# ---- scores on real audio --------------------------------------------------------------------------


def test_similarity_of_a_clip_with_itself_is_one_and_with_another_voice_lower(engine):
    scorer = engine.scorer
    a = synthetic_voice(2.0, 24000, f0=120.0, seed=1)
    b = synthetic_voice(2.0, 24000, f0=230.0, seed=2)
    ea, eb = scorer.speaker_embedding(a, 24000), scorer.speaker_embedding(b, 24000)
    assert ea.shape == (192,)
    assert abs(speaker_similarity(ea, ea) - 1.0) < 1e-5
    assert abs(speaker_similarity(ea, scorer.speaker_embedding(a.copy(), 24000)) - 1.0) < 1e-5
    assert speaker_similarity(ea, eb) < 1.0 - 1e-3
    # the vocoder's prompt embedding of a clip is the scorer's embedding of it: reused as is
    features = engine.vocoder.prompt_features(prompt_prelude(a, 24000), 24000)
    assert np.array_equal(features.speaker_embedding, ea)


def test_the_paraformers_own_transcript_of_a_clip_scores_zero(engine):
    clip = synthetic_voice(3.0, 24000, f0=150.0, seed=5)
    transcript = engine.scorer.transcribe(clip, 24000)
    assert transcript  # the demo Paraformer hears "words" in noise
    reference = engine.scorer.speaker_embedding(clip, 24000)
    score = engine.scorer.score(clip, 24000, transcript, reference)
    assert score.error_rate == 0.0 and score.metric in ("cer", "wer") and score.transcript == transcript
    assert abs(score.similarity - 1.0) < 1e-5 and score.seconds > 0
    other = engine.scorer.score(clip, 24000, "completely different words entirely", reference)
    assert other.error_rate > 0.5 and other.metric == "wer"


def test_every_chunk_of_a_clone_is_scored_and_the_report_shows_it(cloned):
    report = cloned.report
    assert report.scored and report.score_s > 0 and len(report.chunks) == 2
    for chunk in report.chunks:
        assert -1.0 <= chunk.similarity <= 1.0 and chunk.error_rate >= 0 and chunk.metric == "wer"
        assert chunk.scored_s > 0 and chunk.reference_tokens > 0
        assert [t.seed for t in chunk.takes] == [chunk.seed]
        assert chunk.takes[0].similarity == chunk.similarity and chunk.takes[0].error_rate == chunk.error_rate
    expected = sum(c.error_rate * c.reference_tokens for c in report.chunks) / sum(
        c.reference_tokens for c in report.chunks
    )
    assert report.error_rate == pytest.approx(expected) and report.metric == "wer"
    rows = {row[0]: row for row in report.rows()}
    assert rows["scores"][1] == f"{report.score_s:.3f}" and "similarity" in rows["scores"][2]
    assert "scores" in report.summary()


def test_an_edit_is_scored_against_the_version_it_edits(engine, cloned):
    edited = engine.edit(
        EditRequest.from_result(cloned, "emotion", "happy", options=SynthesisOptions(seed=4, **FAST))
    )
    assert edited.report.scored and all(c.similarity is not None for c in edited.report.chunks)
    assert [c.text for c in edited.report.chunks] == [s.text for s in cloned.segments]
    source = edited.manifest["edit"]["source"]
    assert source["kind"] == "output" and source["manifest"] == cloned.manifest


def test_scores_can_be_turned_off(engine, reference):
    off = CloneEngine(
        engine.tokenizer,
        {"base": engine.llm(None)},
        engine.vocoder,
        engine.cache,
        EngineConfig(max_reference_seconds=20.0, scores=False),
        engine.model_root,
        engine.demo,
    )
    assert off.scorer is None
    result = off.clone(
        CloneRequest(reference, SR, "a test voice", "Short one.", SynthesisOptions(seed=1, **FAST))
    )
    assert not result.report.scored and result.report.score_s == 0.0
    assert result.report.chunks[0].similarity is None and result.report.chunks[0].takes[0].error_rate is None
    assert dict((r[0], r[1]) for r in result.report.rows())["scores"] == "off"
    with pytest.raises(OptionsError, match="no-scores"):
        off.clone(CloneRequest(reference, SR, "a test voice", "Short one.", SynthesisOptions(best_of=2)))


# ---- best of N (scores forced through the test hook: engine.scorer) --------------------------------


class ForcedScorer:
    """Scores given in advance, one per take in the order the takes are made."""

    def __init__(self, scores: list[tuple[float | None, float | None]]):
        self.scores, self.calls = scores, 0

    def score(self, audio, sample_rate, text, reference_embedding) -> Score:
        assert audio.size and reference_embedding is not None  # a real take with its chunk's voice
        similarity, rate = self.scores[self.calls % len(self.scores)]
        self.calls += 1
        return Score(similarity, rate, "wer", "forced", "en", 5)


class CountingLLM(Step1LLM):
    """The demo LLM, counting its generations and keeping each prompt's text."""

    def __init__(self, llm: Step1LLM):
        super().__init__(llm.model, llm.tokenizer, "base", llm.model_dir)
        self.prompts: list[str] = []

    def stream_ids(self, prompt_ids, options, cancel=None):
        sp = self.tokenizer.sp
        self.prompts.append(sp.decode([i for i in prompt_ids if i < sp.get_piece_size()]))
        yield from super().stream_ids(prompt_ids, options, cancel)


def forced_engine(engine, scores, vocoder=None) -> tuple[CloneEngine, CountingLLM]:
    llm = CountingLLM(engine.llm(None))
    forced = CloneEngine(
        engine.tokenizer,
        {"base": llm},
        vocoder or engine.vocoder,
        engine.cache,
        engine.config,
        engine.model_root,
        engine.demo,
    )
    forced.scorer = ForcedScorer(scores)
    return forced, llm


def test_best_of_keeps_the_first_take_under_the_threshold(engine, reference):
    forced, llm = forced_engine(engine, [(0.9, 0.5), (0.2, 0.1), (0.99, 0.0)])
    result = forced.clone(
        CloneRequest(reference, SR, "a test voice", "Short one.", SynthesisOptions(seed=7, best_of=3, **FAST))
    )
    chunk = result.report.chunks[0]
    assert len(llm.prompts) == 2 and chunk.attempts == 2  # the third take is never made
    assert chunk.seed == chunk_seed(7, 0, 1) and chunk.error_rate == 0.1 and chunk.similarity == 0.2
    assert [(t.seed, t.error_rate) for t in chunk.takes] == [(7, 0.5), (chunk_seed(7, 0, 1), 0.1)]
    # the kept audio is that take's: the same as a single take made with its seed
    single = forced.clone(
        CloneRequest(
            reference, SR, "a test voice", "Short one.", SynthesisOptions(seed=7 + RETRY_SEED_STEP, **FAST)
        )
    )
    assert np.array_equal(result.audio, single.audio)
    assert result.audio_tokens == single.audio_tokens


def test_best_of_keeps_the_lowest_error_rate_with_ties_broken_by_similarity(engine, reference):
    forced, llm = forced_engine(engine, [(0.9, 0.6), (0.3, 0.4), (0.8, 0.4)])
    result = forced.clone(
        CloneRequest(reference, SR, "a test voice", "Short one.", SynthesisOptions(seed=7, best_of=3, **FAST))
    )
    chunk = result.report.chunks[0]
    assert len(llm.prompts) == 3 and chunk.seed == chunk_seed(7, 0, 2) and chunk.similarity == 0.8
    # not scored (e.g. Japanese): the highest similarity wins
    forced.scorer = ForcedScorer([(0.5, None), (0.7, None)])
    result = forced.clone(
        CloneRequest(reference, SR, "a test voice", "Short one.", SynthesisOptions(seed=7, best_of=2, **FAST))
    )
    assert result.report.chunks[0].seed == chunk_seed(7, 0, 1)


def test_best_of_never_runs_more_than_n_generations_per_chunk(engine, reference):
    forced, llm = forced_engine(engine, [(0.5, 0.9)])
    result = forced.clone(
        CloneRequest(
            reference,
            SR,
            "a test voice",
            TWO_CHUNKS,
            SynthesisOptions(seed=2, best_of=3, chunk_chars=40, **FAST),
        )
    )
    chunks = result.report.chunks
    assert len(chunks) == 2 and len(llm.prompts) == 6  # none good enough: exactly N takes per chunk
    for k, chunk in enumerate(chunks):
        assert chunk.attempts == 3
        assert [t.seed for t in chunk.takes] == [chunk_seed(2, k, t) for t in range(3)]
        # every scored take ties: the first one with audio is kept (a take may make no audio)
        assert chunk.seed == next(t.seed for t in chunk.takes if t.error_rate is not None)
    assert forced.scorer.calls == sum(t.error_rate is not None for c in chunks for t in c.takes)
    assert len(result.segments) == 2
    assert sum(len(s.tokens) for s in result.segments) == len(result.audio_tokens)


class ToneSession:
    """A streaming vocoder stand-in: each fed group comes back at once as 576 samples per token."""

    def feed(self, groups, last=False):
        return np.repeat(np.asarray(groups, np.float32) / 5120.0, 576)

    def close(self):
        pass


class ToneStreamVocoder:
    """The demo vocoder, with ``stream`` sessions that play every group as soon as it is fed."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def stream(self, prompt_tokens, features, n_steps, seed):
        return ToneSession()


def test_in_streaming_mode_a_chunk_plays_once_its_take_is_chosen(engine, reference):
    forced, _ = forced_engine(engine, [(0.5, 0.9), (0.5, 0.3)], vocoder=ToneStreamVocoder(engine.vocoder))
    events = list(
        forced.clone_stream(
            CloneRequest(
                reference,
                SR,
                "a test voice",
                "Short one.",
                SynthesisOptions(seed=9, best_of=2, stream=True, **FAST),
            )
        )
    )
    result = events[-1]
    pieces = [i for i, e in enumerate(events) if isinstance(e, AudioPiece)]
    second_take = next(i for i, e in enumerate(events) if isinstance(e, Progress) and e.stage == "take")
    llm_progress = [i for i, e in enumerate(events) if isinstance(e, Progress) and e.stage == "llm"]
    # the first take's audio was made as it streamed, but nothing played before the choice
    assert pieces and min(pieces) > max(llm_progress) > second_take
    assert result.report.chunks[0].seed == chunk_seed(9, 0, 1) and forced.scorer.calls == 2
    # the kept take's audio is exactly that take's, as one take streams it
    single = list(
        forced.clone_stream(
            CloneRequest(
                reference,
                SR,
                "a test voice",
                "Short one.",
                SynthesisOptions(seed=9 + RETRY_SEED_STEP, stream=True, **FAST),
            )
        )
    )
    assert np.array_equal(single[-1].audio, result.audio)


# ---- provenance -----------------------------------------------------------------------------------


def test_the_manifest_records_inputs_models_seeds_options_scores_and_boundaries(engine, cloned):
    m = json.loads(manifest_json(cloned.manifest))  # JSON-safe, and the same after a round trip
    assert m == cloned.manifest
    assert m["manifest_version"] == MANIFEST_VERSION and m["app"]["version"] not in ("", "unknown")
    assert m["kind"] == "clone" and m["text"] == TWO_CHUNKS and m["voice"]["reference_text"] == "a test voice"
    assert m["voice"]["reference_hash"].startswith("v1-") and m["voice"]["voice_id"] is None
    assert m["model"]["variant"] == "base" and m["model"]["backend"] == "native"
    assert set(m["model"]["fingerprints"]) == {"tokenizer", "vocoder", "llm"} and all(
        m["model"]["fingerprints"].values()
    )
    assert m["options"]["seed"] == 3 and m["options"]["flow_steps"] == 10 and m["options"]["best_of"] == 1
    assert m["options"]["temperature"] == 0.7 and m["options"]["chunk_chars"] == 40
    assert [(c["start"], c["end"]) for c in m["chunks"]] == [(s.start, s.end) for s in cloned.segments]
    assert [c["seed"] for c in m["chunks"]] == [chunk_seed(3, k) for k in range(2)]
    assert m["scores"]["similarity"] == pytest.approx(cloned.report.similarity, abs=1e-6)
    assert m["audio"] == {
        "sample_rate": 24000,
        "samples": len(cloned.audio),
        "sha256": audio_sha256(cloned.audio),
    }


def test_the_manifest_embedded_in_a_wav_reads_back_equal(cloned):
    import io

    import soundfile as sf

    data = write_wav(cloned.audio, cloned.sample_rate, manifest_json(cloned.manifest))
    assert json.loads(read_wav_comment(data)) == cloned.manifest
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")  # still an ordinary WAV file
    assert rate == 24000 and len(samples) == len(cloned.audio)
    assert np.abs(samples - cloned.audio).max() <= 1 / 32767
    assert read_wav_comment(write_wav(cloned.audio, 24000)) is None


def test_replaying_a_manifest_reproduces_the_audio_bit_for_bit(engine, reference, cloned):
    again = engine.replay(json.loads(manifest_json(cloned.manifest)), reference, SR)
    assert np.array_equal(again.audio, cloned.audio) and again.manifest["audio"] == cloned.manifest["audio"]
    assert not again.warnings
    with pytest.raises(OptionsError, match="same clip"):
        engine.replay(cloned.manifest)
    with pytest.raises(ValueError, match="not the one"):
        engine.replay(cloned.manifest, synthetic_voice(2.5, SR, f0=180.0, seed=3), SR)


def test_a_library_voice_with_a_random_seed_and_an_edit_chain_replay_exactly(engine, reference):
    info = engine.voices.create_voice("Replay voice", reference, SR, "a test voice")
    first = engine.clone(
        CloneRequest.from_voice(info.id, "Again please.", SynthesisOptions(seed=None, **FAST))
    )
    assert first.manifest["voice"]["voice_id"] == info.id and first.manifest["options"]["seed"] is not None
    assert np.array_equal(engine.replay(first.manifest).audio, first.audio)
    edited = engine.edit(
        EditRequest.from_result(first, "speed", "faster", options=SynthesisOptions(seed=5, **FAST))
    )
    replayed = engine.replay(json.loads(manifest_json(edited.manifest)))
    assert np.array_equal(replayed.audio, edited.audio)


def test_a_best_of_output_replays_exactly(engine, reference):
    options = SynthesisOptions(seed=11, best_of=2, **FAST)
    result = engine.clone(CloneRequest(reference, SR, "a test voice", "Short one.", options))
    assert len(result.manifest["chunks"][0]["takes"]) in (1, 2)
    assert np.array_equal(engine.replay(result.manifest, reference, SR).audio, result.audio)


# ---- tags ----------------------------------------------------------------------------------------


def test_a_leading_dialect_tag_leads_every_chunks_prompt_and_other_tags_stay_in_place(engine, reference):
    forced, llm = forced_engine(engine, [(0.5, 0.1)])
    text = "[cantonese]First one here [chuckle]. The second [clears throat] follows."
    result = forced.clone(
        CloneRequest(reference, SR, "a test voice", text, SynthesisOptions(seed=1, chunk_chars=40, **FAST))
    )
    chunks = [c.text for c in result.report.chunks]
    assert len(chunks) == 2 and chunks[0].startswith("[cantonese]") and "[chuckle]" in chunks[0]
    assert "[clears throat]" in chunks[1]
    targets = [p.rsplit("human\n", 1)[-1] for p in llm.prompts]
    assert targets[0].startswith("[cantonese]First") and targets[1].startswith("[Cantonese]The second")
    assert "[clears throat]" in targets[1]
