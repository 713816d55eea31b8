"""StepAudioTokenizer on the demo models: tokens, the prompt cache, inputs, files, threads, transcripts."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from errors import AudioInputError, ModelFilesError
from model_layout import PARAFORMER_SUBDIR
from models.audio_tokens import AUDIO_ID_OFFSET, VQ02_CODES, VQ06_CODES, interleave, to_llm_ids, token_str
from prompt_cache import PromptCache
from tokenizer import StepAudioTokenizer

ROOT = Path(__file__).resolve().parents[1]


def _voice(seconds: float, sr: int, f0: float = 130.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2
    x = env * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    x = x + 0.01 * rng.standard_normal(len(t))
    return (0.3 * x).astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer_dir(demo_tokenizer_root) -> Path:
    return demo_tokenizer_root / "Step-Audio-Tokenizer"


@pytest.fixture(scope="module")
def tok(tokenizer_dir, tmp_path_factory) -> StepAudioTokenizer:
    cache = PromptCache(tmp_path_factory.mktemp("prompt_cache"))
    return StepAudioTokenizer(tokenizer_dir, device="cpu", cache=cache)


def test_interleave_groups_and_text_form():
    vq02, vq06 = [1, 2, 3, 4, 5], [10, 11, 12, 13, 14, 15, 16]
    ids = to_llm_ids(interleave(vq02, vq06))
    assert ids == [65537, 65538, 66570, 66571, 66572, 65539, 65540, 66573, 66574, 66575]
    assert token_str(interleave(vq02, vq06)) == (
        "<audio_1><audio_2><audio_1034><audio_1035><audio_1036>"
        "<audio_3><audio_4><audio_1037><audio_1038><audio_1039>"
    )
    assert interleave([1], [1, 2, 3]) == [] and token_str(interleave([], [])) == ""


def test_encode_gives_consistent_tokens(tok):
    out = tok.encode(_voice(2.0, 24000), 24000)
    groups = min(len(out.vq02) // 2, len(out.vq06) // 3)
    assert groups > 0 and len(out.llm_ids) == 5 * groups
    assert all(0 <= c < VQ02_CODES for c in out.vq02) and all(0 <= c < VQ06_CODES for c in out.vq06)
    seconds = len(out.audio_16k) / 16000
    assert abs(len(out.vq06) - 25 * seconds) <= 2 and abs(len(out.vq02) - 50 / 3 * seconds) <= 2
    numbers = [int(n) for n in re.findall(r"<audio_(\d+)>", out.token_str)]
    assert "".join(f"<audio_{n}>" for n in numbers) == out.token_str
    assert [n + AUDIO_ID_OFFSET for n in numbers] == out.llm_ids
    assert out.llm_ids[:2] == [c + 65536 for c in out.vq02[:2]]
    assert out.llm_ids[2:5] == [c + 65536 + 1024 for c in out.vq06[:3]]


def test_cache_miss_then_hit_and_restart(tok, tokenizer_dir, tmp_path):
    audio = _voice(1.5, 22050, f0=150)
    cache = PromptCache(tmp_path / "c")
    first_tok = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=cache)
    first = first_tok.encode(audio, 22050)
    assert not first.from_cache and first.encode_seconds > 0
    second = first_tok.encode(audio.copy(), 22050)
    assert second.from_cache and (second.vq02, second.vq06) == (first.vq02, first.vq06)
    assert second.cache_key == first.cache_key and second.encode_seconds == first.encode_seconds
    stats = cache.stats()
    assert stats["hits"] == 1 and stats["misses"] == 1
    assert stats["time_saved_s"] == pytest.approx(first.encode_seconds, abs=1e-5)
    # a new process-equivalent: new cache object and tokenizer on the same folder
    tok.cache, saved = PromptCache(tmp_path / "c"), tok.cache
    try:
        again = tok.encode(audio, 22050)
        assert again.from_cache and again.vq02 == first.vq02 and again.token_str == first.token_str
    finally:
        tok.cache = saved


def test_hit_after_restart_skips_prep_through_the_persistent_alias(tokenizer_dir, tmp_path, monkeypatch):
    import tokenizer as tokenizer_module

    audio = _voice(1.5, 24000, f0=140, seed=3)
    first = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=PromptCache(tmp_path / "c"))
    cold = first.encode(audio, 24000)
    # a restart: fresh cache object and tokenizer (empty in-process memo) on the same folder
    second = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=PromptCache(tmp_path / "c"))
    calls = []
    real_prepare = tokenizer_module.prepare_for_tokenizer
    monkeypatch.setattr(
        tokenizer_module, "prepare_for_tokenizer", lambda *a, **k: calls.append(1) or real_prepare(*a, **k)
    )
    hit = second.encode(audio, 24000)
    assert hit.from_cache and calls == []  # no resample / trim for a known input
    assert (hit.cache_key, hit.vq02, hit.vq06, hit.token_str) == (
        cold.cache_key,
        cold.vq02,
        cold.vq06,
        cold.token_str,
    )
    np.testing.assert_array_equal(hit.audio_16k, cold.audio_16k)  # rebuilt on demand, identical
    assert calls == [1]


def test_alias_to_an_evicted_entry_encodes_again(tokenizer_dir, tmp_path):
    audio = _voice(1.2, 16000, f0=190, seed=4)
    cache = PromptCache(tmp_path / "c")
    tok_a = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=cache)
    cold = tok_a.encode(audio, 16000)
    cache.delete(cold.cache_key)  # evicted behind the alias's back
    tok_b = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=PromptCache(tmp_path / "c"))
    again = tok_b.encode(audio, 16000)
    assert not again.from_cache and again.cache_key == cold.cache_key and again.vq02 == cold.vq02
    assert tok_b.encode(audio, 16000).from_cache


def test_aliases_are_per_model_fingerprint(tokenizer_dir, tmp_path):
    audio = _voice(1.2, 16000, f0=210, seed=5)
    cache = PromptCache(tmp_path / "c")
    tok_a = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=cache)
    key_a = tok_a.encode(audio, 16000).cache_key
    tok_b = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=PromptCache(tmp_path / "c"))
    tok_b.fingerprint = "another-model"
    out = tok_b.encode(audio, 16000)
    assert not out.from_cache and out.cache_key != key_a


def test_same_voice_hits_whatever_the_layout(tok):
    mono = _voice(1.2, 16000, f0=170)
    a = tok.encode(mono, 16000)
    b = tok.encode(np.stack([mono, mono]), 16000)  # identical channels: same prepared PCM
    assert b.from_cache and b.cache_key == a.cache_key


def test_fingerprint_follows_file_contents_not_paths(tokenizer_dir, tmp_path, tok):
    copy = tmp_path / "copy" / "Step-Audio-Tokenizer"
    shutil.copytree(tokenizer_dir, copy)
    assert StepAudioTokenizer(copy, device="cpu").fingerprint == tok.fingerprint
    centroids = np.load(copy / "linguistic_tokenizer.npy")
    np.save(copy / "linguistic_tokenizer.npy", centroids[::-1].copy())
    changed = StepAudioTokenizer(copy, device="cpu", cache=tok.cache)
    assert changed.fingerprint != tok.fingerprint
    audio = _voice(1.0, 16000, f0=210)
    tok.encode(audio, 16000)
    out = changed.encode(audio, 16000)
    assert not out.from_cache  # other weights never return stale codes


@pytest.mark.parametrize(
    "damage", ["missing_onnx", "truncated_model", "truncated_centroids", "truncated_cmvn", "truncated_config"]
)
def test_missing_or_truncated_files_fail_at_start_naming_the_file(tokenizer_dir, tmp_path, damage):
    copy = tmp_path / "Step-Audio-Tokenizer"
    shutil.copytree(tokenizer_dir, copy)
    sub = copy / PARAFORMER_SUBDIR
    target = {
        "missing_onnx": copy / "speech_tokenizer_v1.onnx",
        "truncated_model": sub / "model.pt",
        "truncated_centroids": copy / "linguistic_tokenizer.npy",
        "truncated_cmvn": sub / "am.mvn",
        "truncated_config": sub / "config.yaml",
    }[damage]
    if damage.startswith("missing"):
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    with pytest.raises(ModelFilesError, match=re.escape(target.name)):
        StepAudioTokenizer(copy, device="cpu")


def test_loading_makes_no_network_connection(tokenizer_dir):
    code = f"""
import socket, sys
sys.path.insert(0, {str(ROOT)!r})
attempts = []
def refuse(self, *args, **kwargs):
    attempts.append(args)
    raise OSError("network disabled by test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = lambda *a, **k: refuse(None, *a)
from tokenizer import StepAudioTokenizer
import numpy as np
tok = StepAudioTokenizer({str(tokenizer_dir)!r}, device="cpu")
tok.encode(np.sin(np.arange(16000) * 0.05).astype(np.float32), 16000, transcribe=True)
assert not attempts, attempts
print("no-network-ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "no-network-ok" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("case", ["stereo", "8k", "22k05", "48k", "short_0p2s", "long_60s"])
def test_inputs_of_any_rate_layout_and_length_give_tokens(tok, case):
    sr = {"8k": 8000, "22k05": 22050, "48k": 48000}.get(case, 24000)
    seconds = {"short_0p2s": 0.2, "long_60s": 60.0}.get(case, 1.5)
    audio = _voice(seconds, sr, seed=hash(case) % 100)
    if case == "stereo":
        audio = np.stack([audio, 0.5 * audio[::-1]])
    out = tok.encode(audio, sr)
    assert out.vq02 and out.vq06 and out.llm_ids
    assert abs(len(out.vq06) - 25 * len(out.audio_16k) / 16000) <= 2 * (1 + len(out.audio_16k) // 480000)


@pytest.mark.parametrize("case", ["all_zero", "nan", "inf", "empty", "wrong_shape"])
def test_bad_inputs_raise_audio_input_error(tok, case):
    audio = _voice(1.0, 16000)
    if case == "all_zero":
        audio = np.zeros(16000, np.float32)
    elif case == "nan":
        audio[123] = np.nan
    elif case == "inf":
        audio[5] = -np.inf
    elif case == "empty":
        audio = np.zeros(0, np.float32)
    else:
        audio = audio.reshape(1, 1, -1)
    with pytest.raises(AudioInputError):
        tok.encode(audio, 16000)


def test_concurrent_encodes_from_threads_agree(tokenizer_dir):
    uncached = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=None)
    clips = [_voice(1.0 + 0.25 * i, 16000, f0=120 + 30 * i, seed=i) for i in range(3)]
    expected = [uncached.encode(c, 16000) for c in clips]
    results: dict = {}
    errors: list = []

    def work(t: int) -> None:
        try:
            i = t % len(clips)
            results[t] = (i, uncached.encode(clips[i], 16000, transcribe=t % 2 == 0))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6
    for i, out in results.values():
        want = expected[i]
        assert (out.vq02, out.vq06, out.token_str) == (want.vq02, want.vq06, want.token_str)


def test_transcription_is_a_string_cached_and_added_to_old_entries(tok, caplog):
    audio = _voice(2.0, 16000, f0=190, seed=5)
    plain = tok.encode(audio, 16000)
    assert plain.transcript is None
    with_text = tok.encode(audio, 16000, transcribe=True)  # cached entry lacks it: computed and added
    assert isinstance(with_text.transcript, str) and with_text.vq02 == plain.vq02
    assert not any(s in with_text.transcript for s in ("<blank>", "<s>", "</s>", "<unk>", "@@"))
    again = tok.encode(audio, 16000, transcribe=True)
    assert again.from_cache and again.transcript == with_text.transcript
    assert tok.cache.get(again.cache_key)["transcript"] == with_text.transcript
    fresh = tok.encode(_voice(1.7, 16000, f0=230, seed=6), 16000, transcribe=True)
    assert isinstance(fresh.transcript, str) and fresh.cache_entry["transcript"] == fresh.transcript


def test_codes_are_deterministic_with_dither_forced_off(tokenizer_dir, caplog):
    config = (tokenizer_dir / PARAFORMER_SUBDIR / "config.yaml").read_text()
    assert "dither:" not in config  # like the real file: FunASR would default to dither 1.0
    with caplog.at_level(logging.DEBUG, logger="models"):
        uncached = StepAudioTokenizer(tokenizer_dir, device="cpu", cache=None)
    assert any("dither forced to 0" in r.getMessage() for r in caplog.records)
    audio = _voice(1.3, 16000, seed=9)
    assert uncached.encode(audio, 16000).vq02 == uncached.encode(audio, 16000).vq02
    assert any("execution mode" in r.getMessage() for r in caplog.records)


def test_batched_streaming_encoder_matches_funasr_chunk_loop(tok):
    """The layer-batched encoder equals FunASR's per-chunk encode_chunk loop at every tail length."""
    audio = tok.prepare(_voice(2.0, 16000, seed=3), 16000)[1]
    # lengths around the chunk (3840) and trim (240) grids, incl. the two end-of-audio rules
    for n in (400, 700, 3840, 4080, 4320, 4560, 7680, 7920, 8160, 11520, 11760, 12000, len(audio)):
        clip = audio[:n]
        batched = tok.vq02.encode(clip, transcribe=True)
        chunked = tok.vq02.encode(clip, transcribe=True, batched=False)
        assert batched.enc_out.shape == chunked.enc_out.shape, n
        np.testing.assert_allclose(batched.enc_out, chunked.enc_out, atol=1e-4, err_msg=str(n))
        assert batched.codes == chunked.codes and batched.transcript == chunked.transcript, n


def test_demo_assets_are_deterministic_from_the_seed(tmp_path):
    from demo.tokenizer_assets import write

    write(tmp_path / "a", 3)
    write(tmp_path / "b", 3)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 8
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
