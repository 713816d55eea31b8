"""Persistent prompt cache: tokenizer results (and later additions) keyed by the prepared reference clip.

Values are JSON objects kept in a ``storage.Store`` (a diskcache folder by default, Redis for several
replicas, memory for ``--cache-dir none``), in the bounded namespace ``prompts`` (least-recently-used
eviction by entry count, and by bytes against the store's budget). The key is built by the tokenizer
(``prompt_key``): a SHA-256 of the prepared 16 kHz PCM and of the tokenizer fingerprint, so the same
voice hits whatever the file name, and other weights never return stale codes.

Beside the entries: raw-input aliases (namespace ``aliases``, bounded and cheap) and the counters of
hits, misses and time saved, shared by every process using the store (two processes on one folder, or
replicas on one Redis, add up).

Failure policy: the cache must never fail an encode. A corrupt or unparseable entry is a miss and is
removed; the store degrades to memory where it cannot write (see docs/STORAGE.md).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

import numpy as np

from storage import Store, open_store

log = logging.getLogger(__name__)

KEY_VERSION = "v1"  # bump when the meaning of a cached value changes
REQUIRED_FIELDS = ("vq02", "vq06")  # an entry without these is corrupt
PROMPTS = "prompts"  # store namespace of the entries
ALIASES = "aliases"  # raw-input hash -> entry key (not counted as entries)
ALIAS_MAX_ENTRIES = 100_000  # ~200 bytes each; least recently used go first
HITS, MISSES, TIME_SAVED = "hits", "misses", "time_saved_s"  # store counters
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
    """LRU cache of prompt-encoding results in a ``Store``, safe under threads and processes.

    ``PromptCache(directory, max_entries, max_bytes)`` opens a disk store in ``directory`` (None: in
    memory); ``PromptCache(store=..., max_entries=...)`` uses a store opened elsewhere (Redis, or one
    shared with the voice library), whose byte budget then applies.
    """

    def __init__(
        self,
        directory: Path | None = None,
        max_entries: int = 2000,
        max_bytes: int = 1 << 30,
        *,
        store: Store | None = None,
    ):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        if store is None:
            store = open_store(Path(directory) if directory is not None else None, self.max_bytes)
        self.store = store
        self.directory: Path | None = getattr(store, "directory", None)  # the disk store's folder
        self.store.namespace(PROMPTS, max_entries=self.max_entries)
        self.store.namespace(ALIASES, max_entries=ALIAS_MAX_ENTRIES)

    # -- public interface ----------------------------------------------------------------------------

    @property
    def persistent(self) -> bool:
        """True while new entries outlive this process (on disk, or in a reachable Redis)."""
        return bool(self.store.status()["persistent"])

    def get(self, key: str) -> dict | None:
        """The stored value, or None; counts a hit (adding its recorded encode time) or a miss."""
        value = self.store.get(PROMPTS, key)
        if value is not None and any(not isinstance(value.get(f), list) for f in REQUIRED_FIELDS):
            log.warning(
                "prompt cache: entry %s has no vq02/vq06 codes; removed, it will be encoded again", key
            )
            self.store.delete(PROMPTS, key)
            value = None
        if value is None:
            self.store.incr(MISSES)
            return None
        try:
            saved = float(value.get("encode_seconds") or 0.0)
        except (TypeError, ValueError):
            saved = 0.0
        self.store.incr_many({HITS: 1, TIME_SAVED: saved})
        return value

    def put(self, key: str, value: dict) -> None:
        """Store ``value`` (JSON-serialisable, with at least vq02 and vq06) under ``key``."""
        self.store.put(PROMPTS, key, value)

    def update(self, key: str, fields: dict) -> None:
        """Merge ``fields`` into the entry under ``key`` (no-op with a debug line if it is gone)."""
        if self.store.update(PROMPTS, key, fields) is None:
            log.debug("prompt cache: update of a missing entry %s ignored", key)

    def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; True if it was there."""
        return self.store.delete(PROMPTS, key)

    def incr(self, counter: str, amount: int | float = 1) -> None:
        """Add to a shared counter shown by ``stats`` and reset by ``clear`` (e.g. vocoder-prompt hits)."""
        self.store.incr(counter, amount)

    def stats(self) -> dict:
        """hits, misses, hit_rate, entries, bytes, time_saved_s, directory, persistent, store, plus every
        other counter of the store. The counters are shared by all processes using the store and
        persist with it; ``bytes`` is what the store counts against the byte budget (on disk: the
        folder's database, log and value files); ``directory`` is the redacted location."""
        counters = self.store.counters()
        hits, misses = int(counters.get(HITS, 0)), int(counters.get(MISSES, 0))
        status = self.store.status()
        total = hits + misses
        return {
            **counters,
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / total if total else 0.0,
            "entries": self.store.count(PROMPTS),
            "bytes": self.store.usage(),
            "time_saved_s": round(float(counters.get(TIME_SAVED, 0.0)), 6),
            "directory": status["location"],
            "persistent": bool(status["persistent"]),
            "store": status,
        }

    def alias_get(self, alias: str) -> str | None:
        """The entry key recorded for ``alias`` (a hash of a raw input + the model fingerprint), or None.

        Aliases let a repeated upload skip resampling and trimming, also after a restart; the key
        itself stays defined on the prepared 16 kHz PCM. Not counted as a hit or a miss.
        """
        value = self.store.get(ALIASES, alias)
        key = value.get("key") if value is not None else None
        return key if isinstance(key, str) else None

    def alias_put(self, alias: str, key: str) -> None:
        """Record that the raw input ``alias`` prepares to the entry ``key``."""
        self.store.put(ALIASES, alias, {"key": key})

    def clear(self) -> dict:
        """Remove every entry and alias and reset every counter of the store (the voice library stays).

        Returns {"entries", "bytes", "aliases", "counters"}: what was removed (bytes of the entries'
        JSON values) and the counter values before the reset.
        """
        entries = self.store.clear(PROMPTS)
        aliases = self.store.clear(ALIASES)
        counters = self.store.reset_counters()
        removed = {
            "entries": entries["entries"],
            "bytes": entries["bytes"],
            "aliases": aliases["entries"],
            "counters": counters,
        }
        log.info(
            "prompt cache cleared: %d entries (%.2f MiB), %d aliases; counters reset (%s)",
            removed["entries"],
            removed["bytes"] / MIB,
            removed["aliases"],
            ", ".join(f"{k}={v}" for k, v in sorted(counters.items())) or "none",
        )
        return removed

    def close(self) -> None:
        """Close the store's connections (the cache stays usable; they reopen on demand)."""
        self.store.close()


def open_prompt_cache(
    directory: Path | None, max_entries: int, max_bytes: int, url: str | None = None
) -> PromptCache:
    """The prompt cache on the store the settings name (``url``: Redis; else ``directory``; else memory).

    An unusable folder or an unreachable Redis degrades to memory (logged by the store).
    """
    store = open_store(Path(directory) if directory else None, max_bytes, url=url)
    cache = PromptCache(max_entries=max_entries, max_bytes=max_bytes, store=store)
    status = store.status()
    log.info(
        "prompt cache: %s (%s; limits %d entries / %.1f MiB)",
        status["location"],
        "persistent" if status["persistent"] else "in memory only",
        max_entries,
        max_bytes / MIB,
    )
    return cache
