"""The REST API on a served app (demo models), driven by the official ``openai`` client and plain HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import soundfile as sf

from demo.examples import synthetic_voice
from tests.app_server import running_app

pytestmark = pytest.mark.slow

KEY = "test-key-0123456789"
SEED = 2
CHUNKS = "--chunk-chars=60"


@pytest.fixture(scope="module")
def server(demo_models_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("api")
    with running_app(demo_models_root, work, ["--api-key", KEY, "--queue-size", "1", CHUNKS]) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as c:
        yield c


@pytest.fixture(scope="module")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=KEY, timeout=600, max_retries=0)


def wav_bytes(seconds: float = 3.0, sr: int = 22050, f0: float = 130.0, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_voice(seconds, sr, f0=f0, seed=seed), sr, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def voice_id(http) -> str:
    response = http.post(
        "/v1/voices",
        files={"file": ("narrator.wav", wav_bytes(), "audio/wav")},
        data={"name": "Calm Narrator", "text": "a calm test voice"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == "calm-narrator" and body["name"] == "Calm Narrator"
    return body["id"]


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Any response format back to (samples, rate)."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, 24000
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        return np.concatenate(frames), stream.rate


def speech(openai_client, voice: str, text: str = "Hello there, this is a test.", **kwargs):
    extra = {"seed": kwargs.pop("seed", SEED), **kwargs.pop("extra", {})}
    return openai_client.audio.speech.with_raw_response.create(
        model="step-audio-editx", voice=voice, input=text, extra_body=extra, **kwargs
    )


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm"])
def test_openai_client_speech_in_every_format(openai_client, voice_id, fmt):
    raw = speech(openai_client, voice_id, response_format=fmt)
    seconds = float(raw.headers["x-audio-seconds"])
    assert raw.headers["x-cache"] == "voice" and float(raw.headers["x-timing-total"]) > 0
    assert raw.headers["x-output-id"].startswith("out-") and raw.headers["x-seed"] == str(SEED)
    samples, rate = decode(raw.content, fmt)
    assert rate == (48000 if fmt == "opus" else 24000)
    # lossy codecs pad a little at the ends; lossless ones are exact to the sample
    assert abs(len(samples) / rate - seconds) <= (0.002 if fmt in ("wav", "flac", "pcm") else 0.1)
    assert seconds > 0 and np.abs(samples).max() > 0


def test_same_seed_same_audio_and_speed_changes_the_length(openai_client, voice_id):
    a = decode(speech(openai_client, voice_id, response_format="wav").content, "wav")[0]
    b = decode(speech(openai_client, voice_id, response_format="wav").content, "wav")[0]
    fast = decode(speech(openai_client, voice_id, response_format="wav", speed=2.0).content, "wav")[0]
    assert np.array_equal(a, b)
    assert abs(len(fast) / len(a) - 0.5) < 0.05


def test_streamed_audio_arrives_before_the_generation_ends(openai_client, http, voice_id):
    text = " ".join(f"Sentence number {i} is spoken in its turn." for i in range(6))
    with openai_client.audio.speech.with_streaming_response.create(
        model="step-audio-editx",
        voice=voice_id,
        input=text,
        response_format="pcm",
        stream_format="audio",
        extra_body={"seed": SEED},
    ) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        busy = http.get("/health").json()["requests_active"]  # the generation is still running
        rest = b"".join(chunks)
    assert first and busy == 1
    assert http.get("/health").json()["requests_active"] == 0
    audio = np.frombuffer(first + rest, "<i2")
    assert len(audio) > len(np.frombuffer(first, "<i2"))


def test_server_sent_events_carry_base64_audio_and_a_done_event(http, voice_id):
    body = {
        "model": "step-audio-editx",
        "voice": voice_id,
        "input": "Events, please.",
        "response_format": "pcm",
        "stream_format": "sse",
        "seed": SEED,
    }
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    done = events[-1]
    assert deltas and done["type"] == "speech.audio.done" and done["output_id"].startswith("out-")
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(audio) // 2 == round(done["audio_s"] * 24000)
    assert done["usage"]["output_tokens"] > 0


def test_instructions_apply_an_emotion_edit(openai_client, voice_id):
    raw = speech(openai_client, voice_id, response_format="wav", instructions="happy")
    assert raw.headers["x-mode"] == "edit emotion/happy"


def test_edit_a_previous_output_by_id_then_again(http, openai_client, voice_id):
    first = speech(openai_client, voice_id, response_format="wav").headers["x-output-id"]
    edited = http.post(
        "/v1/audio/edits", json={"output_id": first, "task": "style", "subtask": "whisper", "seed": SEED}
    )
    assert edited.status_code == 200, edited.text
    assert edited.headers["x-mode"] == "edit style/whisper" and edited.headers["x-cache"] == "kept"
    again = http.post(
        "/v1/audio/edits",
        json={"output_id": edited.headers["x-output-id"], "task": "speed", "subtask": "faster", "seed": SEED},
    )
    assert again.status_code == 200 and decode(again.content, "wav")[1] == 24000


def test_edit_an_uploaded_clip(http):
    response = http.post(
        "/v1/audio/edits",
        files={"file": ("clip.wav", wav_bytes(seed=3), "audio/wav")},
        data={"task": "denoise", "seed": str(SEED), "response_format": "flac"},
    )
    assert response.status_code == 200, response.text
    assert decode(response.content, "flac")[1] == 24000


def test_voices_are_listed_fetched_renamed_and_deleted(http, voice_id):
    listed = http.get("/v1/voices").json()["data"]
    assert voice_id in [v["id"] for v in listed]
    info = http.get(f"/v1/voices/{voice_id}").json()
    assert info["text"] == "a calm test voice" and info["audio_url"] == f"/v1/voices/{voice_id}/audio"
    audio, sr = sf.read(io.BytesIO(http.get(info["audio_url"]).content))
    assert sr == 22050 and abs(len(audio) / sr - 3.0) < 0.01
    other = http.post(
        "/v1/voices",
        files={"file": ("x.wav", wav_bytes(seed=7, f0=180.0), "audio/wav")},
        data={"name": "Temporary"},
    ).json()
    assert other["id"] == "temporary" and other["text"]  # an empty text is transcribed
    renamed = http.patch(f"/v1/voices/{other['id']}", json={"name": "Bright"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Bright"
    assert http.delete(f"/v1/voices/{other['id']}").status_code == 204
    assert http.get(f"/v1/voices/{other['id']}").status_code == 404
    assert http.delete(f"/v1/voices/{other['id']}").status_code == 404


def test_models_list_the_model_and_its_variants(http):
    data = http.get("/v1/models").json()["data"]
    assert data[0]["id"] == "step-audio-editx" and "base" in [m["id"] for m in data]
    assert "happy" in data[0]["details"]["instructions"]["emotion"]
    details = data[0]["details"]
    assert {"[Laughter]", "[clears throat]", "[Surprise-yo]"} <= set(details["paralinguistic_tags"])
    assert details["paralinguistic_tags"] == details["edit_tasks"]["paralinguistic"]
    assert "[Cantonese]" in details["language_tags"] and details["scores"] is True
    assert details["best_of"] == {"min": 1, "max": 8}


# ---- scores, best-of-N, provenance, preflight ---------------------------------------------------------


def unpadded_b64_json(value: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


def test_best_of_scores_and_the_manifest_in_header_wav_and_route_agree(openai_client, http, voice_id):
    from wav_info import read_wav_comment

    raw = speech(openai_client, voice_id, response_format="wav", extra={"best_of": 2})
    manifest = unpadded_b64_json(raw.headers["x-render-manifest"])
    assert json.loads(read_wav_comment(raw.content)) == manifest
    assert raw.headers["x-render-manifest-url"] == f"/v1/outputs/{raw.headers['x-output-id']}/manifest"
    assert http.get(raw.headers["x-render-manifest-url"]).json() == manifest
    assert manifest["options"]["best_of"] == 2 and manifest["options"]["seed"] == SEED
    assert manifest["voice"]["voice_id"] == voice_id and manifest["kind"] == "clone"
    assert all(1 <= len(c["takes"]) <= 2 for c in manifest["chunks"])
    assert float(raw.headers["x-score-similarity"]) == manifest["scores"]["similarity"]
    assert raw.headers["x-score-metric"] == manifest["scores"]["metric"] == "wer"
    assert float(raw.headers["x-timing-scores"]) > 0
    samples, _ = decode(raw.content, "wav")
    assert len(samples) == manifest["audio"]["samples"]
    mp3 = speech(openai_client, voice_id, response_format="mp3")
    assert unpadded_b64_json(mp3.headers["x-render-manifest"])["options"]["best_of"] == 1


def test_server_sent_events_end_with_the_manifest(http, voice_id):
    body = {
        "model": "step-audio-editx",
        "voice": voice_id,
        "input": "Events, please.",
        "instructions": "happy",
        "response_format": "pcm",
        "stream_format": "sse",
        "seed": SEED,
    }
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    done = events[-1]
    assert done["type"] == "speech.audio.done" and done["manifest"]["kind"] == "edit"
    assert done["manifest"]["edit"]["source"]["manifest"]["voice"]["voice_id"] == voice_id
    names = ("similarity", "error_rate", "metric")
    assert done["scores"] == {k: done["manifest"]["scores"][k] for k in names}
    assert http.get(f"/v1/outputs/{done['output_id']}/manifest").json() == done["manifest"]


def test_best_of_out_of_range_is_a_400(http, voice_id):
    body = {"model": "x", "voice": voice_id, "input": "Hi.", "best_of": 9}
    response = http.post("/v1/audio/speech", json=body)
    assert response.status_code == 400 and error_of(response)["param"] == "best_of"


def test_preflight_flags_a_clipped_upload_and_passes_a_clean_one(http):
    clipped = io.BytesIO()
    sf.write(clipped, np.clip(4 * synthetic_voice(4.0, 22050, seed=8), -1, 1), 22050, format="WAV")
    response = http.post(
        "/v1/voices/preflight", files={"file": ("loud.wav", clipped.getvalue(), "audio/wav")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [w["code"] for w in body["warnings"]] == ["clipped"] and body["clipped_share"] > 0.01
    assert body["warnings"][0]["message"].startswith("clipped ") and body["usable"]
    clean = http.post("/v1/voices/preflight", files={"file": ("ok.wav", wav_bytes(4.0, seed=8), "audio/wav")})
    transcript = clean.json()["transcript"]
    assert clean.json()["warnings"] == [] and transcript
    again = http.post(
        "/v1/voices/preflight",
        files={"file": ("ok.wav", wav_bytes(4.0, seed=8), "audio/wav")},
        data={"text": transcript},
    )
    assert again.json()["text_error_rate"] == 0.0 and again.json()["warnings"] == []
    wrong = http.post(
        "/v1/voices/preflight",
        files={"file": ("ok.wav", wav_bytes(2.0, seed=8), "audio/wav")},
        data={"text": "nothing like what is said in it"},
    )
    assert {w["code"] for w in wrong.json()["warnings"]} == {"short", "text_mismatch"}


def test_openapi_docs_list_every_route_with_examples(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in (
        "/v1/audio/speech",
        "/v1/audio/edits",
        "/v1/voices",
        "/v1/voices/{voice_id}",
        "/v1/models",
        "/health",
        "/v1/voices/preflight",
        "/v1/outputs/{output_id}/manifest",
    ):
        assert path in spec["paths"], path
    assert "examples" in json.dumps(spec["components"]["schemas"]["SpeechRequest"])
    assert httpx.get(server.url + "/docs").status_code == 200


# ---- errors: OpenAI's shape, the right status, no traceback and no server path ----------------------


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    text = body["error"]["message"]
    assert "Traceback" not in text and "/tmp/" not in text and "/work/" not in text
    return body["error"]


def test_bad_input_is_a_400_naming_the_field(http, voice_id):
    base = {"model": "step-audio-editx", "voice": voice_id, "input": "Hello."}
    cases = [
        ({**base, "input": "  "}, "input"),
        ({**base, "seed": -2}, "seed"),
        ({**base, "response_format": "ogg"}, "response_format"),
        ({**base, "speed": 9}, "speed"),
        ({**base, "input": "hello \ud800 world"}, "input"),
    ]
    for body, param in cases:
        response = http.post(
            "/v1/audio/speech",
            content=json.dumps(body, ensure_ascii=True),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, (body, response.text)
        assert error_of(response)["param"] == param, body


def test_a_text_file_named_wav_is_refused_by_name_without_server_paths(http):
    response = http.post(
        "/v1/voices",
        files={"file": ("voice.wav", b"just some text\n" * 20, "audio/wav")},
        data={"name": "broken"},
    )
    assert response.status_code == 400
    assert "voice.wav" in error_of(response)["message"]


def test_auth_is_required_and_compared_exactly(server, voice_id):
    body = {"model": "step-audio-editx", "voice": voice_id, "input": "Hi."}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        response = httpx.post(server.url + "/v1/audio/speech", json=body, headers=headers)
        assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/").status_code == 200  # the page itself needs no key


def test_unknown_voice_and_output_are_404(http):
    response = http.post("/v1/audio/speech", json={"model": "x", "voice": "nobody", "input": "Hi."})
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = http.post("/v1/audio/edits", json={"output_id": "out-000000000000", "task": "denoise"})
    assert response.status_code == 404


def test_an_upload_over_the_limit_is_413(http):
    big = b"\0" * (51 << 20)
    response = http.post("/v1/voices", files={"file": ("big.wav", big, "audio/wav")})
    assert response.status_code == 413 and error_of(response)["code"] == "too_large"


def test_a_full_queue_is_429(http, voice_id):
    # concurrency 1 and a queue of 1: one request runs, one waits, the third is refused at once
    text = " ".join(["A long sentence that keeps the only slot busy for a while."] * 4)
    body = {
        "model": "x",
        "voice": voice_id,
        "input": text,
        "response_format": "pcm",
        "stream_format": "audio",
    }
    results: list[int] = []
    with http.stream("POST", "/v1/audio/speech", json=body) as running:
        chunks = running.iter_bytes()
        next(chunks)  # the first request holds the slot
        waiting = threading.Thread(
            target=lambda: results.append(
                http.post("/v1/audio/speech", json={**body, "stream_format": None}).status_code
            )
        )
        waiting.start()
        while http.get("/health").json()["api_queue"]["admitted"] < 2:
            pass
        refused = http.post("/v1/audio/speech", json=body)
        assert refused.status_code == 429 and error_of(refused)["code"] == "queue_full"
        b"".join(chunks)
    waiting.join()
    assert results == [200]


def test_the_readme_rest_examples_work_in_bash_and_with_the_openai_package(server, tmp_path):
    """The README's curl and openai blocks, run as written (only the port differs), in that order:
    the curl block creates the voice "my-voice" that both then speak."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    port = server.url.rsplit(":", 1)[1]

    def block(marker: str) -> str:
        match = re.search(rf"<!-- example: {marker} -->\n```\w+\n(.*?)```", readme, re.S)
        assert match, f"README has no '{marker}' example"
        return match.group(1).replace("127.0.0.1:7860", f"127.0.0.1:{port}")

    (tmp_path / "my_voice.wav").write_bytes(wav_bytes(seconds=3.0, seed=31))
    env = {**os.environ, "EDITX_API_KEY": KEY}
    bash = subprocess.run(
        ["bash", "-c", "set -e\n" + block("rest-curl")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bash.returncode == 0, bash.stderr[-3000:]
    mp3, sr = decode((tmp_path / "hello.mp3").read_bytes(), "mp3")
    assert sr == 24000 and len(mp3) > 0
    edited, sr = sf.read(tmp_path / "happier.wav")
    assert sr == 24000 and len(edited) > 0
    python = subprocess.run(
        [sys.executable, "-c", block("openai")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert python.returncode == 0, python.stderr[-3000:]
    plain, sr = sf.read(tmp_path / "hello.wav")
    streamed = np.frombuffer((tmp_path / "stream.pcm").read_bytes(), "<i2")
    assert sr == 24000 and len(plain) > 0 and len(streamed) > 0


def test_a_null_seed_is_random_and_a_negative_one_is_refused(http, voice_id):
    body = {
        "model": "step-audio-editx",
        "voice": voice_id,
        "input": "Hi.",
        "response_format": "pcm",
        "seed": None,
    }
    seeds = {http.post("/v1/audio/speech", json=body).headers["x-seed"] for _ in range(2)}
    assert len(seeds) == 2  # two fresh draws from 2**32 seeds
    refused = http.post("/v1/audio/speech", json={**body, "seed": -2})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "seed"


def test_a_malformed_multipart_body_is_a_400_and_the_server_goes_on(http):
    part = b'--b1\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    cases = {
        "no boundary": ("multipart/form-data", b"just some bytes"),
        "no part at all": ("multipart/form-data; boundary=b1", b"bytes without a single boundary line"),
        "cut off": ("multipart/form-data; boundary=b1", part + b"RIFF\0\0"),
        "two files": ("multipart/form-data; boundary=b1", part + b"x\r\n" + part + b"y\r\n--b1--\r\n"),
    }
    for what, (content_type, body) in cases.items():
        response = http.post("/v1/voices", content=body, headers={"content-type": content_type})
        assert response.status_code == 400, (what, response.status_code, response.text)
        assert "multipart" in error_of(response)["message"] or "'file'" in error_of(response)["message"]
    assert http.get("/health").status_code == 200
