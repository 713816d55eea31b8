"""PromptCache: hits and misses, LRU bounds, persistence, corruption, degraded mode, processes."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import diskcache
import numpy as np
import pytest

from prompt_cache import MIB, PromptCache, decode_array, encode_array, prompt_key
from tests.payloads import pickle_payload

ROOT = Path(__file__).resolve().parents[1]


def _entry(i: int, seconds: float = 1.0, pad: int = 0) -> dict:
    return {
        "vq02": [i, i + 1],
        "vq06": [i, i, i],
        "encode_seconds": seconds,
        "created": 0.0,
        "transcript": None,
        "pad": "x" * pad,
    }


def test_hit_miss_and_time_saved_from_recorded_encode_times(tmp_path):
    cache = PromptCache(tmp_path / "c")
    assert cache.get("a") is None
    cache.put("a", _entry(1, seconds=2.5))
    cache.put("b", _entry(2, seconds=0.75))
    assert cache.get("a")["vq02"] == [1, 2]
    cache.get("a")
    cache.get("b")
    s = cache.stats()
    assert (s["hits"], s["misses"], s["entries"]) == (3, 1, 2)
    assert s["hit_rate"] == pytest.approx(0.75)
    assert s["time_saved_s"] == pytest.approx(2.5 + 2.5 + 0.75)
    assert s["persistent"] is True and s["directory"] == "disk: cache folder 'c'" and s["bytes"] > 0


def test_update_merges_fields_and_clear_empties(tmp_path):
    cache = PromptCache(tmp_path / "c")
    cache.put("k", _entry(1))
    cache.update("k", {"transcript": "hello", "vocoder": encode_array(np.eye(3, dtype=np.float32))})
    cache.update("missing", {"transcript": "x"})  # no entry: nothing happens
    value = cache.get("k")
    assert value["transcript"] == "hello" and value["vq06"] == [1, 1, 1]
    np.testing.assert_array_equal(decode_array(value["vocoder"]), np.eye(3, dtype=np.float32))
    assert cache.get("missing") is None
    cache.clear()
    assert cache.stats()["entries"] == 0 and cache.get("k") is None


def test_lru_eviction_by_count(tmp_path):
    cache = PromptCache(tmp_path / "c", max_entries=3)
    for i in range(3):
        cache.put(f"k{i}", _entry(i))
    assert cache.get("k0") is not None  # k0 is now more recent than k1
    cache.put("k3", _entry(3))
    cache.put("k4", _entry(4))
    assert cache.stats()["entries"] == 3
    assert cache.get("k1") is None and cache.get("k2") is None
    assert all(cache.get(k) is not None for k in ("k0", "k3", "k4"))


def test_lru_eviction_by_bytes(tmp_path):
    cache = PromptCache(tmp_path / "c", max_bytes=400_000)
    for i in range(12):
        cache.put(f"k{i}", _entry(i, pad=100_000))  # ~100 kB each, stored as files by diskcache
    stats = cache.stats()
    assert stats["entries"] < 12 and stats["bytes"] <= 400_000 + 200_000
    assert cache.get("k11") is not None and cache.get("k0") is None


def test_memory_mode_is_bounded_too():
    cache = PromptCache(None, max_entries=2, max_bytes=10_000)
    for i in range(4):
        cache.put(f"k{i}", _entry(i))
    assert cache.stats()["entries"] == 2 and cache.stats()["persistent"] is False
    cache.put("big", _entry(9, pad=9_000))
    cache.put("big2", _entry(9, pad=9_000))
    assert cache.stats()["bytes"] <= 10_000 and cache.get("big2") is not None


def test_survives_restart(tmp_path):
    PromptCache(tmp_path / "c").put("k", _entry(7, seconds=3.0))
    reopened = PromptCache(tmp_path / "c")
    assert reopened.get("k")["vq02"] == [7, 8]
    assert reopened.stats()["time_saved_s"] == pytest.approx(3.0)


def test_corrupt_entries_are_misses_and_removed(tmp_path, caplog):
    folder = tmp_path / "c"
    cache = PromptCache(folder)
    cache.put("garbage", _entry(1))
    cache.put("wrong", _entry(2))
    cache.put("big", _entry(3, pad=200_000))  # large values live in their own file
    con = sqlite3.connect(str(folder / "cache.db"))
    with con:  # behind the cache's back: a row that is not JSON, one without codes
        con.execute("UPDATE Cache SET value = ? WHERE key LIKE '%garbage'", (b"{not json",))
        con.execute("UPDATE Cache SET value = ? WHERE key LIKE '%wrong'", (json.dumps({"vq02": 3}).encode(),))
    files = [p for p in folder.rglob("*.val")]
    assert files, "expected diskcache to store the large value as a file"
    files[0].write_bytes(files[0].read_bytes()[:1000])  # truncate it
    with caplog.at_level(logging.WARNING):
        assert cache.get("garbage") is None
        assert cache.get("wrong") is None
        assert cache.get("big") is None
    assert con.execute("SELECT COUNT(*) FROM Cache WHERE key LIKE 'prompts:%'").fetchone()[0] == 0
    assert not list(folder.rglob("*.val"))
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
    assert cache.stats()["misses"] == 3 and cache.stats()["entries"] == 0
    cache.put("big", _entry(1))  # usable again afterwards
    assert cache.get("big") is not None
    con.close()


def test_unwritable_directory_degrades_to_memory_with_one_warning(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a path under a regular file cannot be created, even by root
    with caplog.at_level(logging.WARNING):
        cache = PromptCache(blocker / "cache")
        for i in range(3):
            cache.put(f"k{i}", _entry(i))
            assert cache.get(f"k{i}") is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "memory" in warnings[0].getMessage()
    assert cache.stats()["persistent"] is False and cache.stats()["entries"] == 3


def _refuse_writes(monkeypatch, message: str) -> None:
    """Every diskcache write fails as SQLite fails on a read-only or full disk (reads still work).

    As root, chmod cannot make a folder read-only, so the failure is injected where SQLite raises it.
    """

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError(message)

    monkeypatch.setattr(diskcache.Cache, "set", refuse)


def test_full_disk_during_put_degrades_once_and_keeps_working(tmp_path, caplog, monkeypatch):
    cache = PromptCache(tmp_path / "c")
    cache.put("before", _entry(0))
    _refuse_writes(monkeypatch, "database or disk is full")
    with caplog.at_level(logging.WARNING):
        cache.put("k1", _entry(1))
        cache.put("k2", _entry(2))
    assert cache.get("k1") is not None and cache.get("k2") is not None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert cache.stats()["persistent"] is False


def test_entries_on_disk_stay_readable_after_a_failed_write(tmp_path, caplog, monkeypatch):
    folder = tmp_path / "c"
    cache = PromptCache(folder)
    cache.put("before", _entry(0))
    _refuse_writes(monkeypatch, "attempt to write a readonly database")
    with caplog.at_level(logging.WARNING):
        cache.put("after", _entry(1))
        assert cache.get("before")["vq02"] == [0, 1]  # still read from disk
        assert cache.get("after")["vq02"] == [1, 2]  # from the memory overlay
        cache.update("before", {"transcript": "kept in memory"})
        assert cache.get("before")["transcript"] == "kept in memory"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert cache.stats()["store"]["degraded"].startswith("read-only")
    assert cache.stats()["entries"] == 3  # one on disk, two in memory ("before" is in both)
    # the folder becomes writable again: the next write after the retry delay lands on disk with the rest
    import storage.disk

    monkeypatch.undo()
    monkeypatch.setattr(storage.disk, "DISK_RETRY_S", 0.0)
    cache.store._retry_at = 0.0
    cache.put("later", _entry(2))
    assert cache.stats()["persistent"] is True
    reopened = PromptCache(folder)
    assert {k: reopened.get(k) is not None for k in ("before", "after", "later")} == dict.fromkeys(
        ("before", "after", "later"), True
    )
    assert reopened.get("before")["transcript"] == "kept in memory"


def test_pickled_rows_are_never_unpickled_and_are_removed(tmp_path):
    folder = tmp_path / "c"
    marker = tmp_path / "unpickled"
    payload = pickle_payload(marker)
    cache = PromptCache(folder)
    cache.put("small", _entry(1))
    cache.put("big", _entry(2, pad=100_000))
    con = sqlite3.connect(str(folder / "cache.db"))
    with con:  # a tampered cache.db: pickle-mode rows, in the database and in a value file
        con.execute(
            "UPDATE Cache SET mode = 4, filename = NULL, value = ? WHERE key LIKE '%small'", (payload,)
        )
        (filename,) = con.execute("SELECT filename FROM Cache WHERE key LIKE '%big'").fetchone()
        (folder / filename).write_bytes(payload)
        con.execute("UPDATE Cache SET mode = 4 WHERE key LIKE '%big'")
    assert cache.get("small") is None and cache.get("big") is None
    assert PromptCache(folder).get("small") is None  # nor does a restart
    assert not marker.exists(), "a pickle from the cache folder was executed"
    left = con.execute("SELECT COUNT(*) FROM Cache WHERE key LIKE '%small' OR key LIKE '%big'").fetchone()
    assert left == (0,)
    assert not (folder / filename).exists()
    con.close()


def test_a_value_file_outside_the_folder_is_neither_read_nor_deleted(tmp_path):
    folder = tmp_path / "c"
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(_entry(5)))
    cache = PromptCache(folder)
    cache.put("big", _entry(1, pad=100_000))
    con = sqlite3.connect(str(folder / "cache.db"))
    with con:
        con.execute(
            "UPDATE Cache SET filename = ? WHERE key LIKE '%big'", (os.path.join("..", outside.name),)
        )
    assert cache.get("big") is None
    assert outside.exists() and json.loads(outside.read_text()) == _entry(5)
    con.close()


def test_a_corrupt_database_is_moved_aside_once_and_a_fresh_one_starts(tmp_path, caplog):
    folder = tmp_path / "c"
    folder.mkdir()
    garbage = b"\x00garbage" * 64
    (folder / "cache.db").write_bytes(garbage)
    with caplog.at_level(logging.WARNING):
        cache = PromptCache(folder)
        cache.put("k", _entry(1))
        assert cache.get("k") is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "moved it aside" in warnings[0] and "writable" not in warnings[0]
    assert cache.persistent
    aside = list(folder.glob("cache.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept for inspection
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        restarted = PromptCache(folder)  # the next start is a normal one, with the entry
        assert restarted.get("k") is not None and restarted.persistent
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_folder_deleted_while_running_is_recreated(tmp_path, caplog):
    folder = tmp_path / "c"
    cache = PromptCache(folder)
    cache.put("old", _entry(0))
    shutil.rmtree(folder)
    with caplog.at_level(logging.WARNING):
        cache.put("new", _entry(1))
    assert folder.is_dir() and cache.get("new") is not None and cache.persistent
    assert PromptCache(folder).get("new")["vq02"] == [1, 2]  # on disk, for the next start
    assert any("deleted or replaced" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("max_mb", [1.0, 0.75])
def test_the_size_limit_counts_every_file_in_the_folder(tmp_path, max_mb):
    folder = tmp_path / "c"
    max_bytes = int(max_mb * MIB)  # settings turns a fractional --cache-max-mb into bytes
    cache = PromptCache(folder, max_bytes=max_bytes)
    for i in range(60):
        cache.put(f"k{i}", _entry(i, pad=40_000 if i % 3 == 0 else 15_000))  # value files and rows
        cache.alias_put(f"raw-{i:04d}" * 8, f"k{i}")
        cache.update(f"k{i}", {"transcript": "words " * 50})
        assert cache.get(f"k{i}") is not None
        used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert used <= max_bytes, f"the folder holds {used} bytes after entry {i}, over {max_bytes}"
    assert cache.stats()["bytes"] <= max_bytes
    assert cache.get("k59") is not None and cache.get("k0") is None
    assert cache.alias_get("raw-0059" * 8) == "k59"


def test_clear_resets_every_counter_and_reports_what_it_removed(tmp_path):
    cache = PromptCache(tmp_path / "c")
    cache.put("k1", _entry(1, seconds=2.0))
    cache.put("k2", _entry(2))
    cache.alias_put("raw", "k1")
    cache.get("k1")
    cache.get("missing")
    cache.incr("vocoder_prompt_hits", 2)  # any counter kept in the store (e.g. the engine's) shows ...
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["vocoder_prompt_hits"]) == (1, 1, 2)
    removed = cache.clear()
    assert removed["entries"] == 2 and removed["bytes"] > 0 and removed["aliases"] == 1
    assert removed["counters"]["vocoder_prompt_hits"] == 2
    for view in (cache.stats(), PromptCache(tmp_path / "c").stats()):  # ... and is reset, for everyone
        assert (view["hits"], view["misses"], view["time_saved_s"], view["entries"]) == (0, 0, 0.0, 0)
        assert "vocoder_prompt_hits" not in view
    assert cache.alias_get("raw") is None


def _child_writes(folder: str, start: int, count: int) -> None:
    cache = PromptCache(Path(folder))
    for i in range(start, start + count):
        cache.put(f"k{i}", _entry(i))
        cache.update(f"k{i}", {"transcript": f"t{i}"})


def test_two_processes_share_the_folder(tmp_path):
    folder = tmp_path / "shared"
    PromptCache(folder).put("parent", _entry(100))
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from prompt_cache import PromptCache; "
        f"from pathlib import Path; c = PromptCache(Path({str(folder)!r})); "
        "assert c.get('parent')['vq02'] == [100, 101]; "
        "c.put('child', {'vq02': [1], 'vq06': [2], 'encode_seconds': 1.0})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert PromptCache(folder).get("child")["vq06"] == [2]
    # concurrent writers in two processes: every entry and every merged field lands
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child_writes, args=(str(folder), s, 15)) for s in (0, 15)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = PromptCache(folder)
    assert all(cache.get(f"k{i}")["transcript"] == f"t{i}" for i in range(30))
    assert cache.stats()["entries"] == 32


def test_threads_share_one_cache(tmp_path):
    cache = PromptCache(tmp_path / "c", max_entries=1000)
    errors = []

    def work(t: int) -> None:
        try:
            for i in range(30):
                cache.put(f"{t}-{i}", _entry(i))
                assert cache.get(f"{t}-{i}")["vq02"] == [i, i + 1]
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and cache.stats()["entries"] == 120


def test_prompt_key_depends_on_pcm_and_fingerprint():
    a = np.linspace(-1, 1, 1000, dtype=np.float32)
    k = prompt_key(a, "f" * 64)
    assert k == prompt_key(a.copy(), "f" * 64)
    assert k != prompt_key(a, "e" * 64)
    b = a.copy()
    b[10] += 1e-7
    assert k != prompt_key(b, "f" * 64)


def test_aliases_persist_are_not_entries_and_clear_with_the_cache(tmp_path):
    cache = PromptCache(tmp_path / "c")
    cache.put("k1", _entry(1))
    cache.alias_put("raw-hash-1", "k1")
    reopened = PromptCache(tmp_path / "c")
    assert reopened.alias_get("raw-hash-1") == "k1" and reopened.alias_get("other") is None
    stats = reopened.stats()
    assert stats["entries"] == 1 and stats["hits"] == stats["misses"] == 0  # alias look-ups count nothing
    reopened.clear()
    assert reopened.alias_get("raw-hash-1") is None


def test_aliases_in_memory_when_the_folder_is_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = PromptCache(blocker / "cache")
    assert not cache.persistent
    cache.alias_put("raw", "key")
    assert cache.alias_get("raw") == "key"
