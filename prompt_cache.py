"""Persistent prompt cache: tokenizer results (and later additions) keyed by the prepared reference clip.

Values are JSON objects stored as JSON strings in a diskcache ``Cache`` (SQLite index, LRU eviction),
bounded by entry count and by bytes on disk. The key is built by the tokenizer (``prompt_key``): a
SHA-256 of the prepared 16 kHz PCM and of the tokenizer fingerprint, so the same voice hits whatever
the file name, and other weights never return stale codes.

Failure policy: the cache must never fail an encode. A corrupt or unparseable entry is a miss and is
removed; a folder that cannot be opened or written (read-only, full disk, broken database) switches the
cache to an in-memory LRU with the same bounds, logged once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pickle
import sqlite3
import threading
from pathlib import Path

import numpy as np

from lru import LRU

log = logging.getLogger(__name__)

KEY_VERSION = "v1"  # bump when the meaning of a cached value changes
REQUIRED_FIELDS = ("vq02", "vq06")  # an entry without these is corrupt
SQLITE_TIMEOUT_S = 10  # how long a writer waits for another process holding the lock
ALIAS_DIR = "aliases"  # raw-input hash -> entry key, beside the entries (not counted as entries)
ALIAS_MAX_BYTES = 16 << 20  # ~100k aliases of ~150 bytes; diskcache evicts the least recently used
ALIAS_MEMORY_ENTRIES = 4096
MIB = 1 << 20  # --cache-max-mb counts these (settings.Settings.cache_max_bytes)


def prompt_key(pcm_16k: np.ndarray, fingerprint: str) -> str:
    """Cache key of a prepared clip: ``v1-<fingerprint[:16]>-<sha256 of the float32 PCM bytes>``.

    ``pcm_16k`` is the float32 (samples,) clip after prep; hashing the prepared PCM (not the file)
    makes equal voices hit across file names and formats.
    """
    digest = hashlib.sha256(np.ascontiguousarray(pcm_16k, dtype=np.float32).tobytes()).hexdigest()
    return f"{KEY_VERSION}-{fingerprint[:16]}-{digest}"


def encode_array(array: np.ndarray) -> dict:
    """A compact JSON form of an array (base64 of the raw bytes), for fields merged with ``update``.

    Float lists in JSON cost about 20 bytes and a parse per number; this keeps a hit in milliseconds.
    """
    a = np.ascontiguousarray(array)
    b64 = base64.b64encode(a.tobytes()).decode("ascii")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": b64}


def decode_array(obj: dict) -> np.ndarray:
    """Inverse of ``encode_array``."""
    raw = base64.b64decode(obj["b64"])
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()


class PromptCache:
    """Persistent LRU cache of prompt-encoding results, safe under threads and processes.

    ``directory`` None keeps everything in memory (``persistent`` False in ``stats``).
    """

    def __init__(self, directory: Path | None, max_entries: int = 2000, max_bytes: int = 1 << 30):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self.directory = Path(directory) if directory is not None else None
        self._lock = threading.RLock()
        self._memory: LRU[str, str] = LRU(self.max_entries, self.max_bytes, size_of=len)
        self._disk = None
        self._aliases = None
        self._memory_aliases: LRU[str, str] = LRU(ALIAS_MEMORY_ENTRIES)
        self._hits = 0
        self._misses = 0
        self._time_saved_s = 0.0
        if self.directory is not None:
            self._disk = self._open(self.directory)
            if self._disk is not None:
                self._aliases = self._open_aliases(self.directory / ALIAS_DIR)

    # -- public interface ----------------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        return self._disk is not None

    def get(self, key: str) -> dict | None:
        """The stored value, or None; counts a hit (adding its recorded encode time) or a miss."""
        with self._lock:
            text = self._read(key)
            value = self._parse(key, text) if text is not None else None
            if value is None:
                self._misses += 1
                return None
            self._hits += 1
            try:
                self._time_saved_s += float(value.get("encode_seconds") or 0.0)
            except (TypeError, ValueError):
                pass
            return value

    def put(self, key: str, value: dict) -> None:
        """Store ``value`` (JSON-serialisable, with at least vq02 and vq06) under ``key``."""
        text = json.dumps(value, separators=(",", ":"))
        with self._lock:
            self._write(key, text)

    def update(self, key: str, fields: dict) -> None:
        """Merge ``fields`` into the entry under ``key`` (no-op with a debug line if it is gone)."""
        with self._lock:
            if self._disk is not None:
                try:
                    with self._disk.transact():  # read-modify-write atomic across processes
                        text = self._disk.get(key, retry=True)
                        value = self._parse(key, text) if text is not None else None
                        if value is None:
                            log.debug("prompt cache: update of a missing entry %s ignored", key)
                            return
                        value.update(fields)
                        self._disk.set(key, json.dumps(value, separators=(",", ":")), retry=True)
                    self._enforce_bounds(keep=key)
                    return
                except (OSError, sqlite3.Error) as exc:
                    self._degrade(exc)
            text = self._memory.get(key)
            value = self._parse(key, text) if text is not None else None
            if value is None:
                return
            value.update(fields)
            self._memory.put(key, json.dumps(value, separators=(",", ":")))

    def stats(self) -> dict:
        """hits, misses, hit_rate, entries, bytes (on disk, or of the JSON in memory), time_saved_s,
        directory, persistent. Hit and miss counts are this process's since start-up."""
        with self._lock:
            entries, size = len(self._memory), self._memory.bytes
            if self._disk is not None:
                try:
                    entries, size = len(self._disk), int(self._disk.volume())
                except (OSError, sqlite3.Error) as exc:
                    self._degrade(exc)
                    entries, size = len(self._memory), self._memory.bytes
            total = self._hits + self._misses
            return {
                "hits": self._hits,
                "misses": self._misses,
                "hit_rate": self._hits / total if total else 0.0,
                "entries": entries,
                "bytes": size,
                "time_saved_s": round(self._time_saved_s, 6),
                "directory": str(self.directory) if self.directory is not None else None,
                "persistent": self.persistent,
            }

    def alias_get(self, alias: str) -> str | None:
        """The entry key recorded for ``alias`` (a hash of a raw input + the model fingerprint), or None.

        Aliases let a repeated upload skip resampling and trimming, also after a restart; the key
        itself stays defined on the prepared 16 kHz PCM. Not counted as a hit or a miss.
        """
        with self._lock:
            if self._aliases is not None:
                try:
                    key = self._aliases.get(alias, default=None, retry=True)
                    return key if isinstance(key, str) else None
                except (OSError, sqlite3.Error, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
                    self._drop_aliases()  # aliases are only a shortcut: fall back to memory silently
            return self._memory_aliases.get(alias)

    def alias_put(self, alias: str, key: str) -> None:
        """Record that the raw input ``alias`` prepares to the entry ``key``."""
        with self._lock:
            if self._aliases is not None:
                try:
                    self._aliases.set(alias, key, retry=True)
                    return
                except (OSError, sqlite3.Error):
                    self._drop_aliases()
            self._memory_aliases.put(alias, key)

    def clear(self) -> None:
        """Remove every entry (on disk too) and reset the counters."""
        with self._lock:
            self._memory.clear()
            self._memory_aliases.clear()
            if self._aliases is not None:
                try:
                    self._aliases.clear(retry=True)
                except (OSError, sqlite3.Error):
                    self._drop_aliases()
            if self._disk is not None:
                try:
                    self._disk.clear(retry=True)
                except (OSError, sqlite3.Error) as exc:
                    self._degrade(exc)
            self._hits = self._misses = 0
            self._time_saved_s = 0.0

    def close(self) -> None:
        """Close the database handles (the cache stays usable; diskcache reopens on demand)."""
        with self._lock:
            for store in (self._disk, self._aliases):
                if store is not None:
                    store.close()

    # -- internals -----------------------------------------------------------------------------------

    def _open(self, directory: Path):
        import diskcache

        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not os.access(directory, os.W_OK):
                raise PermissionError(f"{directory} is not writable")
            disk = diskcache.Cache(
                str(directory),
                size_limit=self.max_bytes,
                eviction_policy="least-recently-used",
                cull_limit=0,  # eviction is ours (_enforce_bounds): diskcache culls 10 at once
                timeout=SQLITE_TIMEOUT_S,
                statistics=False,
            )
            disk.set("__probe__", "1")  # fails here, not at the first encode, if the folder is unwritable
            disk.delete("__probe__")
            log.info("prompt cache: %s (%d entries, %.1f MiB, limits %d entries / %.0f MiB)", directory,
                     len(disk), disk.volume() / MIB, self.max_entries, self.max_bytes / MIB)
            return disk
        except (OSError, sqlite3.Error) as exc:
            self._warn_memory(exc)
            return None

    def _open_aliases(self, directory: Path):
        import diskcache

        try:
            return diskcache.Cache(str(directory), size_limit=ALIAS_MAX_BYTES,
                                   eviction_policy="least-recently-used", timeout=SQLITE_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            log.info("prompt cache: raw-input aliases kept in memory (%s)", exc)
            return None

    def _warn_memory(self, exc: BaseException) -> None:
        log.warning("prompt cache: cannot use %s (%s); keeping prompts in memory only for this run "
                    "(they will be encoded again after a restart). Point --cache-dir to a writable "
                    "folder to persist them.", self.directory, exc)

    def _degrade(self, exc: BaseException) -> None:
        """Switch to memory after a disk failure (one warning), keeping the process running."""
        if self._disk is None:
            return
        self._warn_memory(exc)
        _close_quietly(self._disk)
        self._disk = None
        self._drop_aliases()

    def _drop_aliases(self) -> None:
        """Keep aliases in memory from now on, closing the alias database."""
        _close_quietly(self._aliases)
        self._aliases = None

    def _read(self, key: str) -> str | None:
        if self._disk is not None:
            try:
                text = self._disk.get(key, default=None, retry=True)
            except (UnicodeDecodeError, EOFError, pickle.UnpicklingError) as exc:
                return self._drop(key, f"unreadable ({exc})")
            except (OSError, sqlite3.Error) as exc:
                self._degrade(exc)
                return self._memory.get(key)
            return text if isinstance(text, str) or text is None else self._drop(key, "not a string")
        return self._memory.get(key)

    def _write(self, key: str, text: str) -> None:
        if self._disk is not None:
            try:
                self._disk.set(key, text, retry=True)
                self._enforce_bounds(keep=key)
                return
            except (OSError, sqlite3.Error) as exc:
                self._degrade(exc)
        self._memory.put(key, text)

    def _parse(self, key: str, text: str) -> dict | None:
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as exc:
            return self._drop(key, f"not JSON ({exc})")
        if not isinstance(value, dict) or any(not isinstance(value.get(f), list) for f in REQUIRED_FIELDS):
            return self._drop(key, "missing vq02/vq06")
        return value

    def _drop(self, key: str, why: str) -> None:
        log.warning("prompt cache: entry %s is corrupt (%s); removed, it will be encoded again", key, why)
        if self._disk is not None:
            try:
                self._disk.delete(key, retry=True)
            except (OSError, sqlite3.Error) as exc:
                self._degrade(exc)
        self._memory.pop(key)
        return None

    def _enforce_bounds(self, keep: str) -> None:
        """Evict least-recently-used entries until both bounds hold (the entry just written stays).

        diskcache keeps the LRU order in its SQLite ``Cache`` table (``access_time``, refreshed on
        every get under the least-recently-used policy) but has no public call to evict by count, and
        its own cull removes 10 rows at once (the new one included), so eviction is done here.
        """
        evicted = 0
        while True:
            count = len(self._disk)
            if count <= 1 or (count <= self.max_entries and self._disk.volume() <= self.max_bytes):
                break
            row = self._disk._sql("SELECT key FROM Cache WHERE key != ? ORDER BY access_time LIMIT 1",
                                  (keep,)).fetchone()
            if row is None:
                break
            self._disk.delete(row[0], retry=True)
            evicted += 1
        if evicted:
            log.debug("prompt cache: evicted %d least-recently-used entries", evicted)


def _close_quietly(store) -> None:
    """Close a diskcache handle that failed (nothing more to report if closing fails too)."""
    if store is None:
        return
    try:
        store.close()
    except Exception:  # noqa: BLE001 - the handle is already broken
        pass


def open_prompt_cache(directory: Path | None, max_entries: int, max_bytes: int) -> PromptCache:
    """The persistent prompt cache; an unusable folder degrades to an in-memory cache (logged)."""
    try:
        cache = PromptCache(Path(directory) if directory else None, max_entries=max_entries,
                            max_bytes=max_bytes)
    except Exception as exc:  # unwritable or corrupt folder: keep serving, just without persistence
        log.warning("prompt cache at %s is not usable (%s); using an in-memory cache for this run",
                    directory, exc)
        cache = PromptCache(None, max_entries=max_entries, max_bytes=max_bytes)
    if not cache.persistent:  # a persistent cache logs its folder, size and limits when it opens
        log.info("prompt cache: in memory only (limits %d entries / %.0f MiB)", max_entries, max_bytes / MIB)
    return cache
