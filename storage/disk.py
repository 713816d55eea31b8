"""``DiskStore``: the embedded backend, one diskcache database (SQLite + value files) in a folder.

Layout: every entry is one row of diskcache's ``Cache`` table, keyed ``<namespace>:<key>`` and tagged
with its namespace; values are JSON bytes (in the row, or in a ``.val`` file from 32 KiB up); counters
are numeric rows tagged ``counters``. Triggers keep a per-namespace entry and byte count
(``EditxNamespace``), so bounds are checked without scanning.

Hardening (what a shared, long-running folder meets):

- Nothing is ever unpickled: ``SafeDisk`` writes only bytes and numbers, refuses rows in pickle mode
  (or any unknown mode, a pickled key, a value file outside the folder's own naming) and the store
  removes such a row as corrupt. Unknown keys in diskcache's Settings table are dropped at open.
- A damaged database (``quick_check`` fails, "file is not a database", "malformed") is moved aside
  as ``cache.db.corrupt-<time>`` (the newest two are kept) and a fresh one is started, with one
  warning; at open and mid-run.
- A failed write (read-only folder, full disk, a lock held too long) sends writes to an in-memory
  overlay with the same bounds while reads go on from the overlay and then the disk; the disk is
  tried again every ``DISK_RETRY_S`` and the overlay is written back when it works.
- A folder (or database file) deleted or replaced while running is noticed at the next call and
  recreated: entries written afterwards land in the new database.
- The byte budget counts what the folder holds: the database pages, the shared-memory file, the
  write-ahead log at its bound (``journal_size_limit``, checkpointed when over) and the value files;
  the kept namespaces (voice library) are subtracted, as they are never evicted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import diskcache
from diskcache.core import DBNAME, DEFAULT_SETTINGS, METADATA, MODE_BINARY, MODE_RAW, MODE_TEXT, UNKNOWN

from storage.base import (
    COUNTERS,
    MAX_PENDING,
    Number,
    Store,
    decode_value,
    encode_value,
    merged,
    parse_counter,
)
from storage.memory import MemoryStore

log = logging.getLogger(__name__)

SQLITE_TIMEOUT_S = 10  # how long a writer waits for another process holding the lock
MIN_FILE_SIZE = 1 << 15  # values from 32 KiB up live in their own file (diskcache's default)
DISK_RETRY_S = 30.0  # after a failed write, how long writes stay in memory before the disk is tried again
CORRUPT_COPIES_KEPT = 2  # damaged databases kept for inspection (newest first)
BUDGET_ROUNDS = 64  # eviction rounds per write at most (each removes at least one entry)
EVICT_BATCH = 256
WAL_MIN, WAL_MAX = 64 << 10, 4 << 20  # bounds of the write-ahead log allowance (1/8 of the budget)
LEGACY_ALIAS_DIR = "aliases"  # the alias database of the single-namespace layout (EditX <= 0.2)
_VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")
_VALUE_DIR = re.compile(r"[0-9a-f]{2}")
_OUR_SETTINGS = ("sqlite_journal_size_limit", "sqlite_wal_autocheckpoint")
_KNOWN_SETTINGS = tuple(DEFAULT_SETTINGS) + tuple(METADATA) + _OUR_SETTINGS
_FAILED = object()
T = TypeVar("T")

_SCHEMA = (
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


class UnsafeRow(Exception):
    """A row the store will not decode: pickle mode, a pickled key, a stray or missing value file."""


class CorruptDatabase(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


def _valid_value_file(filename: object) -> bool:
    return isinstance(filename, str) and _VALUE_FILE.fullmatch(filename.replace(os.sep, "/")) is not None


class SafeDisk(diskcache.Disk):
    """diskcache serialisation without pickle: str keys, bytes and number values only.

    Reading refuses pickle-mode rows (``UnsafeRow``) instead of unpickling them, and any value file
    whose name is not diskcache's own ``xx/yy/<28 hex>.val`` (a tampered row could name any path).
    """

    def __init__(self, directory: str, min_file_size: int = MIN_FILE_SIZE, pickle_protocol: int = 0):
        super().__init__(directory, min_file_size=min_file_size, pickle_protocol=pickle_protocol)

    def put(self, key):
        if type(key) is not str:
            raise TypeError(f"store keys are str, got {type(key).__name__}")
        return key, True

    def get(self, key, raw):
        if not raw:
            raise UnsafeRow("a pickled key")
        return super().get(key, raw)

    def store(self, value, read, key=UNKNOWN):
        if read or type(value) not in (bytes, int, float):
            raise TypeError(f"the disk store writes bytes and numbers only, got {type(value).__name__}")
        return super().store(value, False, key=key)

    def fetch(self, mode, filename, value, read):
        if read:
            raise TypeError("file handles are not handed out")
        if mode == MODE_RAW:
            return super().fetch(mode, filename, value, False)
        if mode in (MODE_BINARY, MODE_TEXT):
            if not _valid_value_file(filename):
                raise UnsafeRow(f"a value file outside the cache's naming ({filename!r})")
            try:
                return super().fetch(mode, filename, value, False)
            except FileNotFoundError:
                raise UnsafeRow("its value file is missing") from None
            except UnicodeDecodeError as exc:
                raise UnsafeRow(f"its value file is not text ({exc})") from None
        raise UnsafeRow(f"stored in mode {mode} (pickle), refused")

    def remove(self, file_path):
        if _valid_value_file(file_path):
            super().remove(file_path)


def _is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, CorruptDatabase):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return type(exc) is sqlite3.DatabaseError


def _file_size(path: Path | str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _db_key(ns: str, key: str) -> str:
    return f"{ns}:{key}"


def _close_quietly(cache: diskcache.Cache | None) -> None:
    if cache is None:
        return
    try:
        cache.close()
    except Exception:  # noqa: BLE001 - the handle is being dropped because it failed
        pass


class DiskStore(Store):
    """Store in one folder, shared by every thread and process that opens it (see the module doc)."""

    backend = "disk"

    def __init__(self, directory: Path, max_bytes: int):
        super().__init__(max_bytes)
        self.directory = Path(directory)
        self._db_path = self.directory / DBNAME
        self._db_str = str(self._db_path)
        self._wal_path, self._shm_path = f"{self._db_path}-wal", f"{self._db_path}-shm"
        self._lock = threading.RLock()
        self._overlay = MemoryStore(max_bytes)  # writes that the disk refused
        self._cache: diskcache.Cache | None = None
        self._db_id: tuple[int, int] | None = None
        self._degraded: str | None = None  # None, or why writes go to memory
        self._retry_at = 0.0
        self._wal_limit = min(WAL_MAX, max(WAL_MIN, self.max_bytes // 8))
        self._touched: dict[str, float] = {}  # db key -> last read: recency written behind (see flush)
        with self._lock:
            self._open()

    # -- namespaces ------------------------------------------------------------------------------

    def namespace(self, name: str, max_entries: int | None = None):
        self._overlay.namespace(name, max_entries)
        return super().namespace(name, max_entries)

    # -- entries ---------------------------------------------------------------------------------

    def get(self, ns: str, key: str) -> dict | None:
        spec = self._ns(ns)
        with self._lock:
            value = self._overlay.get(ns, key)
            if value is not None:
                return value
            found = self._on_disk(lambda c: self._read(c, ns, key, touch=spec.bounded), write=False)
            if len(self._touched) > MAX_PENDING or (self._touched and self._flush_due()):
                self.flush()
            return None if found is _FAILED else found

    def put(self, ns: str, key: str, value: Mapping) -> None:
        self._check_key(key)
        self._ns(ns)
        data = encode_value(value)
        with self._lock:
            if self._on_disk(lambda c: self._write(c, ns, key, data), write=True) is _FAILED:
                self._overlay.put(ns, key, value)
            else:
                self._overlay.delete(ns, key)

    def add(self, ns: str, key: str, value: Mapping) -> bool:
        self._check_key(key)
        self._ns(ns)
        data = encode_value(value)
        with self._lock:
            if self._overlay.get(ns, key) is not None:
                return False
            added = self._on_disk(lambda c: self._write(c, ns, key, data, only_if_absent=True), write=True)
            if added is not _FAILED:
                return bool(added)
            if self.get(ns, key) is not None:
                return False
            return self._overlay.add(ns, key, value)

    def update(self, ns: str, key: str, fields: Mapping) -> dict | None:
        self._ns(ns)
        with self._lock:
            if self._overlay.get(ns, key) is not None:
                return self._overlay.update(ns, key, fields)
            result = self._on_disk(lambda c: self._merge(c, ns, key, fields), write=True)
            if result is not _FAILED:
                return result
            current = self.get(ns, key)  # the disk refused the write: keep the merged value in memory
            if current is None:
                return None
            value = merged(current, fields)
            self._overlay.put(ns, key, value)
            return value

    def delete(self, ns: str, key: str) -> bool:
        self._ns(ns)
        with self._lock:
            in_memory = self._overlay.delete(ns, key)
            on_disk = self._on_disk(lambda c: c.delete(_db_key(ns, key)), write=True)
            return in_memory or (on_disk is not _FAILED and bool(on_disk))

    def keys(self, ns: str) -> list[str]:
        self._ns(ns)
        with self._lock:
            found = self._on_disk(lambda c: [row[0][len(ns) + 1:] for row in c._sql(
                "SELECT key FROM Cache WHERE tag = ? AND raw = 1", (ns,)).fetchall()], write=False)
            on_disk = [] if found is _FAILED else found
            seen = set(on_disk)
            return on_disk + [k for k in self._overlay.keys(ns) if k not in seen]

    def clear(self, ns: str) -> dict:
        self._ns(ns)
        with self._lock:
            removed = self._overlay.clear(ns)
            done = self._on_disk(lambda c: self._clear(c, ns), write=True)
            if done is not _FAILED:
                removed = {k: removed[k] + done[k] for k in removed}
            return removed

    def count(self, ns: str) -> int:
        return self._namespace_stat(ns, "entries")

    def size(self, ns: str) -> int:
        return self._namespace_stat(ns, "bytes")

    def usage(self) -> int:
        """What the folder's files take now (database, WAL, shared memory, value files), less what is
        never evicted (plus any overlay held in memory). Evictions keep it within ``max_bytes``."""
        with self._lock:
            found = self._on_disk(lambda c: self._folder_bytes(c, _file_size(self._wal_path)), write=False)
            return self._overlay.usage() + (0 if found is _FAILED else found)

    # -- counters --------------------------------------------------------------------------------

    def _write_counters(self, amounts: Mapping[str, Number]) -> None:
        with self._lock:
            if self._on_disk(lambda c: self._db_incr(c, amounts), write=True) is _FAILED:
                self._overlay.incr_many(amounts)

    def _read_counters(self) -> dict[str, Number]:
        with self._lock:
            found = self._on_disk(self._db_counters, write=False)
            on_disk = {} if found is _FAILED else found
            for name, value in self._overlay.counters().items():
                on_disk[name] = on_disk.get(name, 0) + value
            return on_disk

    def _clear_counters(self) -> dict[str, Number]:
        with self._lock:
            old = self._read_counters()
            self._overlay.reset_counters()
            self._on_disk(self._db_delete_counters, write=True)
            return old

    def has_buffered(self) -> bool:
        return bool(self._touched) or super().has_buffered()

    def flush(self) -> None:
        """Write the buffered recency marks and counter increments."""
        with self._lock:
            if self._touched and self._on_disk(self._db_touch, write=True) is _FAILED:
                self._touched.clear()  # recency is best effort: not kept while the disk refuses writes
        super().flush()

    # -- state -----------------------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        """True while new entries reach the disk."""
        return self._cache is not None and self._degraded is None

    def status(self) -> dict:
        with self._lock:
            return {"backend": self.backend, "location": f"disk: cache folder '{self.directory.name}'",
                    "persistent": self.persistent, "connected": self._cache is not None,
                    "fallback": "memory" if self._degraded else None, "degraded": self._degraded}

    def _close(self) -> None:
        with self._lock:
            _close_quietly(self._cache)

    # -- opening, damage and failures ------------------------------------------------------------

    def _open(self) -> bool:
        """Open (or create) the database; False and memory-only writes when that is impossible."""
        for attempt in (0, 1):
            cache = None
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._preflight()
                cache = diskcache.Cache(
                    str(self.directory), timeout=SQLITE_TIMEOUT_S, disk=SafeDisk,
                    eviction_policy="least-recently-used", cull_limit=0, size_limit=self.max_bytes,
                    statistics=0, tag_index=0, sqlite_journal_size_limit=self._wal_limit,
                    sqlite_wal_autocheckpoint=max(16, self._wal_limit // 2 // 4096),
                    disk_min_file_size=MIN_FILE_SIZE, disk_pickle_protocol=0)
                self._prepare(cache)
                st = self._db_path.stat()
            except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
                _close_quietly(cache)
                if attempt == 0 and _is_corrupt(exc):
                    self._quarantine(exc)
                    continue
                self._cache = None
                self._memory_only(exc)
                return False
            self._cache, self._db_id = cache, (st.st_dev, st.st_ino)
            log.info("cache store: %s (%d entries, %.1f MiB counted, budget %.1f MiB)", self.directory,
                     len(cache), self._usage(cache) / (1 << 20), self.max_bytes / (1 << 20))
            if self._degraded is not None:
                self._replay_overlay()
            return True
        return False

    def _preflight(self) -> None:
        """Check an existing database for damage and drop Settings rows diskcache would apply blindly."""
        if not self._db_path.exists():
            return
        con = sqlite3.connect(str(self._db_path), timeout=SQLITE_TIMEOUT_S, isolation_level=None)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise CorruptDatabase(f"quick_check: {row[0] if row else 'no answer'}")
            marks = ",".join("?" * len(_KNOWN_SETTINGS))
            try:
                con.execute(f"DELETE FROM Settings WHERE key NOT IN ({marks})", _KNOWN_SETTINGS)
            except sqlite3.OperationalError:  # no table yet, or locked / read-only: diskcache decides
                pass
        finally:
            con.close()

    def _prepare(self, cache: diskcache.Cache) -> None:
        """Our schema; rows of the old single-namespace layout removed; counts rebuilt from the rows."""
        stale: list[str | None] = []
        with cache.transact():
            for statement in _SCHEMA:
                cache._sql(statement)
            rows = cache._sql("SELECT rowid, filename FROM Cache WHERE tag IS NULL OR raw != 1").fetchall()
            if rows:
                cache._sql("DELETE FROM Cache WHERE tag IS NULL OR raw != 1")
                stale = [filename for _, filename in rows]
            cache._sql("DELETE FROM EditxNamespace")
            cache._sql("INSERT INTO EditxNamespace SELECT tag, COUNT(*),"
                       " SUM(size + COALESCE(length(value), 0)) FROM Cache GROUP BY tag")
            cache._sql("UPDATE Settings SET value = (SELECT COUNT(*) FROM Cache) WHERE key = 'count'")
            cache._sql("UPDATE Settings SET value = (SELECT COALESCE(SUM(size), 0) FROM Cache)"
                       " WHERE key = 'size'")
        for filename in stale:
            cache.disk.remove(filename)
        legacy = self.directory / LEGACY_ALIAS_DIR
        legacy_aliases = (legacy / DBNAME).exists()
        if legacy_aliases:
            shutil.rmtree(legacy, ignore_errors=True)
        if rows or legacy_aliases:
            log.info("cache store: removed %d entries of an older cache layout in %s (made again as used)",
                     len(rows), self.directory)

    def _quarantine(self, exc: BaseException) -> None:
        """Move a damaged database aside (kept for inspection) so a fresh one can start."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.directory / f"{DBNAME}.corrupt-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{DBNAME}.corrupt-{stamp}-{n}"
        try:
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self._db_path}{suffix}")
                if source.exists():
                    os.replace(source, f"{target}{suffix}")
            for child in self.directory.iterdir():  # value files of the old database: unreachable now
                if child.is_dir() and _VALUE_DIR.fullmatch(child.name):
                    shutil.rmtree(child, ignore_errors=True)
            copies = sorted(p for p in self.directory.glob(f"{DBNAME}.corrupt-*")
                            if not p.name.endswith(("-wal", "-shm")))
            for old in copies[:-CORRUPT_COPIES_KEPT]:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{old}{suffix}").unlink(missing_ok=True)
        except OSError as move_error:
            log.warning("cache store: the database in %s is damaged (%s) and could not be moved aside (%s)",
                        self.directory, exc, move_error)
            return
        log.warning("cache store: the database in %s was damaged (%s); moved it aside as %s and started "
                    "an empty one. Entries are made again as they are used; delete %s once inspected.",
                    self.directory, exc, target.name, target.name)

    def _memory_only(self, exc: BaseException) -> None:
        if self._degraded is None:
            log.warning("cache store: cannot use %s (%s); keeping entries in memory only for this run "
                        "(they are made again after a restart). Point --cache-dir to a writable folder to "
                        "persist them.", self.directory, exc)
        self._degraded = f"memory only: the cache folder cannot be used ({type(exc).__name__})"
        self._retry_at = time.monotonic() + DISK_RETRY_S

    def _writes_failed(self, exc: BaseException) -> None:
        if self._degraded is None:
            log.warning("cache store: writing to %s failed (%s); new entries are kept in memory (entries "
                        "already on disk are still read) and the disk is tried again every %.0f s. Free "
                        "space or make the folder writable.", self.directory, exc, DISK_RETRY_S)
        self._degraded = f"read-only: writes kept in memory ({type(exc).__name__})"
        self._retry_at = time.monotonic() + DISK_RETRY_S

    def _replay_overlay(self) -> None:
        """The disk takes writes again: move what the overlay holds onto it."""
        log.info("cache store: %s is writable again; writing %d entries kept in memory back to it",
                 self.directory, sum(self._overlay.count(n) for n in self._namespaces))
        self._degraded = None
        cache = self._cache
        try:
            for name in self._namespaces:
                for key, value in self._overlay.items(name):
                    self._write(cache, name, key, encode_value(value))
                self._overlay.clear(name)
            self._db_incr(cache, self._overlay.counters())
            self._overlay.reset_counters()
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            self._writes_failed(exc)

    def _current(self, write: bool) -> diskcache.Cache | None:
        """The database to use now: reopened when the file was deleted or replaced, None to use memory."""
        if self._cache is not None:
            try:
                st = os.stat(self._db_str)
                same = (st.st_dev, st.st_ino) == self._db_id
            except OSError:
                same = False
            if not same:
                log.warning("cache store: the database in %s was deleted or replaced while running; "
                            "recreating it", self.directory)
                _close_quietly(self._cache)
                self._cache = None
                self._open()
                return self._cache if (self._degraded is None or not write) else None
        if not write or self._degraded is None:
            return self._cache
        if time.monotonic() < self._retry_at:
            return None
        self._retry_at = time.monotonic() + DISK_RETRY_S
        if self._cache is None:
            return self._cache if self._open() else None  # opened: the overlay was replayed onto it
        return self._cache

    def _on_disk(self, fn: Callable[[diskcache.Cache], T], write: bool) -> T | object:
        """``fn(database)``, or ``_FAILED`` when the disk cannot serve it (failures handled here)."""
        cache = self._current(write)
        if cache is None:
            return _FAILED
        for attempt in (0, 1):
            try:
                result = fn(cache)
            except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
                if attempt == 0 and _is_corrupt(exc):
                    _close_quietly(cache)
                    self._cache = None
                    self._quarantine(exc)
                    if not self._open():
                        return _FAILED
                    cache = self._cache
                    continue
                if write:
                    self._writes_failed(exc)
                else:
                    log.debug("cache store: read from %s failed (%s)", self.directory, exc)
                return _FAILED
            if write and self._degraded is not None:
                self._replay_overlay()
            return result
        return _FAILED

    # -- database operations (called through _on_disk, under the lock) --------------------------

    def _read(self, cache: diskcache.Cache, ns: str, key: str, touch: bool) -> dict | None:
        row = cache._sql("SELECT rowid, mode, filename, value FROM Cache WHERE key = ? AND raw = 1",
                         (_db_key(ns, key),)).fetchone()
        if row is None:
            return None
        rowid, mode, filename, db_value = row
        try:
            value = decode_value(cache.disk.fetch(mode, filename, db_value, False))
            why = "not a JSON object"
        except UnsafeRow as exc:
            value, why = None, str(exc)
        if value is None:
            self._drop(cache, rowid, ns, key, filename, why)
            return None
        if touch:  # a hit stays a read: recency is written with the next write or flush
            self._touched[_db_key(ns, key)] = time.time()
        return value

    def _drop(self, cache: diskcache.Cache, rowid: int, ns: str, key: str, filename: str | None,
              why: str) -> None:
        log.warning("cache store: entry %s/%s is corrupt (%s); removed (it is made again when needed)",
                    ns, key, why)
        try:
            with cache.transact():
                cache._sql("DELETE FROM Cache WHERE rowid = ? AND key = ? AND filename IS ?",
                           (rowid, _db_key(ns, key), filename))
        except (sqlite3.OperationalError, diskcache.Timeout) as exc:
            log.debug("cache store: corrupt entry %s not removed (%s)", key, exc)
            return
        cache.disk.remove(filename)

    def _write(self, cache: diskcache.Cache, ns: str, key: str, data: bytes,
               only_if_absent: bool = False) -> bool:
        spec = self._ns(ns)
        dbkey = _db_key(ns, key)
        evicted: list[str | None] = []
        with cache.transact():
            self._db_touch(cache)  # eviction below sees this process's reads
            if only_if_absent and cache._sql("SELECT 1 FROM Cache WHERE key = ? AND raw = 1",
                                             (dbkey,)).fetchone():
                return False
            cache.set(dbkey, data, tag=ns)
            if spec.bounded:
                row = cache._sql("SELECT entries FROM EditxNamespace WHERE tag = ?", (ns,)).fetchone()
                extra = (row[0] if row else 0) - spec.max_entries
                if extra > 0:
                    evicted = self._delete_rows(cache, cache._sql(
                        "SELECT rowid, filename FROM Cache INDEXED BY EditxTagAccess"
                        " WHERE tag = ? AND key != ? ORDER BY access_time LIMIT ?",
                        (ns, dbkey, extra)).fetchall())
        for filename in evicted:
            cache.disk.remove(filename)
        if spec.bounded:
            self._enforce_budget(cache, dbkey)
        return True

    def _merge(self, cache: diskcache.Cache, ns: str, key: str, fields: Mapping) -> dict | None:
        with cache.transact():  # read-modify-write atomic across processes
            value = self._read(cache, ns, key, touch=False)
            if value is None:
                return None
            value = merged(value, fields)
            cache.set(_db_key(ns, key), encode_value(value), tag=ns)
        if self._ns(ns).bounded:
            self._enforce_budget(cache, _db_key(ns, key))
        return value

    @staticmethod
    def _delete_rows(cache: diskcache.Cache, rows: list[tuple]) -> list[str | None]:
        if rows:
            cache._sql(f"DELETE FROM Cache WHERE rowid IN ({','.join(str(int(r[0])) for r in rows)})")
        return [r[1] for r in rows]

    def _clear(self, cache: diskcache.Cache, ns: str) -> dict:
        removed = {"entries": 0, "bytes": 0}
        while True:
            with cache.transact():
                rows = cache._sql("SELECT rowid, filename, size + COALESCE(length(value), 0) FROM Cache"
                                  " WHERE tag = ? LIMIT 500", (ns,)).fetchall()
                self._delete_rows(cache, rows)
            for _, filename, _ in rows:
                cache.disk.remove(filename)
            removed["entries"] += len(rows)
            removed["bytes"] += sum(int(r[2] or 0) for r in rows)
            if not rows:
                break
        self._checkpoint(cache)
        return removed

    def _namespace_stat(self, ns: str, column: str) -> int:
        self._ns(ns)
        with self._lock:
            found = self._on_disk(lambda c: c._sql(f"SELECT {column} FROM EditxNamespace WHERE tag = ?",
                                                   (ns,)).fetchone(), write=False)
            on_disk = int(found[0]) if found not in (_FAILED, None) else 0
            extra = self._overlay.count(ns) if column == "entries" else self._overlay.size(ns)
            return on_disk + extra

    def _usage(self, cache: diskcache.Cache) -> int:
        """Bytes under the budget: database pages (as committed), the shared-memory file, the WAL at
        its bound, the value files; less what is never evicted."""
        (pages,) = cache._sql("PRAGMA page_count").fetchone()
        return int(pages) * cache._page_size + self._wal_limit + self._outside_db(cache)

    def _folder_bytes(self, cache: diskcache.Cache, wal: int) -> int:
        """What the files take now (the database file shrinks only at checkpoints), kept values excluded."""
        return _file_size(self._db_path) + wal + self._outside_db(cache)

    def _outside_db(self, cache: diskcache.Cache) -> int:
        """Shared-memory file + value files - the values of every namespace not bounded here (the voice
        library and counters, declared in this process or not: they are never evicted)."""
        (values,) = cache._sql("SELECT value FROM Settings WHERE key = 'size'").fetchone()
        bounded = self._bounded_names()
        marks = ",".join("?" * len(bounded))
        (kept_bytes,) = cache._sql("SELECT COALESCE(SUM(bytes), 0) FROM EditxNamespace"
                                   f" WHERE tag NOT IN ({marks})", bounded).fetchone()
        return _file_size(self._shm_path) + int(values or 0) - int(kept_bytes or 0)

    def _checkpoint(self, cache: diskcache.Cache) -> None:
        """Fold the WAL into the database and truncate it (best effort: readers may hold it)."""
        try:
            cache._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError as exc:
            log.debug("cache store: checkpoint skipped (%s)", exc)

    def _enforce_budget(self, cache: diskcache.Cache, keep: str) -> None:
        """Evict least-recently-used entries of the bounded namespaces until the folder fits."""
        bounded = self._bounded_names()
        marks = ",".join("?" * len(bounded))
        evicted = 0
        for _ in range(BUDGET_ROUNDS):
            excess = self._usage(cache) - self.max_bytes
            if excess <= 0:
                break
            with cache.transact():
                rows = cache._sql(
                    "SELECT rowid, filename, size + COALESCE(length(value), 0) FROM Cache"
                    f" INDEXED BY Cache_access_time WHERE tag IN ({marks}) AND key != ?"
                    " ORDER BY access_time LIMIT ?", (*bounded, keep, EVICT_BATCH)).fetchall()
                take, freed = [], 0
                for row in rows:
                    take.append(row)
                    freed += int(row[2] or 0)
                    if freed >= excess:
                        break
                self._delete_rows(cache, take)
            for _, filename, _ in take:
                cache.disk.remove(filename)
            evicted += len(take)
            if not take:
                break
        wal = _file_size(self._wal_path)
        if wal > self._wal_limit or (evicted and self._folder_bytes(cache, wal) > self.max_bytes):
            self._checkpoint(cache)  # the freed pages leave the files at a checkpoint: only when needed
        if evicted:
            log.debug("cache store: evicted %d least-recently-used entries to fit %d bytes", evicted,
                      self.max_bytes)

    def _db_touch(self, cache: diskcache.Cache) -> None:
        """Write the buffered recency marks (never moving a mark back in time)."""
        if not self._touched:
            return
        marks, self._touched = self._touched, {}
        with cache.transact():
            cache._con.executemany("UPDATE Cache SET access_time = MAX(access_time, ?)"
                                   " WHERE key = ? AND raw = 1", [(t, k) for k, t in marks.items()])

    def _db_incr(self, cache: diskcache.Cache, amounts: Mapping[str, Number]) -> None:
        with cache.transact():
            for name, amount in amounts.items():
                dbkey = _db_key(COUNTERS, name)
                done = cache._sql("UPDATE Cache SET value = value + ? WHERE key = ? AND raw = 1 AND mode = ?"
                                  " AND typeof(value) IN ('integer', 'real')", (amount, dbkey, MODE_RAW))
                if done.rowcount == 0:
                    cache.set(dbkey, amount, tag=COUNTERS)

    def _db_counters(self, cache: diskcache.Cache) -> dict[str, Number]:
        out: dict[str, Number] = {}
        for key, mode, value in cache._sql("SELECT key, mode, value FROM Cache WHERE tag = ?",
                                           (COUNTERS,)).fetchall():
            number = parse_counter(value) if mode == MODE_RAW and isinstance(value, int | float) else None
            if number is not None:
                out[key[len(COUNTERS) + 1:]] = number
        return out

    def _db_delete_counters(self, cache: diskcache.Cache) -> None:
        with cache.transact():
            cache._sql("DELETE FROM Cache WHERE tag = ?", (COUNTERS,))
