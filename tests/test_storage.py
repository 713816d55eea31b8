"""storage: one contract, run on the disk and Redis backends (a real redis-server), plus failure modes."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from errors import OptionsError
from storage import COUNTERS, MemoryStore, open_store
from storage.disk import DiskStore
from storage.local_redis import LocalRedisServer, free_port
from storage.redis_store import RedisStore, redact_url
from tests.payloads import pickle_payload

WAIT_S = 30.0  # upper bound for a background reconnect (a wait for a state, not a timing assertion)


def _entry(i: int, pad: int = 0) -> dict:
    return {"vq02": [i, i + 1], "vq06": [i] * 3, "encode_seconds": 0.5, "pad": "x" * pad}


def _open_at(location: tuple) -> DiskStore | RedisStore:
    if location[0] == "disk":
        return DiskStore(Path(location[1]), 1 << 30)
    return RedisStore(location[1], 1 << 30, prefix=location[2])


def _declare(store, max_entries: int = 100) -> None:
    store.namespace("prompts", max_entries=max_entries)
    store.namespace("aliases", max_entries=max_entries)
    store.namespace("voices")


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


# ---- the contract, on every backend ------------------------------------------------------------


def test_put_get_add_update_delete(store_factory):
    store = store_factory()
    _declare(store)
    assert store.get("prompts", "a") is None
    store.put("prompts", "a", _entry(1))
    assert store.get("prompts", "a") == _entry(1)
    store.put("prompts", "a", _entry(2))  # replaces
    assert store.get("prompts", "a")["vq02"] == [2, 3] and store.count("prompts") == 1
    assert store.add("prompts", "b", _entry(3)) is True
    assert store.add("prompts", "b", _entry(4)) is False and store.get("prompts", "b") == _entry(3)
    merged = store.update("prompts", "a", {"transcript": "hello", "vq06": [9]})
    assert merged == {**_entry(2), "transcript": "hello", "vq06": [9]} == store.get("prompts", "a")
    assert store.update("prompts", "missing", {"x": 1}) is None and store.get("prompts", "missing") is None
    assert store.delete("prompts", "a") is True and store.delete("prompts", "a") is False
    assert store.get("prompts", "a") is None and store.count("prompts") == 1
    assert sorted(store.keys("prompts")) == ["b"]
    with pytest.raises(TypeError):
        store.put("prompts", "c", ["not", "a", "dict"])
    with pytest.raises(KeyError):
        store.get("undeclared", "a")


def test_lru_eviction_by_entries_follows_reads(store_factory):
    store = store_factory()
    _declare(store, max_entries=3)
    for i in range(3):
        store.put("prompts", f"k{i}", _entry(i))
    assert store.get("prompts", "k0") is not None  # k0 is now more recent than k1 and k2
    store.put("prompts", "k3", _entry(3))
    store.put("prompts", "k4", _entry(4))
    assert store.count("prompts") == 3
    assert store.get("prompts", "k1") is None and store.get("prompts", "k2") is None
    assert all(store.get("prompts", k) is not None for k in ("k0", "k3", "k4"))


def test_eviction_by_bytes_keeps_the_newest_within_the_budget(store_factory):
    budget = 600_000
    store = store_factory(max_bytes=budget)
    _declare(store)
    for i in range(20):
        store.put("prompts", f"k{i}", _entry(i, pad=60_000))
        assert store.usage() <= budget
    assert 1 <= store.count("prompts") < 20
    assert store.get("prompts", "k19") is not None and store.get("prompts", "k0") is None
    assert store.size("prompts") >= 60_000


def test_the_byte_budget_evicts_the_least_recently_used_across_bounded_namespaces(store_factory):
    store = store_factory(max_bytes=600_000)
    _declare(store)
    store.put("aliases", "old", {"pad": "y" * 60_000})
    for i in range(20):
        store.put("prompts", f"k{i}", _entry(i, pad=60_000))
        if i == 0:
            assert store.get("aliases", "old") is not None  # still fits: not evicted early
    assert store.get("aliases", "old") is None  # the oldest entry of all went first
    store.put("aliases", "new", {"key": "k19"})
    assert store.get("aliases", "new") == {"key": "k19"} and store.get("prompts", "k19") is not None


def test_kept_namespace_is_never_evicted(store_factory):
    store = store_factory(max_bytes=400_000)
    _declare(store, max_entries=5)
    for i in range(8):
        store.put("voices", f"v{i}", {"audio": "a" * 50_000, "i": i})  # more than the budget alone
    for i in range(40):
        store.put("prompts", f"k{i}", _entry(i, pad=40_000))
    assert store.count("voices") == 8 and sorted(store.keys("voices")) == [f"v{i}" for i in range(8)]
    assert all(store.get("voices", f"v{i}")["i"] == i for i in range(8))
    assert store.count("prompts") <= 5 and store.get("prompts", "k39") is not None
    assert store.size("voices") >= 8 * 50_000


def _corrupt(store, location: tuple, ns: str, key: str, payload: bytes, pickled: bool) -> None:
    """Overwrite the stored value with ``payload`` behind the store's back (on disk in diskcache's
    pickle mode when ``pickled``: the row a tampered cache.db would hold)."""
    if location[0] == "disk":
        con = sqlite3.connect(str(Path(location[1]) / "cache.db"))
        with con:
            con.execute(
                "UPDATE Cache SET mode = ?, filename = NULL, size = 0, value = ? WHERE key = ?",
                (4 if pickled else 1, payload, f"{ns}:{key}"),
            )
        con.close()
    else:
        import redis

        redis.Redis.from_url(location[1]).set(store.value_key(ns, key), payload)


@pytest.mark.parametrize("kind", ["not json", "pickle"])
def test_corrupt_value_is_a_miss_and_removed(store_factory, caplog, tmp_path, kind):
    marker = tmp_path / "unpickled"
    payload = pickle_payload(marker) if kind == "pickle" else b"{not json"
    store = store_factory()
    _declare(store)
    store.put("prompts", "bad", _entry(1))
    store.put("prompts", "good", _entry(2))
    _corrupt(store, store_factory.location, "prompts", "bad", payload, kind == "pickle")
    with caplog.at_level(logging.WARNING):
        assert store.get("prompts", "bad") is None
    assert any("corrupt" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert not marker.exists(), "a stored pickle was executed"
    assert store.count("prompts") == 1 and store.keys("prompts") == ["good"]
    fresh = store_factory()
    _declare(fresh)
    assert fresh.get("prompts", "bad") is None and fresh.count("prompts") == 1  # gone for others too
    store.put("prompts", "bad", _entry(3))  # usable again afterwards
    assert store.get("prompts", "bad") == _entry(3)


def test_clear_removes_one_namespace_and_reports_it(store_factory):
    store = store_factory()
    _declare(store)
    for i in range(4):
        store.put("prompts", f"k{i}", _entry(i, pad=10))
    store.put("voices", "v", {"name": "kept"})
    size = store.size("prompts")
    assert store.clear("prompts") == {"entries": 4, "bytes": size}
    assert store.count("prompts") == 0 and store.size("prompts") == 0 and store.keys("prompts") == []
    assert store.get("voices", "v") == {"name": "kept"}
    assert store.clear("prompts") == {"entries": 0, "bytes": 0}


def test_counters_add_ints_and_floats_and_reset(store_factory):
    store = store_factory()
    store.incr("hits")
    store.incr_many({"hits": 2, "time_saved_s": 1.25, "misses": 1})
    store.incr("time_saved_s", 0.5)
    counters = store.counters()
    assert counters["hits"] == 3 and isinstance(counters["hits"], int) and counters["misses"] == 1
    assert counters["time_saved_s"] == pytest.approx(1.75)
    assert store_factory().counters()["hits"] == 3  # stored with the store, not in the process
    assert store.reset_counters()["hits"] == 3
    assert store.counters() == {} and store_factory().counters() == {}


def test_a_new_store_object_sees_what_the_last_one_wrote(store_factory):
    first = store_factory()
    _declare(first)
    first.put("prompts", "k", _entry(7))
    first.put("voices", "v", {"name": "n"})
    first.incr("hits", 4)
    first.close()
    again = store_factory()
    _declare(again)
    assert again.get("prompts", "k") == _entry(7) and again.get("voices", "v") == {"name": "n"}
    assert again.counters() == {"hits": 4}


def _child_writes(location: tuple, start: int, count: int) -> None:
    store = _open_at(location)
    _declare(store, max_entries=1000)
    for i in range(start, start + count):
        store.put("prompts", f"k{i}", _entry(i))
        store.update("prompts", f"k{i}", {"writer": start})
        store.incr_many({"hits": 1, "time_saved_s": 0.25})
    store.close()


def test_two_processes_share_entries_and_counters(store_factory):
    parent = store_factory()
    _declare(parent, max_entries=1000)
    parent.put("prompts", "parent", _entry(100))
    parent.incr("hits")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child_writes, args=(store_factory.location, s, 20)) for s in (0, 20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert parent.count("prompts") == 41
    assert all(parent.get("prompts", f"k{i}")["writer"] == (0 if i < 20 else 20) for i in range(40))
    counters = parent.counters()
    assert counters["hits"] == 41 and counters["time_saved_s"] == pytest.approx(40 * 0.25)


def test_an_idle_stores_increments_reach_the_others_without_another_call(store_factory):
    """A replica that counts a miss and then sits idle must not hide it from the other replicas."""
    import time

    from storage.base import COUNTER_FLUSH_S

    idle, other = store_factory(), store_factory()
    idle.incr_many({"misses": 1, "time_saved_s": 0.5})
    assert other.counters().get("misses", 0) == 0  # written behind, not yet
    deadline = time.monotonic() + 10 * COUNTER_FLUSH_S
    while other.counters().get("misses", 0) == 0 and time.monotonic() < deadline:
        time.sleep(COUNTER_FLUSH_S / 4)
    assert other.counters() == {"misses": 1, "time_saved_s": 0.5}
    assert not idle.has_buffered()


def test_status_names_the_backend_without_paths_or_secrets(store_factory, tmp_path):
    store = store_factory()
    status = store.status()
    assert status["backend"] == store_factory.backend and status["connected"] is True
    assert status["persistent"] is True and status["fallback"] is None and status["degraded"] is None
    assert str(tmp_path) not in status["location"] and "/tmp" not in status["location"]


# ---- memory, URLs and settings -------------------------------------------------------------------


def test_memory_store_has_the_same_bounds_and_is_not_persistent():
    store = open_store(None, 10_000)
    assert isinstance(store, MemoryStore)
    _declare(store, max_entries=2)
    for i in range(4):
        store.put("prompts", f"k{i}", _entry(i))
    assert store.count("prompts") == 2 and store.get("prompts", "k3") is not None
    store.put("prompts", "big", _entry(9, pad=6_000))
    store.put("prompts", "big2", _entry(9, pad=6_000))
    assert store.usage() <= 10_000 and store.get("prompts", "big2") is not None
    assert store.status() == {
        "backend": "memory",
        "location": "memory",
        "persistent": False,
        "connected": True,
        "fallback": None,
        "degraded": None,
    }


def test_redis_urls_are_redacted_and_checked():
    assert redact_url("redis://user:secret@cache.internal:6380/2") == "redis://cache.internal:6380/2"
    assert redact_url("rediss://:pw@h") == "rediss://h:6379/0"
    assert redact_url("unix:///var/run/redis/redis.sock?db=1") == "redis: unix socket 'redis.sock'"
    with pytest.raises(OptionsError, match="redis://"):
        open_store(None, 1 << 20, url="http://example.org/")


def test_counters_namespace_is_reserved():
    store = MemoryStore(1 << 20)
    with pytest.raises(ValueError):
        store.namespace(COUNTERS)
    with pytest.raises(ValueError):
        store.namespace("Bad-Name")


# ---- Redis going away and coming back -------------------------------------------------------------


def test_redis_stopped_mid_run_falls_back_then_reconnects(caplog):
    import redis

    with LocalRedisServer() as server:
        store = RedisStore(server.url, 1 << 20, retry_s=0.1)
        _declare(store, max_entries=3)
        store.put("prompts", "before", _entry(1))
        raw = redis.Redis.from_url(server.url)
        assert raw.exists(store.value_key("prompts", "before"))
        server.stop()
        with caplog.at_level(logging.WARNING, logger="storage.redis_store"):
            store.put("prompts", "during", _entry(2))
            assert store.get("prompts", "during") == _entry(2)  # served from the local fallback
            assert store.get("prompts", "before") is None  # Redis's entries are out of reach meanwhile
            for i in range(5):  # the fallback has the same bounds
                store.put("prompts", f"f{i}", _entry(i))
            assert store.count("prompts") == 3
            store.put("voices", "made-while-down", {"name": "v"})
            store.incr("hits", 2)
            status = store.status()
            assert status["connected"] is False and status["fallback"] == "memory"
            assert status["persistent"] is False and "memory" in status["degraded"]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "not answering" in warnings[0].getMessage()
        server.start()  # same port, empty (no persistence)
        _wait_for(lambda: store.status()["connected"], "the store to reconnect")
        store.put("prompts", "after", _entry(3))
        assert raw.exists(store.value_key("prompts", "after"))  # written to Redis again
        assert store.get("prompts", "after") == _entry(3) and store.get("prompts", "during") is None
        assert store.get("voices", "made-while-down") == {"name": "v"}  # kept namespaces handed back
        assert raw.exists(store.value_key("voices", "made-while-down"))
        assert store.counters()["hits"] == 2
        assert store.status()["fallback"] is None
        store.close()


def test_redis_down_at_start_serves_from_memory_until_it_comes_up(caplog):
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="storage.redis_store"):
        store = RedisStore(f"redis://127.0.0.1:{port}/0", 1 << 20, retry_s=0.1)
        _declare(store)
        store.put("prompts", "k", _entry(1))
        assert store.get("prompts", "k") == _entry(1)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert store.status()["connected"] is False
    server = LocalRedisServer(port=port)
    try:
        server.start()
        _wait_for(lambda: store.status()["connected"], "the store to connect")
        store.put("prompts", "k2", _entry(2))
        assert store_at(server.url).get("prompts", "k2") == _entry(2)
    finally:
        store.close()
        server.close()


def store_at(url: str) -> RedisStore:
    store = RedisStore(url, 1 << 20)
    _declare(store)
    return store


def test_the_cache_url_setting_puts_the_prompt_cache_on_redis(redis_server):
    from prompt_cache import open_prompt_cache
    from settings import parse_settings

    settings = parse_settings([], environ={"EDITX_CACHE_URL": redis_server.url})
    cache = open_prompt_cache(settings.cache_dir, 10, 1 << 20, url=settings.cache_url)
    try:
        cache.put("k", _entry(1))
        assert cache.get("k") == _entry(1)
        stats = cache.stats()
        assert stats["store"]["backend"] == "redis" and stats["persistent"] and cache.directory is None
        assert stats["directory"] == redis_server.url and stats["hits"] == 1
    finally:
        cache.clear()
        cache.close()
