"""The clone / edit engine (engine.py) on the demo models, through its public interface."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import soundfile as sf

from audio_prep import VOCODER_SAMPLE_RATE
from audio_read import read_audio
from demo import write_demo_models
from demo.examples import synthetic_voice
from engine import CloneEngine
from errors import (
    AudioInputError,
    EmptyGenerationError,
    GenerationCancelled,
    ModelFilesError,
    OptionsError,
    TextInputError,
)
from model_layout import locate_models
from models.prompt_features import PromptFeatures, audio_digest, decode_features, encode_features
from models.text_input import DEFAULT_MAX_TEXT_CHARS
from prompt_cache import open_prompt_cache
from synthesis import CloneRequest, EditRequest, EngineConfig, SynthesisOptions
from voice_prompts import VOCODER_FIELD_PREFIX

SR = 22050  # an odd rate on purpose: the engine accepts any
MAX_LENGTH = 640  # LLM total-length cap (prompt included): the random demo LLM rarely stops on its own
SEEDS = range(8)  # the demo LLM sometimes emits no whole audio group for a seed; try a few


def voice(seconds: float = 2.5, f0: float = 120.0, seed: int = 0, sr: int = SR) -> np.ndarray:
    return synthetic_voice(seconds, sr, f0=f0, seed=seed)


def first_success(run):
    """Run ``run(seed)`` for the first seed whose generation is not empty (demo weights are random)."""
    errors = []
    for seed in SEEDS:
        try:
            return run(seed)
        except EmptyGenerationError as exc:
            errors.append(str(exc))
    pytest.fail(f"no seed in {list(SEEDS)} produced audio: {errors}")


@pytest.fixture(scope="module")
def engine(demo_models_root, tmp_path_factory) -> CloneEngine:
    cache_dir = tmp_path_factory.mktemp("prompt_cache")
    return CloneEngine.load(demo_models_root, EngineConfig(max_reference_seconds=20.0), cache_dir=cache_dir)


@pytest.fixture(scope="module")
def first_clone(engine):
    """One real clone shared by several tests (each clone on CPU costs seconds)."""
    audio = voice(seed=1)

    def run(seed):
        options = SynthesisOptions(seed=seed, max_length=MAX_LENGTH)
        text = "Hello <audio_12> world."
        return engine.clone(CloneRequest(audio, SR, "a short test sentence", text, options))

    return audio, first_success(run)


def sibling(engine: CloneEngine, **config) -> CloneEngine:
    """Same loaded models, other settings (no reload)."""
    return CloneEngine(
        engine.tokenizer,
        {engine.config.variant: engine.llm(None)},
        engine.vocoder,
        engine.cache,
        EngineConfig(**config),
        engine.model_root,
        engine.demo,
    )


# ---- clone -------------------------------------------------------------------------------------


def test_clone_returns_24khz_audio_and_a_full_report(first_clone):
    _, result = first_clone
    assert result.sample_rate == VOCODER_SAMPLE_RATE == 24000
    assert result.audio.dtype == np.float32 and result.audio.ndim == 1
    # each whole group of 5 mixed tokens is 3 frames at 25 Hz = 2880 samples at 24 kHz
    assert len(result.audio_tokens) % 5 == 0 and result.audio_tokens
    assert len(result.audio) == 2880 * math.ceil(len(result.audio_tokens) / 5)
    assert np.isfinite(result.audio).all()
    report = result.report
    assert report.new_tokens >= len(result.audio_tokens) and report.tokens_per_s > 0
    assert report.audio_s == pytest.approx(len(result.audio) / 24000)
    for stage in (report.prep_s, report.tokenizer_s, report.vocoder_prompt_s, report.llm_s, report.vocoder_s):
        assert 0 <= stage <= report.total_s
    assert report.rtf == pytest.approx(report.total_s / report.audio_s)
    names = [row[0] for row in report.rows()]
    assert names[0] == "prep" and names[-1] == "total" and "LLM" in names and "vocoder" in names
    assert report.tokens_from in ("encoded", "cache hit")
    # control tokens in the target text are removed, with a warning
    assert "<audio_" not in result.text and "Hello" in result.text and result.warnings


def test_same_voice_is_a_cache_hit(engine):
    audio = voice(seed=12, f0=135.0)
    before = engine.cache_stats()
    engine.prepare_reference(audio, SR, "a short test sentence")  # cold: encode + features
    cold = engine.cache_stats()
    assert cold["misses"] == before["misses"] + 1
    assert cold["vocoder_prompt_misses"] == before["vocoder_prompt_misses"] + 1
    result = first_success(
        lambda seed: engine.clone(
            CloneRequest(
                audio,
                SR,
                "a short test sentence",
                "Again.",
                SynthesisOptions(seed=seed, max_length=MAX_LENGTH),
            )
        )
    )
    assert result.report.cache_hit and result.report.tokens_from == "cache hit"
    assert result.report.vocoder_prompt_cached
    assert result.report.encode_s_saved > 0
    stats = engine.cache_stats()
    assert stats["hits"] > cold["hits"] and stats["vocoder_prompt_hits"] > cold["vocoder_prompt_hits"]
    assert stats["time_saved_s"] > 0


def test_same_voice_from_a_file_at_another_name_hits(engine, first_clone, tmp_path):
    audio, _ = first_clone
    path = tmp_path / "renamed.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    loaded, sr = read_audio(path)
    text = engine.prepare_reference(loaded, sr, "a short test sentence")
    assert text == "a short test sentence"
    assert engine.cache_stats()["hits"] >= 1


@pytest.mark.slow
def test_fresh_engine_on_the_same_cache_folder_hits(engine, demo_models_root, first_clone):
    audio, _ = first_clone
    fresh = CloneEngine.load(demo_models_root, EngineConfig(), cache_dir=engine.cache.directory)
    before = fresh.cache_stats()  # the hit and miss counters live in the folder, shared by both engines
    text = fresh.prepare_reference(audio, SR, "a short test sentence")
    stats = fresh.cache_stats()
    assert text == "a short test sentence"
    assert stats["hits"] == before["hits"] + 1 and stats["misses"] == before["misses"]
    assert stats["vocoder_prompt_hits"] == before["vocoder_prompt_hits"] + 1


def test_another_vocoder_never_reuses_cached_features(engine):
    audio = voice(seed=7, f0=150.0)
    engine.prepare_reference(audio, SR, "words")
    before = engine.cache_stats()
    original = engine.vocoder.fingerprint
    try:
        engine.vocoder.fingerprint = "another-vocoder"
        engine.prepare_reference(audio, SR, "words")
    finally:
        engine.vocoder.fingerprint = original
    after = engine.cache_stats()
    assert after["hits"] == before["hits"] + 1  # the tokens are shared ...
    assert after["vocoder_prompt_misses"] == before["vocoder_prompt_misses"] + 1  # ... the features are not
    key = engine.tokenizer.encode(audio, SR).cache_key
    entry = engine.cache.get(key)
    assert {VOCODER_FIELD_PREFIX + original, VOCODER_FIELD_PREFIX + "another-vocoder"} <= set(entry)


def test_damaged_cached_features_are_recomputed(engine):
    audio = voice(seed=8, f0=170.0)
    engine.prepare_reference(audio, SR, "words")
    key = engine.tokenizer.encode(audio, SR).cache_key
    field = VOCODER_FIELD_PREFIX + engine.vocoder.fingerprint
    good = engine.cache.get(key)[field]
    engine.cache.update(key, {field: {**good, "mel": {"dtype": "<f4", "shape": [3, 80], "b64": "AAAA"}}})
    misses = engine.cache_stats()["vocoder_prompt_misses"]
    engine.prepare_reference(audio, SR, "words")
    assert engine.cache_stats()["vocoder_prompt_misses"] == misses + 1
    assert engine.cache.get(key)[field]["mel"] == good["mel"]  # rewritten with the real features


def test_features_round_trip_exactly():
    rng = np.random.default_rng(0)
    features = PromptFeatures(
        mel=rng.standard_normal((17, 80)).astype(np.float32),
        speaker_embedding=rng.standard_normal(192).astype(np.float32),
    )
    back = decode_features(encode_features(features, "h", 0.1))
    assert np.array_equal(back.mel, features.mel) and back.mel.dtype == np.float32
    assert np.array_equal(back.speaker_embedding, features.speaker_embedding)


def test_audio_digest_tells_clips_apart():
    a = voice(seed=1)
    assert audio_digest(a, SR) == audio_digest(a.copy(), SR)
    assert audio_digest(a, SR) != audio_digest(a, 24000)
    assert audio_digest(a, SR) != audio_digest(np.concatenate([a, np.zeros(100, np.float32)]), SR)


def test_a_set_stop_flag_cancels_the_request(engine):
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationCancelled):
        request = CloneRequest(voice(seed=14), SR, "words", "Hello.", SynthesisOptions(max_length=MAX_LENGTH))
        engine.clone(request, cancel=stop)


# ---- transcription -----------------------------------------------------------------------------


def test_empty_reference_text_is_transcribed_once_and_cached(engine):
    audio = voice(seed=3, f0=140.0)
    text = engine.prepare_reference(audio, SR, "")
    tokens = engine.tokenizer.encode(audio, SR)  # a hit: the stored entry carries the transcript
    assert tokens.from_cache and tokens.cache_entry.get("transcript") is not None
    assert text == tokens.cache_entry["transcript"].strip()
    hits = engine.cache_stats()["hits"]
    assert engine.prepare_reference(audio, SR, "") == text
    assert engine.cache_stats()["hits"] == hits + 1


def test_clone_with_empty_reference_text_reports_the_transcription(engine):
    audio = voice(seed=4, f0=100.0)
    result = first_success(
        lambda seed: engine.clone(
            CloneRequest(audio, SR, "", "Hi.", SynthesisOptions(seed=seed, max_length=MAX_LENGTH))
        )
    )
    assert result.transcribed and result.report.transcribed
    assert "transcription" in [row[0] for row in result.report.rows()]
    assert result.prompt_text == (engine.tokenizer.encode(audio, SR).transcript or "").strip()


def test_no_auto_transcribe_refuses_an_empty_reference_text(engine):
    strict = sibling(engine, auto_transcribe=False)
    with pytest.raises(TextInputError, match="auto-transcription is off"):
        strict.clone(CloneRequest(voice(), SR, "  ", "Hello."))


# ---- edit --------------------------------------------------------------------------------------


def test_edit_chains_on_kept_tokens(engine, first_clone):
    _, cloned = first_clone
    options = lambda seed: SynthesisOptions(seed=seed, max_length=MAX_LENGTH)  # noqa: E731
    happy = first_success(
        lambda s: engine.edit(EditRequest.from_result(cloned, "emotion", "happy", options=options(s)))
    )
    assert happy.mode == "edit emotion/happy" and happy.sample_rate == 24000 and len(happy.audio)
    assert happy.report.tokens_from == "kept" and happy.text == cloned.text
    assert len(cloned.voices) == 1 and cloned.voices[0].mixed_tokens == cloned.audio_tokens
    faster = first_success(
        lambda s: engine.edit(EditRequest.from_result(happy, "speed", "faster", options=options(s)))
    )
    assert faster.mode == "edit speed/faster" and faster.report.tokens_from == "kept"
    # editing the same version again reuses its kept features too
    again = first_success(
        lambda s: engine.edit(EditRequest.from_result(happy, "style", "whisper", options=options(s)))
    )
    assert again.report.vocoder_prompt_cached and again.report.vocoder_prompt_s == 0


def test_edit_of_an_uploaded_clip_goes_through_the_tokenizer(engine):
    audio = voice(seed=5, f0=115.0)
    result = first_success(
        lambda s: engine.edit(
            EditRequest(
                audio, SR, "some words", "denoise", options=SynthesisOptions(seed=s, max_length=MAX_LENGTH)
            )
        )
    )
    assert result.report.tokens_from in ("encoded", "cache hit") and result.mode == "edit denoise"


@pytest.mark.parametrize(
    "task, subtask, message",
    [
        ("sing", None, "unknown edit task"),
        ("emotion", "sleepy", "needs a sub-task"),
        ("emotion", None, "needs a sub-task"),
    ],
)
def test_bad_edit_task_is_refused(engine, task, subtask, message):
    with pytest.raises(OptionsError, match=message):
        engine.edit(EditRequest(voice(), SR, "words", task, subtask))


def test_paralinguistic_edit_needs_the_new_text(engine):
    with pytest.raises(TextInputError, match="new text"):
        engine.edit(EditRequest(voice(), SR, "words", "paralinguistic", target_text=""))


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audio, sr, message",
    [
        (np.zeros(SR * 2, np.float32), SR, "silent"),
        (np.full(SR * 2, np.nan, np.float32), SR, "NaN"),
        (np.zeros(0, np.float32), SR, "empty"),
        (voice(0.15), SR, "speech"),
        (voice(25.0), SR, "limit is 20"),
        (voice(), 0, "sample rate"),
        (np.ones((2, 3, 4), np.float32), SR, "1-D or 2-D"),
    ],
)
def test_bad_reference_audio_is_refused_with_a_reason(engine, audio, sr, message):
    with pytest.raises(AudioInputError, match=message):
        engine.clone(CloneRequest(audio, sr, "words", "Hello."))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("<audio_5><audio_77>", "only control tokens"),
        ("x" * (DEFAULT_MAX_TEXT_CHARS + 1), f"limit is {DEFAULT_MAX_TEXT_CHARS}"),
    ],
)
def test_bad_target_text_is_refused_with_a_reason(engine, text, message):
    with pytest.raises(TextInputError, match=message):
        engine.clone(CloneRequest(voice(), SR, "words", text))


@pytest.mark.parametrize(
    "options, message",
    [
        (SynthesisOptions(temperature=0.0), "temperature"),
        (SynthesisOptions(top_p=1.5), "top-p"),
        (SynthesisOptions(flow_steps=0), "flow steps"),
        (SynthesisOptions(variant="fp8"), "unknown model variant"),
        (SynthesisOptions(seed=-3), "seed"),
    ],
)
def test_bad_options_are_refused(engine, options, message):
    with pytest.raises(OptionsError, match=message):
        engine.clone(CloneRequest(voice(), SR, "words", "Hello.", options))


def test_stereo_and_odd_rates_are_accepted(engine):
    mono = voice(seed=9, sr=11025)
    assert engine.prepare_reference(np.stack([mono, 0.5 * mono]), 11025, "words") == "words"
    assert engine.prepare_reference(voice(seed=9, sr=44100), 44100, "words") == "words"
    pcm16 = (voice(seed=9) * 32767).astype(np.int16)
    audio, sr = read_audio((SR, np.stack([pcm16, pcm16], axis=1)))  # Gradio's (rate, (samples, channels))
    assert audio.shape == (2, len(pcm16)) and audio.dtype == np.float32 and sr == SR
    assert engine.prepare_reference(audio, sr, "words") == "words"


def test_unreadable_files_are_refused(tmp_path):
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio")
    with pytest.raises(AudioInputError, match="could not read"):
        read_audio(bogus)
    with pytest.raises(AudioInputError, match="not exist|not found"):
        read_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioInputError, match="no audio"):
        read_audio(None)


def test_unusable_cache_folder_degrades_to_memory(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache = open_prompt_cache(blocker, 10, 1 << 20)
    cache.put("k", {"vq02": [1], "vq06": [2]})
    assert cache.get("k") == {"vq02": [1], "vq06": [2]}
    assert cache.stats()["persistent"] is False


def test_corrupt_cache_database_degrades(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "cache.db").write_bytes(b"\x00garbage" * 64)
    cache = open_prompt_cache(folder, 10, 1 << 20)
    cache.put("k", {"vq02": [1], "vq06": [2]})
    assert cache.get("k") == {"vq02": [1], "vq06": [2]}


def test_missing_model_files_are_named(tmp_path):
    with pytest.raises(ModelFilesError) as info:
        locate_models(tmp_path / "nothing_here")
    assert "download_models.py" in str(info.value)
    (tmp_path / "partial" / "Step-Audio-Tokenizer").mkdir(parents=True)
    with pytest.raises(ModelFilesError, match=r"Step-Audio-Tokenizer/.*: missing"):
        locate_models(tmp_path / "partial")


def test_missing_models_fall_back_to_the_demo_models(tmp_path, demo_models_root):
    root = locate_models(tmp_path / "empty", demo_models_root, write_demo_models)
    assert root.demo and root.path == demo_models_root
    assert locate_models(demo_models_root).demo


@pytest.mark.slow
def test_other_variant_loads_on_first_use(engine):
    assert engine.loaded_variants == ["base"] and "bnb-4bit" in engine.available_variants()
    options = lambda seed: SynthesisOptions(variant="bnb-4bit", seed=seed, max_length=MAX_LENGTH)  # noqa: E731
    result = first_success(
        lambda seed: engine.clone(CloneRequest(voice(seed=13), SR, "words", "Hi.", options(seed)))
    )
    assert result.variant == "bnb-4bit" and "bnb-4bit" in engine.status()["variants_loaded"]


def test_a_library_voice_made_with_other_models_is_re_encoded_once(engine, caplog):
    """As at start-up after a model upgrade: a voice whose fingerprints are not the loaded models'
    gets fresh tokens and features from its kept reference audio, once, with a log line."""
    info = engine.voices.create_voice("Made before an upgrade", voice(seed=12, f0=160.0), SR, "words")
    current = engine.voices.fingerprints()
    made = engine.voices.library.get(info.id)
    engine.voices.library.update(
        info.id,
        fingerprints={name: f"older-{value}" for name, value in current.items()},
        vq02=[0] * len(made.vq02),
        vocoder_features=None,
    )
    with caplog.at_level("INFO", logger="voice_prompts"):
        assert engine.voices.refresh_voices() == 1
    again = engine.voices.library.get(info.id)
    kept, kept_sr = read_audio(made.audio_flac)  # re-encoding starts from the voice's stored FLAC
    assert again.fingerprints == current and again.vocoder_features
    assert again.vq02 == engine.tokenizer.encode(kept, kept_sr).vq02 != [0] * len(made.vq02)
    assert any(info.id in r.getMessage() for r in caplog.records)
    assert engine.voices.refresh_voices() == 0  # once: it now matches the models
