"""``DiskStore``: the embedded backend, one diskcache database (SQLite + value files) in a folder.

The row layout and the SQL operations on it (entries, counters, the byte budget) are in
storage/disk_rows.py; opening the database file and moving a damaged one aside in
storage/disk_folder.py; the diskcache ``Disk`` that never unpickles in storage/safe_disk.py. This
module is the store: it routes each call to the disk or the memory overlay and keeps it working when
the folder misbehaves.

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
  the kept namespaces (voice library) are subtracted, as they are never evicted (``disk_rows.Budget``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import diskcache
from diskcache.core import DBNAME

from storage import disk_folder, disk_rows
from storage.base import MAX_PENDING, Number, Store, encode_value, merged
from storage.disk_folder import close_quietly, is_corrupt
from storage.memory import MemoryStore

log = logging.getLogger(__name__)

DISK_RETRY_S = 30.0  # after a failed write, how long writes stay in memory before the disk is tried again
WAL_MIN, WAL_MAX = 64 << 10, 4 << 20  # bounds of the write-ahead log allowance (1/8 of the budget)
_FAILED = object()
T = TypeVar("T")


class DiskStore(Store):
    """Store in one folder, shared by every thread and process that opens it (see the module doc)."""

    backend = "disk"

    def __init__(self, directory: Path, max_bytes: int):
        super().__init__(max_bytes)
        self.directory = Path(directory)
        self._db_path = self.directory / DBNAME
        self._db_str = str(self._db_path)
        self._lock = threading.RLock()
        self._overlay = MemoryStore(max_bytes)  # writes that the disk refused
        self._cache: diskcache.Cache | None = None
        self._db_id: tuple[int, int] | None = None
        self._degraded: str | None = None  # None, or why writes go to memory
        self._retry_at = 0.0
        wal_limit = min(WAL_MAX, max(WAL_MIN, self.max_bytes // 8))
        self._budget = disk_rows.Budget(self._db_str, self.max_bytes, wal_limit)
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
            found = self._on_disk(lambda c: disk_rows.read(c, ns, key), write=False)
            if spec.bounded and isinstance(found, dict):
                # a hit stays a read: recency is written with the next write or flush
                self._touched[disk_rows.db_key(ns, key)] = time.time()
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
            on_disk = self._on_disk(lambda c: c.delete(disk_rows.db_key(ns, key)), write=True)
            return in_memory or (on_disk is not _FAILED and bool(on_disk))

    def keys(self, ns: str) -> list[str]:
        self._ns(ns)
        with self._lock:
            found = self._on_disk(lambda c: disk_rows.keys(c, ns), write=False)
            on_disk = [] if found is _FAILED else found
            seen = set(on_disk)
            return on_disk + [k for k in self._overlay.keys(ns) if k not in seen]

    def clear(self, ns: str) -> dict:
        self._ns(ns)
        with self._lock:
            removed = self._overlay.clear(ns)
            done = self._on_disk(lambda c: disk_rows.clear(c, ns), write=True)
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
            found = self._on_disk(lambda c: self._budget.folder_bytes(c, self._bounded_names()), write=False)
            return self._overlay.usage() + (0 if found is _FAILED else found)

    # -- counters --------------------------------------------------------------------------------

    def _write_counters(self, amounts: Mapping[str, Number]) -> None:
        with self._lock:
            if self._on_disk(lambda c: disk_rows.incr(c, amounts), write=True) is _FAILED:
                self._overlay.incr_many(amounts)

    def _read_counters(self) -> dict[str, Number]:
        with self._lock:
            found = self._on_disk(disk_rows.counters, write=False)
            on_disk = {} if found is _FAILED else found
            for name, value in self._overlay.counters().items():
                on_disk[name] = on_disk.get(name, 0) + value
            return on_disk

    def _clear_counters(self) -> dict[str, Number]:
        with self._lock:
            old = self._read_counters()
            self._overlay.reset_counters()
            self._on_disk(disk_rows.delete_counters, write=True)
            return old

    def has_buffered(self) -> bool:
        return bool(self._touched) or super().has_buffered()

    def flush(self) -> None:
        """Write the buffered recency marks and counter increments."""
        with self._lock:
            touched = self._touched
            if touched and self._on_disk(lambda c: disk_rows.touch(c, touched), write=True) is _FAILED:
                touched.clear()  # recency is best effort: not kept while the disk refuses writes
        super().flush()

    # -- state -----------------------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        """True while new entries reach the disk."""
        return self._cache is not None and self._degraded is None

    def status(self) -> dict:
        with self._lock:
            return {
                "backend": self.backend,
                "location": f"disk: cache folder '{self.directory.name}'",
                "persistent": self.persistent,
                "connected": self._cache is not None,
                "fallback": "memory" if self._degraded else None,
                "degraded": self._degraded,
            }

    def _close(self) -> None:
        with self._lock:
            close_quietly(self._cache)

    # -- opening, damage and failures ------------------------------------------------------------

    def _open(self) -> bool:
        """Open (or create) the database; False and memory-only writes when that is impossible."""
        for attempt in (0, 1):
            cache = None
            try:
                cache = disk_folder.open_cache(self.directory, self.max_bytes, self._budget.wal_limit)
                st = self._db_path.stat()
            except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
                close_quietly(cache)
                if attempt == 0 and is_corrupt(exc):
                    disk_folder.quarantine(self.directory, exc)
                    continue
                self._cache = None
                self._memory_only(exc)
                return False
            self._cache, self._db_id = cache, (st.st_dev, st.st_ino)
            counted = self._budget.counted(cache, self._bounded_names())
            log.info(
                "cache store: %s (%d entries, %.1f MiB counted, budget %.1f MiB)",
                self.directory,
                len(cache),
                counted / (1 << 20),
                self.max_bytes / (1 << 20),
            )
            if self._degraded is not None:
                self._replay_overlay()
            return True
        return False

    def _memory_only(self, exc: BaseException) -> None:
        if self._degraded is None:
            log.warning(
                "cache store: cannot use %s (%s); keeping entries in memory only for this run "
                "(they are made again after a restart). Point --cache-dir to a writable folder to "
                "persist them.",
                self.directory,
                exc,
            )
        self._degraded = f"memory only: the cache folder cannot be used ({type(exc).__name__})"
        self._retry_at = time.monotonic() + DISK_RETRY_S

    def _writes_failed(self, exc: BaseException) -> None:
        if self._degraded is None:
            log.warning(
                "cache store: writing to %s failed (%s); new entries are kept in memory (entries "
                "already on disk are still read) and the disk is tried again every %.0f s. Free "
                "space or make the folder writable.",
                self.directory,
                exc,
                DISK_RETRY_S,
            )
        self._degraded = f"read-only: writes kept in memory ({type(exc).__name__})"
        self._retry_at = time.monotonic() + DISK_RETRY_S

    def _replay_overlay(self) -> None:
        """The disk takes writes again: move what the overlay holds onto it."""
        log.info(
            "cache store: %s is writable again; writing %d entries kept in memory back to it",
            self.directory,
            sum(self._overlay.count(n) for n in self._namespaces),
        )
        self._degraded = None
        cache = self._cache
        try:
            for name in self._namespaces:
                for key, value in self._overlay.items(name):
                    self._write(cache, name, key, encode_value(value))
                self._overlay.clear(name)
            disk_rows.incr(cache, self._overlay.counters())
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
                log.warning(
                    "cache store: the database in %s was deleted or replaced while running; recreating it",
                    self.directory,
                )
                close_quietly(self._cache)
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
                if attempt == 0 and is_corrupt(exc):
                    close_quietly(cache)
                    self._cache = None
                    disk_folder.quarantine(self.directory, exc)
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

    # -- database operations that also need the store's namespaces (under the lock) --------------

    def _write(
        self, cache: diskcache.Cache, ns: str, key: str, data: bytes, only_if_absent: bool = False
    ) -> bool:
        spec = self._ns(ns)
        if not disk_rows.write(cache, ns, key, data, spec.max_entries, self._touched, only_if_absent):
            return False
        if spec.bounded:
            self._budget.enforce(cache, self._bounded_names(), disk_rows.db_key(ns, key))
        return True

    def _merge(self, cache: diskcache.Cache, ns: str, key: str, fields: Mapping) -> dict | None:
        value = disk_rows.merge(cache, ns, key, fields)
        if value is not None and self._ns(ns).bounded:
            self._budget.enforce(cache, self._bounded_names(), disk_rows.db_key(ns, key))
        return value

    def _namespace_stat(self, ns: str, column: str) -> int:
        self._ns(ns)
        with self._lock:
            found = self._on_disk(lambda c: disk_rows.namespace_stat(c, ns, column), write=False)
            on_disk = 0 if found is _FAILED else found
            extra = self._overlay.count(ns) if column == "entries" else self._overlay.size(ns)
            return on_disk + extra
