"""``MemoryStore``: the in-process backend (``--cache-dir none``, and the fallback of the others).

Same semantics as the persistent backends, for one process only: bytes are the lengths of the JSON
values; the byte budget evicts the least recently used entry across all bounded namespaces.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping

from storage.base import Number, Store, decode_value, encode_value, merged

log = logging.getLogger(__name__)


class MemoryStore(Store):
    """Bounded in-memory store (nothing persists; ``persistent`` False)."""

    backend = "memory"
    counter_flush_s = 0.0  # in-process counters: nothing to write behind

    def __init__(self, max_bytes: int, location: str = "memory"):
        super().__init__(max_bytes)
        self.location = location
        self._lock = threading.RLock()
        self._tick = itertools.count()
        self._data: dict[str, OrderedDict[str, tuple[int, bytes]]] = {}  # ns -> key -> (tick, JSON)
        self._bytes: dict[str, int] = {}
        self._counters: dict[str, Number] = {}

    def _table(self, ns: str) -> OrderedDict[str, tuple[int, bytes]]:
        self._ns(ns)
        return self._data.setdefault(ns, OrderedDict())

    # -- entries ---------------------------------------------------------------------------------

    def get(self, ns: str, key: str) -> dict | None:
        with self._lock:
            table = self._table(ns)
            item = table.get(key)
            if item is None:
                return None
            value = decode_value(item[1])
            if value is None:  # cannot happen through put; kept for the shared contract
                self._remove(ns, key)
                return None
            if self._ns(ns).bounded:
                table[key] = (next(self._tick), item[1])
                table.move_to_end(key)
            return value

    def put(self, ns: str, key: str, value: Mapping) -> None:
        self._check_key(key)
        data = encode_value(value)
        with self._lock:
            self._store(ns, key, data)

    def add(self, ns: str, key: str, value: Mapping) -> bool:
        self._check_key(key)
        data = encode_value(value)
        with self._lock:
            if key in self._table(ns):
                return False
            self._store(ns, key, data)
            return True

    def update(self, ns: str, key: str, fields: Mapping) -> dict | None:
        with self._lock:
            item = self._table(ns).get(key)
            value = decode_value(item[1]) if item is not None else None
            if value is None:
                return None
            value = merged(value, fields)
            self._store(ns, key, encode_value(value))
            return value

    def delete(self, ns: str, key: str) -> bool:
        with self._lock:
            self._table(ns)
            return self._remove(ns, key) is not None

    def keys(self, ns: str) -> list[str]:
        with self._lock:
            return list(self._table(ns))

    def clear(self, ns: str) -> dict:
        with self._lock:
            table = self._table(ns)
            removed = {"entries": len(table), "bytes": self._bytes.get(ns, 0)}
            table.clear()
            self._bytes[ns] = 0
            return removed

    def count(self, ns: str) -> int:
        with self._lock:
            return len(self._table(ns))

    def size(self, ns: str) -> int:
        with self._lock:
            self._table(ns)
            return self._bytes.get(ns, 0)

    def usage(self) -> int:
        """Bytes of the JSON values of the bounded namespaces."""
        with self._lock:
            return sum(self._bytes.get(name, 0) for name in self._bounded_names())

    def items(self, ns: str) -> list[tuple[str, dict]]:
        """Every (key, value) of ``ns``, oldest first (used to replay an overlay onto a backend)."""
        with self._lock:
            return [
                (k, v) for k, (_, data) in self._table(ns).items() if (v := decode_value(data)) is not None
            ]

    # -- counters --------------------------------------------------------------------------------

    def _write_counters(self, amounts: Mapping[str, Number]) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counters[name] = self._counters.get(name, 0) + amount

    def _read_counters(self) -> dict[str, Number]:
        with self._lock:
            return dict(self._counters)

    def _clear_counters(self) -> dict[str, Number]:
        with self._lock:
            old, self._counters = self._counters, {}
            return old

    def _close(self) -> None:
        """Nothing to release."""

    def status(self) -> dict:
        return {
            "backend": self.backend,
            "location": self.location,
            "persistent": False,
            "connected": True,
            "fallback": None,
            "degraded": None,
        }

    # -- internals -------------------------------------------------------------------------------

    def _store(self, ns: str, key: str, data: bytes) -> None:
        table = self._table(ns)
        self._remove(ns, key)
        table[key] = (next(self._tick), data)
        self._bytes[ns] = self._bytes.get(ns, 0) + len(data)
        spec = self._ns(ns)
        if not spec.bounded:
            return
        while len(table) > spec.max_entries:
            self._remove(ns, next(iter(table)))
        while self.usage() > self.max_bytes:
            victim = self._oldest(keep=(ns, key))
            if victim is None:
                break
            self._remove(*victim)

    def _oldest(self, keep: tuple[str, str]) -> tuple[str, str] | None:
        """The least recently used (namespace, key) among the bounded namespaces, except ``keep``."""
        best: tuple[int, str, str] | None = None
        for name in self._bounded_names():
            table = self._data.get(name)
            if not table:
                continue
            key, (tick, _) = next(iter(table.items()))
            if (name, key) == keep:  # the newest entry is at the end: alone in its namespace
                continue
            if best is None or tick < best[0]:
                best = (tick, name, key)
        return None if best is None else (best[1], best[2])

    def _remove(self, ns: str, key: str) -> bytes | None:
        item = self._data.get(ns, {}).pop(key, None)
        if item is None:
            return None
        self._bytes[ns] -= len(item[1])
        return item[1]
