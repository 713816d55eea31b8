"""The storage interface: a key-value store of JSON objects in namespaces, with shared counters.

    store = open_store(directory=Path("cache/funasr"), max_bytes=1 << 30)      # or url="redis://..."
    store.namespace("prompts", max_entries=2000)    # bounded: least-recently-used eviction
    store.namespace("voices")                       # kept: never evicted, outside the byte budget
    store.put("prompts", key, {"vq02": [...], "vq06": [...]})
    store.get("prompts", key)                       # the dict, or None (a read refreshes recency)
    store.incr_many({"hits": 1, "time_saved_s": 2.5})

Every backend has the same semantics: values are JSON objects (dicts), stored as JSON text and never
unpickled; bounded namespaces evict their least recently used entries past their own entry bound and
past the store's byte budget (``max_bytes``, shared by all bounded namespaces); kept namespaces are
never evicted; counters are shared by every process using the store (written behind: increments reach
the store within ``COUNTER_FLUSH_S`` even when the process is idle (a background thread),
and at once on ``counters``, ``flush``, ``close`` and exit); a
value that does not parse is a miss and is removed.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

NAMESPACE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
COUNTERS = "counters"  # reserved: the namespace-like home of the shared counters
MAX_KEY_CHARS = 1024
COUNTER_FLUSH_S = 1.0  # counter increments are written behind, at most this late (and on read/close/exit)
MAX_PENDING = 256  # pending counter names (or recency marks) that force a write

Number = int | float
_WRITE_BEHIND: weakref.WeakSet = weakref.WeakSet()  # stores with buffered increments, flushed at exit


_flusher_lock = threading.Lock()
_flusher: threading.Thread | None = None


def _flush_loop() -> None:
    """Background: write buffered increments of idle stores, so other processes see them in time."""
    while True:
        time.sleep(COUNTER_FLUSH_S / 2)
        for store in list(_WRITE_BEHIND):
            try:
                if store.has_buffered() and store._flush_due():
                    store.flush()
            except Exception as exc:  # noqa: BLE001 - retried next round; a request will surface it
                log.debug("storage: background flush failed (%s)", exc)


def _start_flusher() -> None:
    global _flusher
    with _flusher_lock:
        if _flusher is None or not _flusher.is_alive():
            _flusher = threading.Thread(target=_flush_loop, name="store-flush", daemon=True)
            _flusher.start()


@atexit.register
def _flush_at_exit() -> None:
    for store in list(_WRITE_BEHIND):
        try:
            store.flush()
        except Exception as exc:  # noqa: BLE001 - the process is ending; nothing else to do with it
            log.debug("storage: counters not written at exit (%s)", exc)


@dataclass(frozen=True)
class Namespace:
    """A named part of a store.

    ``max_entries`` bounds a namespace by count with least-recently-used eviction, and its entries
    also count against the store's byte budget. None: a kept namespace (never evicted, not counted
    against the byte budget), e.g. the voice library.
    """

    name: str
    max_entries: int | None = None

    @property
    def bounded(self) -> bool:
        return self.max_entries is not None


def encode_value(value: Mapping) -> bytes:
    """The stored form of a value: compact JSON text (ASCII) of a dict."""
    if not isinstance(value, Mapping):
        raise TypeError(f"store values are JSON objects (dicts), got {type(value).__name__}")
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def decode_value(data: bytes | str | None) -> dict | None:
    """Inverse of ``encode_value``; None when ``data`` is not the JSON text of an object."""
    if not isinstance(data, bytes | str):
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def merged(value: dict, fields: Mapping) -> dict:
    """``value`` with ``fields`` merged in (top-level keys replaced), as ``Store.update`` stores it."""
    out = dict(value)
    out.update(fields)
    return out


class Store(ABC):
    """Key-value store of JSON objects in declared namespaces, plus shared numeric counters.

    Thread-safe. ``max_bytes`` is the byte budget shared by the bounded namespaces (how a backend
    measures bytes is in its docstring). Subclasses implement the abstract methods; namespaces are
    declared with ``namespace`` before use (the same declaration in every process sharing the store).
    """

    backend: str = ""
    counter_flush_s: float = COUNTER_FLUSH_S  # 0: counters are written at once

    def __init__(self, max_bytes: int):
        if int(max_bytes) < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = int(max_bytes)
        self._namespaces: dict[str, Namespace] = {}
        self._pending: dict[str, Number] = {}
        self._pending_lock = threading.Lock()
        self._flushed_at = time.monotonic()
        if self.counter_flush_s > 0:
            _WRITE_BEHIND.add(self)
            _start_flusher()

    # -- namespaces ------------------------------------------------------------------------------

    def namespace(self, name: str, max_entries: int | None = None) -> Namespace:
        """Declare (or re-declare with new bounds) the namespace ``name``; returns it."""
        if not NAMESPACE_PATTERN.match(name) or name == COUNTERS:
            raise ValueError(
                f"bad namespace name {name!r}: lowercase letters, digits, '_' (and not {COUNTERS!r})"
            )
        if max_entries is not None and int(max_entries) < 1:
            raise ValueError("max_entries must be positive (or None for a kept namespace)")
        ns = Namespace(name, None if max_entries is None else int(max_entries))
        self._namespaces[name] = ns
        return ns

    @property
    def namespaces(self) -> dict[str, Namespace]:
        return dict(self._namespaces)

    def _ns(self, name: str) -> Namespace:
        try:
            return self._namespaces[name]
        except KeyError:
            raise KeyError(f"namespace {name!r} is not declared on this store") from None

    def _bounded_names(self) -> list[str]:
        return sorted(n for n, ns in self._namespaces.items() if ns.bounded)

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise ValueError(f"store keys are non-empty strings of at most {MAX_KEY_CHARS} characters")

    # -- entries ---------------------------------------------------------------------------------

    @abstractmethod
    def get(self, ns: str, key: str) -> dict | None:
        """The value under ``key``, or None; refreshes its recency in a bounded namespace."""

    def get_many(self, ns: str, keys: Iterable[str]) -> dict[str, dict]:
        """{key: value} of the keys that are present (recency refreshed like ``get``)."""
        out = {}
        for key in keys:
            value = self.get(ns, key)
            if value is not None:
                out[key] = value
        return out

    @abstractmethod
    def put(self, ns: str, key: str, value: Mapping) -> None:
        """Store ``value`` under ``key`` (replacing it), then evict past the bounds (never ``key``)."""

    @abstractmethod
    def add(self, ns: str, key: str, value: Mapping) -> bool:
        """Store ``value`` only if ``key`` is absent (atomic across processes); True if stored."""

    @abstractmethod
    def update(self, ns: str, key: str, fields: Mapping) -> dict | None:
        """Merge ``fields`` into the value under ``key`` atomically; the new value, or None if absent."""

    @abstractmethod
    def delete(self, ns: str, key: str) -> bool:
        """Remove ``key``; True if it was there."""

    @abstractmethod
    def keys(self, ns: str) -> list[str]:
        """Every key of ``ns`` (meant for kept namespaces such as the voice library)."""

    @abstractmethod
    def clear(self, ns: str) -> dict:
        """Remove every entry of ``ns``; returns {"entries": removed, "bytes": their value bytes}."""

    @abstractmethod
    def count(self, ns: str) -> int:
        """Number of entries in ``ns``."""

    @abstractmethod
    def size(self, ns: str) -> int:
        """Bytes of the JSON values in ``ns``."""

    @abstractmethod
    def usage(self) -> int:
        """Bytes counted against ``max_bytes`` (see the backend for what it counts)."""

    # -- counters --------------------------------------------------------------------------------

    def incr(self, name: str, amount: Number = 1) -> None:
        """Add ``amount`` (int or float) to the shared counter ``name`` (created at 0)."""
        self.incr_many({name: amount})

    def incr_many(self, amounts: Mapping[str, Number]) -> None:
        """Add each amount to its counter (written behind: see the module doc)."""
        amounts = {name: amount for name, amount in amounts.items() if amount}
        if not amounts:
            return
        if self.counter_flush_s <= 0:
            self._write_counters(amounts)
            return
        with self._pending_lock:
            for name, amount in amounts.items():
                self._pending[name] = self._pending.get(name, 0) + amount
            due = len(self._pending) > MAX_PENDING
        if due or self._flush_due():
            self.flush()

    def counters(self) -> dict[str, Number]:
        """Every counter: {name: value}; ints stay ints. Includes this process's pending increments."""
        self.flush()
        return self._read_counters()

    def reset_counters(self) -> dict[str, Number]:
        """Remove every counter; returns the values they had."""
        self.flush()
        return self._clear_counters()

    def flush(self) -> None:
        """Write what is buffered (counter increments; a backend may add its own) to the store now."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            self._flushed_at = time.monotonic()
        if pending:
            self._write_counters(pending)

    def has_buffered(self) -> bool:
        """True while something waits to be written (a backend adds its own buffers)."""
        return bool(self._pending)

    def _flush_due(self) -> bool:
        return time.monotonic() - self._flushed_at >= self.counter_flush_s

    @abstractmethod
    def _write_counters(self, amounts: Mapping[str, Number]) -> None:
        """Add the amounts to the stored counters, in one step."""

    @abstractmethod
    def _read_counters(self) -> dict[str, Number]:
        """The stored counters."""

    @abstractmethod
    def _clear_counters(self) -> dict[str, Number]:
        """Remove the stored counters; their values before."""

    # -- state -----------------------------------------------------------------------------------

    @abstractmethod
    def status(self) -> dict:
        """For /health: backend, location (redacted), persistent, connected, fallback, degraded."""

    def close(self) -> None:
        """Write what is buffered and release connections (they reopen on the next call where possible)."""
        self.flush()
        self._close()

    @abstractmethod
    def _close(self) -> None:
        """Release the backend's connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_counter(raw: bytes | str | Number) -> Number | None:
    """A counter read back from a backend: int when it is whole text, else float; None if garbage."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return raw
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def add_counters(total: dict[str, Number], more: Mapping[str, Number]) -> dict[str, Number]:
    """``total`` plus ``more`` (by name), for overlays and fallbacks."""
    out = dict(total)
    for name, value in more.items():
        out[name] = out.get(name, 0) + value
    return out
