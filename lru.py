"""``LRU``: the one bounded, thread-safe, least-recently-used map of the app (memos and fallbacks).

    memo = LRU(max_entries=16)                       # count bound only
    store = LRU(max_entries=2000, max_bytes=1 << 30, size_of=len)   # count and byte bounds

Reading an entry makes it the most recently used; writing evicts from the least recently used
end until both bounds hold (the entry just written is kept even when it alone exceeds the bytes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A dict bounded by ``max_entries`` and, with ``size_of``, by ``max_bytes``; safe across threads."""

    def __init__(
        self, max_entries: int, max_bytes: int | None = None, size_of: Callable[[V], int] | None = None
    ):
        if max_entries < 1 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("LRU bounds must be positive")
        if max_bytes is not None and size_of is None:
            raise ValueError("a byte bound needs size_of")
        self.max_entries = int(max_entries)
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._items: OrderedDict[K, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._pop(key)
            self._items[key] = value
            self._bytes += self._size(value)
            while len(self._items) > 1 and (len(self._items) > self.max_entries or self._over_bytes()):
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size(old)

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._pop(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        """Sum of ``size_of`` over the entries (0 without ``size_of``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def _pop(self, key: K) -> V | None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= self._size(old)
        return old

    def _size(self, value: V) -> int:
        return self._size_of(value) if self._size_of is not None else 0

    def _over_bytes(self) -> bool:
        return self.max_bytes is not None and self._bytes > self.max_bytes
