"""Storage for the prompt cache, the voice library and the shared counters: one interface, three backends.

    store = open_store(directory, max_bytes, url=None)   # RedisStore | DiskStore | MemoryStore

``Store`` (storage.base) is the interface; ``DiskStore`` (diskcache folder, default), ``RedisStore``
(several replicas) and ``MemoryStore`` (``--cache-dir none``, and the fallback of the other two)
implement it with the same semantics. docs/STORAGE.md describes them.
"""

from __future__ import annotations

from pathlib import Path

from errors import OptionsError
from storage.base import COUNTERS, Namespace, Store
from storage.disk import DiskStore
from storage.memory import MemoryStore

REDIS_SCHEMES = ("redis", "rediss", "unix")

__all__ = ["COUNTERS", "DiskStore", "MemoryStore", "Namespace", "Store", "open_store"]


def open_store(directory: Path | None, max_bytes: int, url: str | None = None) -> Store:
    """The store the settings name: Redis for ``url`` (``--cache-url``), else the disk folder
    ``directory`` (``--cache-dir``), else memory. Never fails for an unreachable Redis or an unusable
    folder (they degrade to memory, logged); raises OptionsError for a URL that is not a Redis URL."""
    if url:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in REDIS_SCHEMES:
            raise OptionsError(
                "--cache-url must look like redis://host:6379/0 (or rediss://, unix://); "
                f"got a URL with scheme {scheme or 'none'!r}"
            )
        from storage.redis_store import RedisStore

        return RedisStore(url, max_bytes)
    if directory is None:
        return MemoryStore(max_bytes)
    return DiskStore(Path(directory), max_bytes)
