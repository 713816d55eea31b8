"""Two app processes sharing one Redis, as two replicas behind a load balancer would (issue 14).

A voice encoded through replica A is a prompt-cache hit on replica B and in B's voice library; the
statistics are shared counters, so both replicas report the same sums; Redis stopped mid-run: both
keep serving from memory and say so in /health; Redis back: both reconnect and share again.
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
import soundfile as sf

from demo.examples import synthetic_voice
from storage.local_redis import LocalRedisServer
from tests.app_server import AppServer

pytestmark = pytest.mark.slow


def clip(seed: int, f0: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_voice(2.5, 22050, f0=f0, seed=seed), 22050, format="WAV")
    return buffer.getvalue()


def create_voice(replica: AppServer, name: str, data: bytes) -> dict:
    response = httpx.post(
        replica.url + "/v1/voices",
        files={"file": ("v.wav", data, "audio/wav")},
        data={"name": name, "text": "a shared test voice"},
        timeout=600,
    )
    assert response.status_code == 201, response.text
    return response.json()


def speak(replica: AppServer, voice: str) -> httpx.Response:
    return httpx.post(
        replica.url + "/v1/audio/speech",
        timeout=600,
        json={
            "model": "step-audio-editx",
            "voice": voice,
            "input": "Hello from a replica.",
            "seed": 2,
            "response_format": "wav",
        },
    )


def health(replica: AppServer) -> dict:
    return httpx.get(replica.url + "/health", timeout=30).json()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(demo_models_root, tmp_path_factory):
    """Redis plus replicas A and B (separate working folders: nothing shared but the Redis URL)."""
    redis = LocalRedisServer()
    redis.start()
    replicas = []
    try:
        for name in ("a", "b"):
            replicas.append(
                AppServer(
                    demo_models_root, tmp_path_factory.mktemp(f"replica_{name}"), ["--cache-url", redis.url]
                )
            )
        for replica in replicas:
            replica.wait_ready()
        yield redis, replicas[0], replicas[1]
    finally:
        for replica in replicas:
            replica.stop()
        redis.close()


def test_a_voice_encoded_on_one_replica_is_a_hit_and_a_library_voice_on_the_other(cluster):
    _, a, b = cluster
    for replica in (a, b):
        store = health(replica)["store"]
        assert store["backend"] == "redis" and store["connected"] is True
    assert health(a)["replica"] and "redis://" in health(a)["cache"]["directory"]
    before = health(a)["cache"]
    data = clip(seed=31, f0=150.0)
    made = create_voice(a, "Shared voice", data)  # encoded on A: a miss
    # read through B: the counters are shared (A writes its increments behind, within a second)
    wait_for(lambda: health(b)["cache"]["misses"] == before["misses"] + 1, "A's miss to reach B", 10)
    assert health(b)["cache"]["hits"] == before["hits"]

    again = create_voice(b, "Same clip on B", data)  # the same clip on B: a hit, no tokenizer run
    wait_for(lambda: health(a)["cache"]["hits"] == before["hits"] + 1, "B's hit to reach A", 10)
    after_b = health(a)["cache"]
    assert after_b["misses"] == before["misses"] + 1
    assert after_b["entries"] == before["entries"] + 1  # one entry, used by both
    assert health(b)["cache"] == {**health(a)["cache"]}  # both replicas report the same totals

    listed_on_b = {v["id"] for v in httpx.get(b.url + "/v1/voices", timeout=30).json()["data"]}
    assert {made["id"], again["id"]} <= listed_on_b
    response = speak(b, made["id"])  # a voice made on A speaks on B
    assert response.status_code == 200, response.text
    assert response.headers["X-Cache"] == "voice"
    audio, sr = sf.read(io.BytesIO(response.content))
    assert sr == 24000 and len(audio) > 0


def test_redis_stopped_then_restarted_both_replicas_serve_report_and_reconnect(cluster):
    redis, a, b = cluster
    redis.stop()
    for i, replica in enumerate((a, b)):  # each keeps serving from its in-memory fallback
        voice = create_voice(replica, f"Made while down {i}", clip(seed=40 + i, f0=120.0 + 10 * i))
        response = speak(replica, voice["id"])
        assert response.status_code == 200, response.text
        store = health(replica)["store"]
        assert store["connected"] is False and store["fallback"] == "memory"
        assert "not answering" in store["degraded"]
    for replica in (a, b):
        assert replica.log().count("not answering") == 1  # one warning, not one per request
        assert replica.proc.poll() is None

    redis.start()  # same port, empty
    for replica in (a, b):
        wait_for(lambda r=replica: health(r)["store"]["connected"], "the replica to reconnect")
        assert health(replica)["store"]["fallback"] is None
    made = create_voice(a, "After the restart", clip(seed=50, f0=170.0))
    listed_on_b = {v["id"] for v in httpx.get(b.url + "/v1/voices", timeout=30).json()["data"]}
    assert made["id"] in listed_on_b
    # voices made during the outage were handed back to Redis on reconnect, so both replicas see them
    assert {"made-while-down-0", "made-while-down-1"} <= listed_on_b
