"""VoiceLibrary: named voices in the store (disk and Redis), never evicted, persistent, JSON only."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from errors import AudioInputError, TextInputError
from models.prompt_features import PromptFeatures, audio_digest, decode_features, encode_features
from prompt_cache import PromptCache
from voices import DATA, META, VoiceLibrary, slugify

SR = 16000
FINGERPRINTS = {"tokenizer": "tok-1", "vocoder": "voc-1"}


def _flac(seconds: float = 0.5, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="FLAC")
    return buf.getvalue()


def _features(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    features = PromptFeatures(
        mel=rng.standard_normal((20, 80)).astype(np.float32),
        speaker_embedding=rng.standard_normal(192).astype(np.float32),
    )
    return encode_features(features, audio_digest(features.mel.ravel(), SR), 0.25)


def _create(library: VoiceLibrary, name: str = "Calm narrator", seed: int = 0, **overrides):
    args = {
        "text": "a calm sentence",
        "audio_flac": _flac(seed=seed),
        "vq02": [1, 2, 3],
        "vq06": [4, 5, 6],
        "vocoder_features": _features(seed),
        "fingerprints": FINGERPRINTS,
    }
    args.update(overrides)
    return library.create(name, **args)


def test_ids_are_url_safe_slugs_of_the_name():
    assert slugify("Calm Narrator") == "calm-narrator"
    assert slugify("  Zoë's   voice (EN) #2 ") == "zoe-s-voice-en-2"
    assert slugify("声音") == "voice" and slugify("---") == "voice"
    assert len(slugify("x" * 500)) <= 48


def test_create_get_list_rename_update_delete(store_factory):
    library = VoiceLibrary(store_factory())
    flac = _flac(seed=1)
    voice = _create(library, audio_flac=flac, created=1000.0)
    assert voice.id == "calm-narrator"
    assert [_create(library, seed=s).id for s in (2, 3)] == ["calm-narrator-2", "calm-narrator-3"]
    got = library.get("calm-narrator")
    assert got == voice and got.audio_flac == flac and got.created == 1000.0
    audio, sr = sf.read(io.BytesIO(got.audio_flac))
    assert sr == SR and len(audio) == SR // 2
    mel = decode_features(got.vocoder_features).mel
    np.testing.assert_array_equal(mel, decode_features(_features(0)).mel)
    infos = library.list()
    assert [i.id for i in infos] == ["calm-narrator", "calm-narrator-2", "calm-narrator-3"]
    assert infos[0].audio_bytes == len(flac) and infos[0].fingerprints == FINGERPRINTS
    assert not hasattr(infos[0], "vq02") and not hasattr(infos[0], "audio_flac")
    renamed = library.rename("calm-narrator", "Calm narrator, take two")
    assert renamed.name == "Calm narrator, take two" and renamed.id == "calm-narrator"  # links keep working
    assert library.get("calm-narrator").name == "Calm narrator, take two"
    updated = library.update(
        "calm-narrator-2",
        vq02=[7],
        vq06=[8, 9],
        vocoder_features=None,
        fingerprints={"tokenizer": "tok-2", "vocoder": "voc-1"},
    )
    assert (updated.vq02, updated.vq06, updated.vocoder_features) == ([7], [8, 9], None)
    assert updated.text == "a calm sentence" and updated.audio_flac == _flac(seed=2)
    assert library.delete("calm-narrator-3") is True and library.delete("calm-narrator-3") is False
    assert library.get("calm-narrator-3") is None and library.rename("calm-narrator-3", "x") is None
    assert library.update("nobody", text="x") is None
    assert [i.id for i in library.list()] == ["calm-narrator", "calm-narrator-2"]
    assert _create(library, seed=4).id == "calm-narrator-3"  # a deleted id is free again


def test_stale_lists_voices_made_with_other_models(store_factory):
    library = VoiceLibrary(store_factory())
    _create(library, "Old", fingerprints={"tokenizer": "tok-0", "vocoder": "voc-1"})
    _create(library, "Current")
    _create(library, "Other vocoder", fingerprints={"tokenizer": "tok-1", "vocoder": "voc-9"})
    assert [i.id for i in library.stale(FINGERPRINTS)] == ["old", "other-vocoder"]
    assert [i.id for i in library.stale({"tokenizer": "tok-1"})] == ["old"]


def test_voices_are_never_evicted_by_the_prompt_cache(store_factory):
    store = store_factory(max_bytes=400_000)
    library = VoiceLibrary(store)
    cache = PromptCache(store=store, max_entries=5, max_bytes=400_000)
    made = [_create(library, f"voice {i}", seed=i, text="t" * 60_000).id for i in range(6)]  # > the budget
    for i in range(40):
        cache.put(f"k{i}", {"vq02": [i], "vq06": [i], "pad": "x" * 40_000})
        cache.get(f"k{i}")
    assert cache.stats()["entries"] <= 5 and cache.get("k39") is not None
    assert [i.id for i in library.list()] == made
    assert all(library.get(v) is not None for v in made)
    cache.clear()  # clearing the cache leaves the library alone
    assert [i.id for i in library.list()] == made


def test_voices_survive_a_restart(store_factory):
    voice = _create(VoiceLibrary(store_factory()))
    again = VoiceLibrary(store_factory())  # a new store object, as a new process opens it
    assert again.get(voice.id) == voice and [i.id for i in again.list()] == [voice.id]
    assert _create(again).id == "calm-narrator-2"


def test_bad_input_is_refused_with_a_reason(store_factory):
    library = VoiceLibrary(store_factory())
    with pytest.raises(TextInputError, match="name"):
        _create(library, "   ")
    with pytest.raises(AudioInputError, match="FLAC"):
        _create(library, audio_flac=b"RIFF....WAVEfmt ")
    with pytest.raises(TypeError, match="unknown voice fields"):
        library.update("calm-narrator", colour="blue")
    assert library.list() == []


def test_a_damaged_record_is_skipped_not_fatal(store_factory):
    store = store_factory()
    library = VoiceLibrary(store)
    good = _create(library, "Good")
    store.put(META, "broken", {"name": "no created time"})
    store.put(DATA, "half", {"vq02": []})  # data without metadata: not a voice
    assert [i.id for i in library.list()] == [good.id]
    assert library.get("broken") is None and library.get("half") is None
