"""The page's API on a served app (demo models), driven with gradio_client, plain HTTP and bash.

The server listens on 0.0.0.0 with an API key, as a deployment open to the network would, and the
tests connect through 127.0.0.1. Also the adapter's pieces on their own (no server): UI values ->
options, engine errors -> messages, the timing table, version labels and details, the admin check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
import soundfile as sf

from audio_join import ChunkJoiner
from demo.examples import synthetic_voice
from errors import AccessError, AudioInputError, OptionsError
from preflight import preflight
from reports import ChunkReport, StageReport, TakeScore
from scoring import NOT_SCORED
from synthesis import Segment, SynthesisResult
from tests.app_server import BUSY_ARGS, ROOT, fill_the_queue, free_port, get_json, running_app
from ui.access import AdminGate
from ui.adapter import EngineAdapter
from ui.cache_panel import cache_table
from ui.reference_check import check_markdown
from ui.tags import insert_tag
from ui.timing import UploadEncode, score_row, timing_html, timing_rows
from ui.values import public_error, synthesis_options
from ui.versions import (
    add_version,
    chunk_details,
    report_fields,
    result_details,
    version_choices,
    version_label,
)

KEY = "page-admin-key-0123"
SEEDS = 6  # the random demo LLM sometimes emits no whole audio group for a seed


@pytest.fixture(scope="module")
def server(demo_models_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("app")
    with running_app(demo_models_root, work, ["--host", "0.0.0.0", "--api-key", KEY]) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def rest(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as c:
        yield c


def voice_file(
    tmp_path: Path, name: str = "voice.wav", seconds: float = 3.0, sr: int = 22050, seed: int = 21
) -> Path:
    path = tmp_path / name
    sf.write(path, synthetic_voice(seconds, sr, f0=140.0, seed=seed), sr)
    return path


def clone(
    client,
    wav: Path | None,
    text: str = "Hello.",
    reference_text: str = "some words here",
    voice: str = "(new)",
    **options,
):
    """/clone with keyword arguments, trying a few seeds (no-audio seeds of the demo LLM are skipped)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    last = None
    for seed in range(SEEDS):
        try:
            return client.predict(
                text=text,
                voice=voice,
                reference_audio=handle_file(str(wav)) if wav else None,
                reference_text=reference_text,
                seed=seed,
                max_new_tokens=60,
                api_name="/clone",
                **options,
            )
        except AppError as exc:
            if "no audio" not in str(exc).lower():
                raise
            last = exc
    raise AssertionError(f"no seed produced audio: {last}")


def edit(client, version: str, task: str = "speed", subtask: str = "faster"):
    from gradio_client.exceptions import AppError

    last = None
    for seed in range(SEEDS):
        try:
            return client.predict(
                version=version, task=task, subtask=subtask, seed=seed, max_new_tokens=60, api_name="/edit"
            )
        except AppError as exc:
            if "no audio" not in str(exc).lower():
                raise
            last = exc
    raise AssertionError(f"no seed produced an edit: {last}")


# ---- served app --------------------------------------------------------------------------------


@pytest.mark.slow
def test_health_reports_models_and_cache_without_server_paths(server):
    health = server.health_at_start
    assert health["status"] == "ok" and health["demo"] is True
    assert health["models_loaded"]["tokenizer"] and health["models_loaded"]["llm"] == ["base"]
    assert health["device"] == "cpu" and health["variant"] == "base"
    # the warm-up cloned the first example voice, so it is already in the cache for users
    assert health["requests"] == 1 and health["cache"]["misses"] == 1 and health["cache"]["entries"] == 1
    text = json.dumps(health)
    assert str(server.log_path.parent) not in text and "/tmp/" not in text


@pytest.mark.slow
def test_start_up_log_has_no_share_hint_and_no_ffmpeg_warning(server):
    log = server.log()
    assert "serving on http://0.0.0.0" in log
    assert "share=True" not in log  # Gradio's hint contradicts our --share flag
    assert "ffmpeg" not in log.lower()  # pydub's warning, from FunASR's import of it


@pytest.mark.slow
def test_api_view_names_every_input_and_the_two_outputs(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    clone_info, edit_info = info["/clone"], info["/edit"]
    assert [p["parameter_name"] for p in clone_info["parameters"]] == [
        "text",
        "voice",
        "reference_audio",
        "reference_text",
        "variant",
        "seed",
        "temperature",
        "top_p",
        "flow_steps",
        "max_new_tokens",
        "best_of",
    ]
    assert [r["label"] for r in clone_info["returns"]] == ["Speech", "Details"]
    assert [p["parameter_name"] for p in edit_info["parameters"]][:6] == [
        "version",
        "clip",
        "clip_text",
        "task",
        "subtask",
        "new_text",
    ]
    assert [r["label"] for r in edit_info["returns"]] == ["Edited speech", "Details"]
    optional = {p["parameter_name"] for p in clone_info["parameters"] if p["parameter_has_default"]}
    assert optional == {p["parameter_name"] for p in clone_info["parameters"]} - {"text"}
    for name, endpoint in info.items():  # no unnamed "value_14" anywhere
        labels = [p["label"] for p in endpoint["parameters"]] + [r["label"] for r in endpoint["returns"]]
        assert not any(re.fullmatch(r"(value|parameter)_\d+", label or "") for label in labels), name
    assert "/clear_cache" not in info and "/delete_voice" not in info  # callable, not advertised


@pytest.mark.slow
def test_clone_returns_speech_and_details_and_the_version_is_edited_over_rest_and_back(
    server, client, rest, tmp_path
):
    speech, details = clone(client, voice_file(tmp_path), text="Hello there.")
    audio, sr = sf.read(speech)
    assert sr == 24000 and audio.ndim == 1 and len(audio) == details["samples"] > 0
    assert details["status"] == "done" and details["text"] == "Hello there."
    assert details["reference_text"] == "some words here" and details["voice"] == "voice"
    assert set(details["timings"]) >= {"prep_s", "tokenizer_s", "llm_s", "vocoder_s", "total_s"}
    assert all(isinstance(v, float) for v in details["timings"].values())
    version_id = details["version_id"]

    # a page version is an output of the REST API: edit it there
    for seed in range(SEEDS):
        response = rest.post(
            "/v1/audio/edits",
            json={"output_id": version_id, "task": "speed", "subtask": "faster", "seed": seed},
        )
        if response.status_code == 200:
            break
        assert "no audio" in response.text.lower(), response.text
    assert response.status_code == 200, response.text
    rest_id = response.headers["X-Output-Id"]

    # and a REST output is a version of the page: edit it there
    edited, edit_details = edit(client, rest_id)
    assert sf.info(edited).samplerate == 24000
    assert edit_details["source_version_id"] == rest_id and edit_details["mode"] == "edit speed/faster"
    again = rest.post("/v1/audio/edits", json={"output_id": edit_details["version_id"], "task": "vad"})
    assert again.status_code in (200, 422, 500) and "no output with id" not in again.text


@pytest.mark.slow
def test_best_of_two_makes_at_most_two_takes_per_chunk_and_keeps_one(client, tmp_path):
    _, details = clone(
        client, voice_file(tmp_path, seed=41), text="One sentence. And a second one.", best_of=2
    )
    chunks = details["report"]["chunks"]
    assert chunks and all(1 <= len(c["takes"]) <= 2 for c in chunks)
    for chunk in chunks:  # the kept take is one of those tried, with its scores
        kept = [t for t in chunk["takes"] if t["seed"] == chunk["seed"]]
        assert len(kept) == 1 and kept[0]["similarity"] == chunk["similarity"]


@pytest.mark.slow
def test_an_unknown_version_is_a_message_not_a_crash(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No output with id 'out-000000000000'"):
        client.predict(version="out-000000000000", task="speed", subtask="faster", api_name="/edit")


@pytest.mark.slow
def test_missing_inputs_are_named_by_field(client):
    from gradio_client.exceptions import ValidationError

    with pytest.raises(ValidationError) as info:
        client.predict(text="   ", api_name="/clone")
    message = str(info.value)
    assert "text: Type the text to speak" in message and "reference_audio: Upload or record" in message
    with pytest.raises(ValidationError, match="version: Pick a version"):
        client.predict(api_name="/edit")


@pytest.mark.slow
def test_bad_audio_is_a_clear_error_without_server_paths(server, client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(24000, np.float32), 24000)
    with pytest.raises(AppError, match="silent") as info:
        client.predict(text="Hello.", reference_audio=handle_file(str(silent)), api_name="/clone")
    assert "Traceback" not in str(info.value)
    text_file = tmp_path / "notes.wav"
    text_file.write_text("this is a text file, not a recording\n" * 20)
    with pytest.raises(AppError) as info:
        client.predict(text="Hello.", reference_audio=handle_file(str(text_file)), api_name="/clone")
    message = str(info.value)
    assert "'notes.wav'" in message and "common format" in message
    assert "/tmp" not in message and "gradio" not in message.lower() and str(tmp_path) not in message
    assert "refused: the reference audio is silent" in server.log()  # the log keeps the detail
    assert get_json(server.url + "/health")["status"] == "ok"


@pytest.mark.slow
def test_a_short_clip_warns_and_a_too_short_one_is_refused_with_the_minimum(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, details = clone(client, voice_file(tmp_path, "short.wav", seconds=1.5, seed=5), text="Hi.")
    assert any("3 to 30 s" in w and "timbre" in w for w in details["warnings"]), details["warnings"]
    tiny = voice_file(tmp_path, "tiny.wav", seconds=0.3, seed=6)
    with pytest.raises(AppError, match=r"at least 0\.5 s of clear speech"):
        client.predict(text="Hi.", reference_audio=handle_file(str(tiny)), api_name="/clone")


@pytest.mark.slow
def test_example_voice_was_cached_by_the_warm_up(server, client):
    index = json.loads((server.examples / "examples.json").read_text())
    name = next(iter(index))
    _, details = clone(
        client, server.examples / f"{name}.wav", text="Hi.", reference_text=index[name]["reference_text"]
    )
    assert details["report"]["tokens_from"] == "cache hit"


@pytest.mark.slow
def test_clearing_the_cache_needs_the_admin_key_off_loopback(server, client):
    from gradio_client.exceptions import AppError

    health = get_json(server.url + "/health")
    before = health["cache"]
    assert before["entries"] >= 1 and before["misses"] >= 1
    assert health["llm_prefix_cache"]["entries"] >= 1  # the clones so far kept their voices' turns
    for key in ("", "wrong-key-000"):
        with pytest.raises(AppError, match="admin key"):
            client.predict(key, api_name="/clear_cache")
    # the event is not only the named endpoint: a raw call of the same event is refused the same way
    raw = httpx.post(server.url + "/gradio_api/call/clear_cache", json={"data": [""]}, timeout=30)
    event = raw.json()["event_id"]
    stream = httpx.get(f"{server.url}/gradio_api/call/clear_cache/{event}", timeout=30).text
    assert "event: error" in stream
    assert get_json(server.url + "/health")["cache"]["entries"] == before["entries"]

    rows = client.predict(KEY, api_name="/clear_cache")
    table = {row[0]: row[1] for row in rows["data"]}
    assert table["entries"] == "0" and table["hits"] == "0" and table["misses"] == "0"
    assert table["time saved"] == "0.00 s" and table["vocoder prompt hits"] == "0"
    assert "/" not in table["stored in"]
    after = get_json(server.url + "/health")["cache"]
    assert after["entries"] == 0 and after["hits"] == 0 and after.get("vocoder_prompt_hits", 0) == 0
    prefixes = get_json(server.url + "/health")["llm_prefix_cache"]
    assert prefixes == {"entries": 0, "mb": 0.0, "hits": 0, "misses": 0}


@pytest.mark.slow
def test_deleting_a_voice_needs_the_admin_key_off_loopback(client, rest, tmp_path):
    from gradio_client.exceptions import AppError

    with voice_file(tmp_path, "keep.wav").open("rb") as f:
        created = rest.post(
            "/v1/voices",
            files={"file": ("keep.wav", f, "audio/wav")},
            data={"name": "Keep me", "text": "words"},
        )
    assert created.status_code == 201, created.text
    voice_id = created.json()["id"]
    with pytest.raises(AppError, match="admin key"):
        client.predict(voice_id, "", api_name="/delete_voice")
    assert rest.get(f"/v1/voices/{voice_id}").status_code == 200
    client.predict(voice_id, KEY, api_name="/delete_voice")
    assert rest.get(f"/v1/voices/{voice_id}").status_code == 404


@pytest.mark.slow
def test_the_readme_examples_work_in_python_and_in_bash(server, tmp_path):
    readme = (ROOT / "README.md").read_text()
    port = server.url.rsplit(":", 1)[1]
    voice_file(tmp_path, "my_voice.wav", seconds=3.0, seed=9)

    def block(marker: str) -> str:
        match = re.search(rf"<!-- example: {marker} -->\n```\w+\n(.*?)```", readme, re.S)
        assert match, f"README has no '{marker}' example"
        return match.group(1).replace("127.0.0.1:7860", f"127.0.0.1:{port}")

    python = subprocess.run(
        [sys.executable, "-c", block("gradio_client")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert python.returncode == 0, python.stderr[-3000:]
    assert re.search(r"out-[0-9a-f]{12}", python.stdout)
    bash = subprocess.run(
        ["bash", "-c", block("curl")], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert bash.returncode == 0, bash.stderr
    line = bash.stdout.strip().splitlines()[-1]
    speech, details = json.loads(line.removeprefix("data: "))
    assert speech["url"].endswith(".wav") and details["status"] == "done" and details["voice"] == "my_voice"


def test_missing_models_without_demo_fallback_is_a_start_up_message(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "app.py"),
            "--model-dir",
            str(tmp_path / "none"),
            "--no-demo",
            "--cache-dir",
            "none",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "download_models.py" in proc.stderr and "missing" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- the adapter's pieces on their own ---------------------------------------------------------


def test_options_from_ui_values():
    opts = synthesis_options("base", 7.0, 0.8, 0.9, 12.0, 40.0)
    assert (opts.seed, opts.temperature, opts.top_p, opts.flow_steps) == (7, 0.8, 0.9, 12)
    assert opts.max_new_tokens == 40
    assert synthesis_options(None, -1, 0.7, 1.0, 10).seed is None  # -1: random
    assert synthesis_options(None, None, 0.7, 1.0, 10, 0).max_new_tokens is None  # 0: no cap
    with pytest.raises(OptionsError, match="-1 \\(random\\)"):  # only -1 means random, not any negative
        synthesis_options(None, -2, 0.7, 1.0, 10)
    with pytest.raises(OptionsError, match="whole number"):
        synthesis_options(None, 1.5, 0.7, 1.0, 10)
    with pytest.raises(OptionsError, match="max new tokens"):
        synthesis_options(None, 0, 0.7, 1.0, 10, 2.5)


def test_engine_errors_become_messages_without_paths():
    error = public_error("clone", AudioInputError("could not read /tmp/gradio/abc123/voice.wav as audio"))
    assert error.message == "Could not read voice.wav as audio"
    internal = public_error("clone", KeyError("internal detail"))
    assert "server log" in internal.message and "internal detail" not in internal.message


def test_stop_flags_only_the_requesting_sessions_run():
    adapter = EngineAdapter(engine=None)
    mine, other = SimpleNamespace(session_hash="mine"), SimpleNamespace(session_hash="other")
    with adapter._cancel_flag(mine) as my_flag, adapter._cancel_flag(other) as other_flag:
        adapter.stop(mine)
        assert my_flag.is_set() and not other_flag.is_set()
    adapter.stop(mine)  # nothing running: a notice, not an error
    assert adapter._cancels == {}


def test_cache_table_rows():
    rows = dict(
        cache_table(
            {
                "hits": 3,
                "misses": 1,
                "hit_rate": 0.75,
                "entries": 2,
                "bytes": 2_500_000,
                "time_saved_s": 1.5,
                "vocoder_prompt_time_saved_s": 0.25,
                "directory": "disk: cache folder 'funasr'",
            }
        )
    )
    assert rows["hits"] == "3" and rows["hit rate"] == "75 %" and rows["size on disk"] == "2.50 MB"
    assert rows["time saved"] == "1.75 s" and rows["stored in"] == "disk: cache folder 'funasr'"


def test_admin_gate_one_click_on_loopback_key_off_it():
    local, remote = (
        SimpleNamespace(client=SimpleNamespace(host="127.0.0.1")),
        SimpleNamespace(client=SimpleNamespace(host="203.0.113.7")),
    )
    AdminGate(None, loopback_only=True).check(None, remote, "clear")
    keyed = AdminGate("secret-key-1", loopback_only=False)
    for key, request in ((None, local), ("wrong", remote), ("", local)):
        with pytest.raises(AccessError, match="admin key"):
            keyed.check(key, request, "clear the prompt cache")
    keyed.check("secret-key-1", remote, "clear")
    open_no_key = AdminGate(None, loopback_only=False)
    open_no_key.check(None, local, "clear")  # on the server machine itself
    with pytest.raises(AccessError, match="--api-key"):
        open_no_key.check(None, remote, "clear")


def test_timing_rows_one_per_stage_that_ran_with_numbers():
    report = StageReport(
        prep_s=0.01,
        tokenizer_s=0.002,
        tokens_from="cache hit",
        cache_hit=True,
        encode_s_saved=0.8,
        vocoder_prompt_s=0.003,
        vocoder_prompt_cached=True,
        llm_s=1.2,
        new_tokens=50,
        tokens_per_s=41.0,
        vocoder_s=0.4,
        total_s=1.7,
        audio_s=1.0,
    )
    upload = UploadEncode(tokenizer_s=0.7, vocoder_prompt_s=0.1, tokens_from="encoded", transcribed=True)
    rows = timing_rows(report, upload)
    stages = [r[0] for r in rows]
    assert stages == [
        "prep",
        "reference encode (at upload)",
        "tokenizer (cache hit)",
        "vocoder prompt",
        "LLM",
        "vocoder",
        "total",
    ]
    assert all(isinstance(r[1], float) for r in rows) and rows[1][1] == pytest.approx(0.8)
    assert "transcription" in rows[1][2]
    # an edit of a version: its tokens were kept, so no tokenizer row and no empty rows
    kept = StageReport(tokens_from="kept", cache_hit=True, llm_s=1.0, vocoder_s=0.2, total_s=1.3, audio_s=1.0)
    assert [r[0] for r in timing_rows(kept)] == ["prep", "LLM", "vocoder", "total"]
    encoded = StageReport(tokenizer_s=0.9, transcribed=True, vocoder_prompt_s=0.2)
    assert [r[0] for r in timing_rows(encoded)][1] == "tokenizer + transcription"
    html = timing_html(report, upload)
    assert "in tokenizer" not in html and re.findall(r'class="seconds">([^<]*)<', html)[1:] == [
        f"{r[1]:.3f}" for r in rows
    ]


def test_timing_rows_show_report_fields_added_later():
    @dataclass
    class ScoredReport(StageReport):  # what the output-scores module adds to the report
        score_s: float = 0.3
        rerank_s: float = 0.05

        @property
        def similarity(self):
            return 0.91

        @property
        def error_rate(self):
            return 0.042

    rows = {r[0]: r for r in timing_rows(ScoredReport(total_s=1.0, audio_s=1.0))}
    assert rows["scores"][1] == pytest.approx(0.3) and "similarity 0.910" in rows["scores"][2]
    assert "4.2%" in rows["scores"][2] and rows["rerank"][1] == pytest.approx(0.05)


def test_scores_row_says_why_a_chunk_is_not_scored_and_which_take_was_kept():
    takes = [TakeScore(7, 0.5, 0.9), TakeScore(8, 0.6, None)]
    report = StageReport(
        scored=True,
        score_s=0.2,
        total_s=1.0,
        audio_s=1.0,
        chunks=[
            ChunkReport(text="こんにちは", seed=8, similarity=0.6, score_note=NOT_SCORED["ja"], takes=takes)
        ],
    )
    stage, seconds, detail = score_row(report)
    assert (stage, seconds) == ("scores", 0.2)
    assert detail == f"speaker similarity 0.600, {NOT_SCORED['ja']}, take 2 of 2 kept"
    kept = report_fields(report)["chunks"][0]["takes"][1]
    assert kept == {"seed": 8, "similarity": 0.6, "error_rate": None}


def test_insert_tag_and_the_clip_check_text():
    assert insert_tag("[Laughter]", "So funny ") == "So funny [Laughter]"
    assert insert_tag("[Cantonese]", "[korean]  hello") == "[Cantonese] hello"
    assert insert_tag(None, "hello") == "hello"
    check = preflight(np.clip(4 * synthetic_voice(3.5, 16000, seed=5), -1, 1), 16000, "hello there", "hello")
    text = check_markdown(check)
    assert text.startswith("**Clip check:** 3.5 s") and "⚠️ clipped" in text and "WER 50%" in text


def joined_result(chunk_samples: list[int], pause_s: float = 0.25, stopped: bool = False) -> SynthesisResult:
    """A result joined like the engine's (audio_join.ChunkJoiner), with its segments."""
    joiner = ChunkJoiner(24000)
    out, segments = [], []
    for i, n in enumerate(chunk_samples):
        if i:
            out.append(joiner.end_chunk(pause_s))
        start = joiner.chunk_starts[-1]
        out.append(joiner.push(np.full(n, 0.1, np.float32)))
        segments.append(Segment(f"chunk {i}", [], start, start + n))
    out.append(joiner.finish())
    audio = np.concatenate(out)
    report = StageReport(
        seed=4,
        total_s=2.0,
        audio_s=len(audio) / 24000,
        stopped=stopped,
        chunks=[ChunkReport(text=f"chunk {i}", seed=4) for i in range(len(chunk_samples))],
    )
    return SynthesisResult(
        audio, 24000, "words", "ref", False, "clone", "base", "native", report, [], [], segments, stopped
    )


def test_details_give_chunk_lengths_that_add_up_to_the_file():
    result = joined_result([12000, 7000, 9000])
    details = result_details(result, "out-0123456789ab", "calm")
    chunks = details["chunks"]
    total = (
        sum(c["samples"] for c in chunks)
        + sum(c["pause_after_samples"] for c in chunks)
        - (len(chunks) - 1) * details["crossfade_samples"]
    )
    assert total == details["samples"] == len(result.audio)
    assert [c["pause_after_samples"] for c in chunks] == [6000, 6000, 0]
    assert details["report"]["chunks"][0]["seed"] == 4 and details["timings"]["total_s"] == 2.0
    assert chunk_details(joined_result([5000]))[0]["pause_after_samples"] == 0


def test_versions_are_told_apart_by_voice_seed_time_and_edit():
    history = []
    for seed, at in ((0, "14:02:11"), (1, "14:02:30")):
        details = result_details(joined_result([4800]), f"out-00000000000{seed}", "calm") | {
            "seed": seed,
            "finished_at": at,
        }
        history = add_version(history, details)
    edited = result_details(joined_result([4800], stopped=True), "out-000000000009", "") | {
        "mode": "edit emotion/happy",
        "source_version_id": "out-000000000001",
        "finished_at": "14:03:00",
    }
    history = add_version(history, edited)
    labels = [label for label, _ in version_choices(history)]
    assert len(set(labels)) == 3 and labels[0].startswith("v3 · emotion: happy of v2")
    assert labels[0].endswith("stopped") and "voice calm · seed 1 · 14:02:30" in labels[1]
    assert version_choices(history)[0][1] == "out-000000000009"
    assert version_label(history[0]).startswith("v1 · clone · voice calm · seed 0")


def test_the_page_builds_with_named_api_endpoints(demo_models_root):
    """Layout only (no server): every API input has a label and the API has no stray outputs."""
    fake = SimpleNamespace(
        demo=True,
        config=SimpleNamespace(
            variant="base",
            max_reference_seconds=30.0,
            max_text_chars=1000,
            auto_transcribe=True,
            llm_backend="native",
        ),
        available_variants=lambda: ["base"],
        llms=SimpleNamespace(decode=lambda: "dynamic"),
        vocoder=SimpleNamespace(sample_rate=24000),
        scorer=object(),
        voices=SimpleNamespace(list_voices=lambda: []),
        cache_stats=lambda: {},
    )
    from ui.page import build_app

    demo = build_app(fake, [], gate=AdminGate())
    names = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert len(names["clone"].outputs) == 2 and len(names["edit"].outputs) == 2
    assert names["clear_cache"].api_visibility == "undocumented"
    assert isinstance(demo, gr.Blocks)


def queue_run(url: str, body: dict, session: str) -> dict:
    """One event through Gradio's queue as the page runs it (join, then read the session's event
    stream) -> its ``process_completed`` message. The body is sent as ASCII JSON: a lone surrogate
    goes as its escape, as a browser's JSON.stringify writes it."""
    body = {**body, "session_hash": session, "event_data": None}
    joined = httpx.post(
        url + "/gradio_api/queue/join",
        content=json.dumps(body).encode("ascii"),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert joined.status_code == 200, joined.text
    with httpx.stream(
        "GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}, timeout=120
    ) as s:
        messages = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    done = [m for m in messages if m.get("msg") == "process_completed"]
    assert done, messages
    return done[-1]


@pytest.mark.slow
def test_destructive_events_called_by_fn_index_are_refused_without_the_admin_key(server, rest, tmp_path):
    """Hiding an event from the API page does not block it: Gradio's queue still runs any event by
    its position (fn_index). The clear and delete handlers check the key themselves."""
    config = get_json(server.url + "/config")
    index = {dep.get("api_name"): i for i, dep in enumerate(config["dependencies"])}
    with voice_file(tmp_path, "kept.wav").open("rb") as f:
        voice_id = rest.post(
            "/v1/voices", files={"file": ("kept.wav", f, "audio/wav")}, data={"name": "Kept"}
        ).json()["id"]
    entries = get_json(server.url + "/health")["cache"]["entries"]
    for api_name, data in (("clear_cache", [""]), ("delete_voice", [voice_id, ""])):
        done = queue_run(server.url, {"data": data, "fn_index": index[api_name]}, f"fn-index-{api_name}")
        assert done["success"] is False and "admin key" in json.dumps(done)
    assert get_json(server.url + "/health")["cache"]["entries"] == entries
    assert rest.get(f"/v1/voices/{voice_id}").status_code == 200


@pytest.mark.slow
def test_a_full_page_queue_refuses_the_extra_run_with_a_message_and_finishes_the_others(
    demo_models_root, tmp_path
):
    # one run at a time and one waiting: a third run while both slots are taken is refused at once
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    with running_app(demo_models_root, tmp_path, BUSY_ARGS) as busy:
        page = Client(busy.url, verbose=False)
        wav = handle_file(str(voice_file(tmp_path)))
        inputs = {"voice": "(new)", "reference_audio": wav, "reference_text": "some words here"}
        runs = fill_the_queue(page, inputs)
        refused = page.submit(text="Hello.", seed=0, max_new_tokens=60, api_name="/clone", **inputs)
        with pytest.raises(QueueError, match="Queue is full"):  # the page says "currently busy"
            refused.result(timeout=120)
        for run in runs:  # the running and the waiting one still finish (or say why not)
            try:
                run.result(timeout=600)
            except AppError as exc:
                assert "no audio" in str(exc).lower()


@pytest.mark.slow
def test_a_lone_surrogate_sent_as_the_page_sends_it_is_a_message(server, rest, tmp_path):
    """A browser's JSON.stringify writes a lone surrogate as the escape \\ud800, which Python decodes
    to a str that cannot be encoded: /clone through the page's queue answers with the reason."""
    config = get_json(server.url + "/config")
    index, clone_event = next(
        (i, dep) for i, dep in enumerate(config["dependencies"]) if dep.get("api_name") == "clone"
    )
    defaults = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    data = [defaults.get(i) for i in clone_event["inputs"]]
    with voice_file(tmp_path, "surrogate.wav").open("rb") as f:
        voice_id = rest.post(
            "/v1/voices", files={"file": ("s.wav", f, "audio/wav")}, data={"name": "Surrogate"}
        ).json()["id"]
    data[0], data[1] = "Hello \ud800 there.", voice_id  # text, voice (a library voice: no clip needed)
    done = queue_run(server.url, {"data": data, "fn_index": index}, "lone-surrogate")
    said = json.dumps(done)
    assert done["success"] is False and "not valid Unicode (position 6)" in said and "Traceback" not in said
    assert rest.delete(f"/v1/voices/{voice_id}").status_code == 204
