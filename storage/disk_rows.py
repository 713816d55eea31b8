"""The rows of the disk store's database: SQL operations on a diskcache ``Cache``, and the byte budget.

Layout: every entry is one row of diskcache's ``Cache`` table, keyed ``<namespace>:<key>`` and tagged
with its namespace; values are JSON bytes (in the row, or in a value file from 32 KiB up); counters
are numeric rows tagged ``counters``. Triggers keep a per-namespace entry and byte count
(``EditxNamespace``), so bounds are checked without scanning.

These functions take the open ``Cache`` (with ``SafeDisk``, storage/safe_disk.py) and raise what
SQLite and diskcache raise: ``DiskStore`` (storage/disk.py) calls them under its lock and handles
failures, damage and the memory fallback.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import diskcache
from diskcache.core import MODE_RAW

from storage.base import COUNTERS, Number, decode_value, encode_value, merged, parse_counter
from storage.safe_disk import UnsafeRow

log = logging.getLogger(__name__)

BUDGET_ROUNDS = 64  # eviction rounds per write at most (each removes at least one entry)
EVICT_BATCH = 256

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS EditxNamespace"
    " (tag TEXT PRIMARY KEY, entries INTEGER NOT NULL, bytes INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS EditxTagAccess ON Cache (tag, access_time)",
    "CREATE TRIGGER IF NOT EXISTS EditxNsInsert AFTER INSERT ON Cache WHEN NEW.tag IS NOT NULL BEGIN"
    " INSERT OR IGNORE INTO EditxNamespace VALUES (NEW.tag, 0, 0);"
    " UPDATE EditxNamespace SET entries = entries + 1,"
    " bytes = bytes + NEW.size + COALESCE(length(NEW.value), 0) WHERE tag = NEW.tag; END",
    "CREATE TRIGGER IF NOT EXISTS EditxNsDelete AFTER DELETE ON Cache WHEN OLD.tag IS NOT NULL BEGIN"
    " UPDATE EditxNamespace SET entries = entries - 1,"
    " bytes = bytes - OLD.size - COALESCE(length(OLD.value), 0) WHERE tag = OLD.tag; END",
    "CREATE TRIGGER IF NOT EXISTS EditxNsUpdate AFTER UPDATE OF tag, size, value ON Cache BEGIN"
    " UPDATE EditxNamespace SET entries = entries - 1,"
    " bytes = bytes - OLD.size - COALESCE(length(OLD.value), 0) WHERE tag = OLD.tag;"
    " INSERT OR IGNORE INTO EditxNamespace SELECT NEW.tag, 0, 0 WHERE NEW.tag IS NOT NULL;"
    " UPDATE EditxNamespace SET entries = entries + 1,"
    " bytes = bytes + NEW.size + COALESCE(length(NEW.value), 0) WHERE tag = NEW.tag; END",
)


def db_key(ns: str, key: str) -> str:
    return f"{ns}:{key}"


def file_size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def install_schema(cache: diskcache.Cache) -> int:
    """Our schema; rows of the old single-namespace layout removed (how many is returned); counts
    rebuilt from the rows."""
    stale: list[str | None] = []
    with cache.transact():
        for statement in SCHEMA:
            cache._sql(statement)
        rows = cache._sql("SELECT rowid, filename FROM Cache WHERE tag IS NULL OR raw != 1").fetchall()
        if rows:
            cache._sql("DELETE FROM Cache WHERE tag IS NULL OR raw != 1")
            stale = [filename for _, filename in rows]
        cache._sql("DELETE FROM EditxNamespace")
        cache._sql(
            "INSERT INTO EditxNamespace SELECT tag, COUNT(*),"
            " SUM(size + COALESCE(length(value), 0)) FROM Cache GROUP BY tag"
        )
        cache._sql("UPDATE Settings SET value = (SELECT COUNT(*) FROM Cache) WHERE key = 'count'")
        cache._sql(
            "UPDATE Settings SET value = (SELECT COALESCE(SUM(size), 0) FROM Cache) WHERE key = 'size'"
        )
    for filename in stale:
        cache.disk.remove(filename)
    return len(rows)


# -- entries ---------------------------------------------------------------------------------------


def read(cache: diskcache.Cache, ns: str, key: str) -> dict | None:
    """The value of ``key``; a row that does not decode to a JSON object is removed (a miss)."""
    row = cache._sql(
        "SELECT rowid, mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (db_key(ns, key),)
    ).fetchone()
    if row is None:
        return None
    rowid, mode, filename, db_value = row
    try:
        value = decode_value(cache.disk.fetch(mode, filename, db_value, False))
        why = "not a JSON object"
    except UnsafeRow as exc:
        value, why = None, str(exc)
    if value is None:
        _drop(cache, rowid, ns, key, filename, why)
    return value


def _drop(cache: diskcache.Cache, rowid: int, ns: str, key: str, filename: str | None, why: str) -> None:
    log.warning(
        "cache store: entry %s/%s is corrupt (%s); removed (it is made again when needed)", ns, key, why
    )
    try:
        with cache.transact():
            cache._sql(
                "DELETE FROM Cache WHERE rowid = ? AND key = ? AND filename IS ?",
                (rowid, db_key(ns, key), filename),
            )
    except (sqlite3.OperationalError, diskcache.Timeout) as exc:
        log.debug("cache store: corrupt entry %s not removed (%s)", key, exc)
        return
    cache.disk.remove(filename)


def write(
    cache: diskcache.Cache,
    ns: str,
    key: str,
    data: bytes,
    max_entries: int | None,
    touched: dict[str, float],
    only_if_absent: bool = False,
) -> bool:
    """Store ``data`` and evict the namespace's least recently used entries past ``max_entries``
    (None: kept). The buffered recency marks ``touched`` are written first, in the same transaction,
    so eviction sees this process's reads. False (nothing written) when ``only_if_absent`` and the key
    is there. The byte budget is the caller's (``Budget.enforce``)."""
    dbkey = db_key(ns, key)
    evicted: list[str | None] = []
    with cache.transact():
        touch(cache, touched)
        if (
            only_if_absent
            and cache._sql("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (dbkey,)).fetchone()
        ):
            return False
        cache.set(dbkey, data, tag=ns)
        if max_entries is not None:
            row = cache._sql("SELECT entries FROM EditxNamespace WHERE tag = ?", (ns,)).fetchone()
            extra = (row[0] if row else 0) - max_entries
            if extra > 0:
                evicted = delete_rows(
                    cache,
                    cache._sql(
                        "SELECT rowid, filename FROM Cache INDEXED BY EditxTagAccess"
                        " WHERE tag = ? AND key != ? ORDER BY access_time LIMIT ?",
                        (ns, dbkey, extra),
                    ).fetchall(),
                )
    for filename in evicted:
        cache.disk.remove(filename)
    return True


def merge(cache: diskcache.Cache, ns: str, key: str, fields: Mapping) -> dict | None:
    """Merge ``fields`` into the value of ``key`` (read-modify-write atomic across processes); None if
    absent."""
    with cache.transact():
        value = read(cache, ns, key)
        if value is None:
            return None
        value = merged(value, fields)
        cache.set(db_key(ns, key), encode_value(value), tag=ns)
    return value


def delete_rows(cache: diskcache.Cache, rows: list[tuple]) -> list[str | None]:
    """Delete rows by ``(rowid, filename, ...)``; returns their value files, to remove after commit."""
    if rows:
        cache._sql(f"DELETE FROM Cache WHERE rowid IN ({','.join(str(int(r[0])) for r in rows)})")
    return [r[1] for r in rows]


def keys(cache: diskcache.Cache, ns: str) -> list[str]:
    return [
        row[0][len(ns) + 1 :]
        for row in cache._sql("SELECT key FROM Cache WHERE tag = ? AND raw = 1", (ns,)).fetchall()
    ]


def clear(cache: diskcache.Cache, ns: str) -> dict:
    """Remove every entry of ``ns`` (in batches); returns ``{"entries", "bytes"}`` removed."""
    removed = {"entries": 0, "bytes": 0}
    while True:
        with cache.transact():
            rows = cache._sql(
                "SELECT rowid, filename, size + COALESCE(length(value), 0) FROM Cache"
                " WHERE tag = ? LIMIT 500",
                (ns,),
            ).fetchall()
            delete_rows(cache, rows)
        for _, filename, _ in rows:
            cache.disk.remove(filename)
        removed["entries"] += len(rows)
        removed["bytes"] += sum(int(r[2] or 0) for r in rows)
        if not rows:
            break
    checkpoint(cache)
    return removed


def namespace_stat(cache: diskcache.Cache, ns: str, column: str) -> int:
    """``entries`` or ``bytes`` of ``ns`` from the trigger-kept counts (0 for a namespace never written)."""
    row = cache._sql(f"SELECT {column} FROM EditxNamespace WHERE tag = ?", (ns,)).fetchone()
    return 0 if row is None else int(row[0])


def touch(cache: diskcache.Cache, marks: dict[str, float]) -> None:
    """Write the buffered recency marks (db key -> last read) and empty the buffer (never moving a mark
    back in time)."""
    if not marks:
        return
    pending = [(t, k) for k, t in marks.items()]
    marks.clear()
    with cache.transact():
        cache._con.executemany(
            "UPDATE Cache SET access_time = MAX(access_time, ?) WHERE key = ? AND raw = 1", pending
        )


def checkpoint(cache: diskcache.Cache) -> None:
    """Fold the WAL into the database and truncate it (best effort: readers may hold it)."""
    try:
        cache._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.OperationalError as exc:
        log.debug("cache store: checkpoint skipped (%s)", exc)


# -- counters --------------------------------------------------------------------------------------


def incr(cache: diskcache.Cache, amounts: Mapping[str, Number]) -> None:
    with cache.transact():
        for name, amount in amounts.items():
            dbkey = db_key(COUNTERS, name)
            done = cache._sql(
                "UPDATE Cache SET value = value + ? WHERE key = ? AND raw = 1 AND mode = ?"
                " AND typeof(value) IN ('integer', 'real')",
                (amount, dbkey, MODE_RAW),
            )
            if done.rowcount == 0:
                cache.set(dbkey, amount, tag=COUNTERS)


def counters(cache: diskcache.Cache) -> dict[str, Number]:
    out: dict[str, Number] = {}
    for key, mode, value in cache._sql(
        "SELECT key, mode, value FROM Cache WHERE tag = ?", (COUNTERS,)
    ).fetchall():
        number = parse_counter(value) if mode == MODE_RAW and isinstance(value, int | float) else None
        if number is not None:
            out[key[len(COUNTERS) + 1 :]] = number
    return out


def delete_counters(cache: diskcache.Cache) -> None:
    with cache.transact():
        cache._sql("DELETE FROM Cache WHERE tag = ?", (COUNTERS,))


# -- the byte budget -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The byte budget of one folder, ``max_bytes``, and least-recently-used eviction to fit it.

    Counted: the database pages, the shared-memory file, the write-ahead log at its bound
    (``wal_limit``, checkpointed when over) and the value files, less the values of the namespaces
    that are not bounded (the voice library and counters: never evicted). ``bounded`` is passed per
    call, as namespaces are declared at any time.
    """

    db_path: str
    max_bytes: int
    wal_limit: int

    @property
    def wal_path(self) -> str:
        return f"{self.db_path}-wal"

    @property
    def shm_path(self) -> str:
        return f"{self.db_path}-shm"

    def counted(self, cache: diskcache.Cache, bounded: Sequence[str]) -> int:
        """Bytes under the budget: database pages (as committed), the shared-memory file, the WAL at
        its bound, the value files; less what is never evicted."""
        (pages,) = cache._sql("PRAGMA page_count").fetchone()
        return int(pages) * cache._page_size + self.wal_limit + self._outside_db(cache, bounded)

    def folder_bytes(self, cache: diskcache.Cache, bounded: Sequence[str], wal: int | None = None) -> int:
        """What the files take now (the database file shrinks only at checkpoints), kept values
        excluded; ``wal``: the WAL's size if already known."""
        if wal is None:
            wal = file_size(self.wal_path)
        return file_size(self.db_path) + wal + self._outside_db(cache, bounded)

    def _outside_db(self, cache: diskcache.Cache, bounded: Sequence[str]) -> int:
        """Shared-memory file + value files - the values of every namespace not bounded here (the voice
        library and counters, declared in this process or not: they are never evicted)."""
        (values,) = cache._sql("SELECT value FROM Settings WHERE key = 'size'").fetchone()
        marks = ",".join("?" * len(bounded))
        (kept_bytes,) = cache._sql(
            f"SELECT COALESCE(SUM(bytes), 0) FROM EditxNamespace WHERE tag NOT IN ({marks})", tuple(bounded)
        ).fetchone()
        return file_size(self.shm_path) + int(values or 0) - int(kept_bytes or 0)

    def enforce(self, cache: diskcache.Cache, bounded: Sequence[str], keep: str) -> None:
        """Evict least-recently-used entries of the ``bounded`` namespaces (never the db key ``keep``)
        until the folder fits."""
        marks = ",".join("?" * len(bounded))
        evicted = 0
        for _ in range(BUDGET_ROUNDS):
            excess = self.counted(cache, bounded) - self.max_bytes
            if excess <= 0:
                break
            with cache.transact():
                rows = cache._sql(
                    "SELECT rowid, filename, size + COALESCE(length(value), 0) FROM Cache"
                    f" INDEXED BY Cache_access_time WHERE tag IN ({marks}) AND key != ?"
                    " ORDER BY access_time LIMIT ?",
                    (*bounded, keep, EVICT_BATCH),
                ).fetchall()
                take, freed = [], 0
                for row in rows:
                    take.append(row)
                    freed += int(row[2] or 0)
                    if freed >= excess:
                        break
                delete_rows(cache, take)
            for _, filename, _ in take:
                cache.disk.remove(filename)
            evicted += len(take)
            if not take:
                break
        wal = file_size(self.wal_path)
        if wal > self.wal_limit or (evicted and self.folder_bytes(cache, bounded, wal) > self.max_bytes):
            checkpoint(cache)  # the freed pages leave the files at a checkpoint: only when needed
        if evicted:
            log.debug(
                "cache store: evicted %d least-recently-used entries to fit %d bytes", evicted, self.max_bytes
            )
