"""The served app: app.py in a subprocess on demo models, driven with gradio_client and plain HTTP.

Also the adapter (ui_adapter.py) on its own: UI values -> request, engine errors -> gr.Error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

from demo.examples import synthetic_voice
from errors import AudioInputError, OptionsError
from tests.app_server import ROOT, free_port, get_json, running_app
from ui.adapter import EngineAdapter, cache_table, synthesis_options


@pytest.fixture(scope="module")
def server(demo_models_root, tmp_path_factory):
    with running_app(demo_models_root, tmp_path_factory.mktemp("app")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def clone_args(wav: Path, reference_text: str, target: str, seed: int = 0) -> list:
    from gradio_client import handle_file

    return [handle_file(str(wav)), reference_text, target, "base", seed, 0.7, 1.0, 10]


def predict_until_audio(client, wav: Path, reference_text: str, target: str):
    """/clone, trying a few seeds: the random demo LLM sometimes emits no whole audio group."""
    from gradio_client.exceptions import AppError

    last = None
    for seed in range(6):
        try:
            return client.predict(*clone_args(wav, reference_text, target, seed), api_name="/clone")
        except AppError as exc:
            if "No audio was generated" not in str(exc) and "no complete audio" not in str(exc):
                raise
            last = exc
    raise AssertionError(f"no seed produced audio: {last}")


# ---- served app --------------------------------------------------------------------------------

@pytest.mark.slow
def test_health_reports_models_device_variant_demo_and_cache(server):
    health = server.health_at_start
    assert health["status"] == "ok" and health["demo"] is True
    assert health["models_loaded"]["tokenizer"] and health["models_loaded"]["llm"] == ["base"]
    assert health["device"] == "cpu" and health["variant"] == "base"
    cache = health["cache"]
    assert cache["persistent"] is True
    # the warm-up cloned the first example voice, so it is already in the cache for users
    assert health["requests"] == 1 and cache["misses"] == 1 and cache["entries"] == 1
    assert "untrained" in server.log() or "DEMO" in server.log()


@pytest.mark.slow
def test_clone_over_the_api_returns_24khz_wav_and_health_shows_the_hit(server, client, tmp_path):
    wav = tmp_path / "voice.wav"
    sf.write(wav, synthetic_voice(3.0, 44100, f0=140.0, seed=21), 44100)  # a new voice: a miss
    audio_path, reference_text, timing, *_ = predict_until_audio(client, wav, "some words here", "Hello.")
    audio, sr = sf.read(audio_path)
    assert sr == 24000 and audio.ndim == 1 and len(audio) > 0
    assert reference_text == "some words here"
    stages = [row[0] for row in timing["data"]]
    assert stages[0] == "prep" and stages[-1] == "total"
    before = get_json(server.url + "/health")["cache"]["hits"]
    _, _, timing, *_ = predict_until_audio(client, wav, "some words here", "Again.")
    assert [row[0] for row in timing["data"]][1] == "tokenizer (cache hit)"
    assert get_json(server.url + "/health")["cache"]["hits"] > before


@pytest.mark.slow
def test_example_voice_was_cached_by_the_warm_up(server, client):
    example = sorted(server.examples.glob("*.wav"))
    index = json.loads((server.examples / "examples.json").read_text())
    first = next(p for p in example if p.stem == next(iter(index)))
    _, _, timing, *_ = predict_until_audio(client, first, index[first.stem]["reference_text"], "Hi.")
    assert [row[0] for row in timing["data"]][1] == "tokenizer (cache hit)"


@pytest.mark.slow
def test_bad_input_over_the_api_is_a_clear_error_and_the_server_lives(server, client, tmp_path):
    from gradio_client.exceptions import AppError

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(24000, np.float32), 24000)
    with pytest.raises(AppError, match="silent") as info:
        client.predict(*clone_args(silent, "words", "Hello."), api_name="/clone")
    assert "Traceback" not in str(info.value)
    with pytest.raises(AppError, match="empty"):
        client.predict(*clone_args(silent, "words", "   "), api_name="/clone")
    assert "refused: the reference audio is silent" in server.log()  # the log keeps the detail
    assert get_json(server.url + "/health")["status"] == "ok"


@pytest.mark.slow
def test_edit_over_the_api(server, client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    wav = tmp_path / "edit.wav"
    sf.write(wav, synthetic_voice(3.0, 16000, f0=110.0, seed=22), 16000)
    for seed in range(6):
        try:
            audio_path, timing, *_ = client.predict(
                "my own clip", None, handle_file(str(wav)), "words to edit", "speed", "faster", "", "base",
                seed, 0.7, 1.0, 10, api_name="/edit")
            break
        except AppError as exc:
            assert "No audio was generated" in str(exc) or "no complete audio" in str(exc)
    else:
        pytest.fail("no seed produced an edit")
    audio, sr = sf.read(audio_path)
    assert sr == 24000 and len(audio) > 0


def test_missing_models_without_demo_fallback_is_a_start_up_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--model-dir", str(tmp_path / "none"), "--no-demo",
         "--cache-dir", "none", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "download_models.py" in proc.stderr and "missing" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- adapter on its own ------------------------------------------------------------------------

def test_options_from_ui_values():
    opts = synthesis_options("base", 7.0, 0.8, 0.9, 12.0)
    assert (opts.seed, opts.temperature, opts.top_p, opts.flow_steps) == (7, 0.8, 0.9, 12)
    assert synthesis_options(None, -1, 0.7, 1.0, 10).seed is None  # -1: random
    assert synthesis_options(None, None, 0.7, 1.0, 10).seed is None
    with pytest.raises(OptionsError, match="-1 \\(random\\)"):  # only -1 means random, not any negative
        synthesis_options(None, -2, 0.7, 1.0, 10)
    with pytest.raises(OptionsError, match="whole number"):
        synthesis_options(None, 1.5, 0.7, 1.0, 10)
    with pytest.raises(OptionsError, match="temperature"):
        synthesis_options(None, 0, 5.0, 1.0, 10)


def test_adapter_turns_engine_errors_into_messages():
    def refuse():
        raise AudioInputError("the reference audio is silent")

    with pytest.raises(gr.Error) as info:
        EngineAdapter._guard("clone", refuse)
    assert info.value.message == "The reference audio is silent"

    def crash():
        raise KeyError("internal detail")

    with pytest.raises(gr.Error) as info:
        EngineAdapter._guard("clone", crash)
    assert "server log" in info.value.message and "internal detail" not in info.value.message


def test_stop_flags_only_the_requesting_sessions_run():
    from types import SimpleNamespace

    adapter = EngineAdapter(engine=None)
    mine, other = SimpleNamespace(session_hash="mine"), SimpleNamespace(session_hash="other")
    with adapter._cancel_flag(mine) as my_flag, adapter._cancel_flag(other) as other_flag:
        adapter.stop(mine)
        assert my_flag.is_set() and not other_flag.is_set()
    adapter.stop(mine)  # nothing running: a no-op
    assert adapter._cancels == {}


def test_cache_table_rows():
    rows = dict(cache_table({"hits": 3, "misses": 1, "hit_rate": 0.75, "entries": 2, "bytes": 2_500_000,
                             "time_saved_s": 1.5, "vocoder_prompt_time_saved_s": 0.25, "directory": None}))
    assert rows["hits"] == "3" and rows["hit rate"] == "75 %" and rows["size on disk"] == "2.50 MB"
    assert rows["time saved"] == "1.75 s" and rows["folder"] == "in memory only"
