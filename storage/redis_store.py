"""``RedisStore``: the shared backend for several replicas (official ``redis`` client).

Key layout and the Lua scripts (each write and eviction atomic) are in storage/redis_scripts.py.

Redis down (at start or mid-run): the store serves from a local ``MemoryStore`` with the same bounds,
logs one warning, reports ``connected`` False and ``fallback`` "memory" in ``status()``, and a
background thread pings Redis every ``retry_s`` seconds (requests never wait for it: socket timeouts
are short and there is no client-side retry loop). When Redis answers again the store uses it again;
what was written to the fallback meanwhile is dropped, except kept namespaces (the voice library) and
counters, which are added to Redis (an id that Redis got meanwhile wins over the one in memory).
Configure Redis with ``maxmemory-policy noeviction`` (the default): Redis's own eviction would drop
voices and leave the size records stale.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from errors import BackendUnavailable
from storage import redis_scripts
from storage.base import Number, Store, decode_value, encode_value, merged, parse_counter
from storage.memory import MemoryStore

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "editx:"
CONNECT_TIMEOUT_S = 0.5  # connecting to a Redis that is gone must not hold a request
SOCKET_TIMEOUT_S = 2.0  # one command; eviction scripts touch a handful of keys
RETRY_S = 3.0  # how often the background thread tries a Redis that stopped answering
MAX_CONNECTIONS = 32  # per process; requests wait up to POOL_WAIT_S for a free one
POOL_WAIT_S = 5.0
CAS_ATTEMPTS = 16  # update: compare-and-set tries before giving up on a very hot key
CLEAR_BATCH = 500
_UNAVAILABLE_REPLIES = ("OOM", "READONLY", "MISCONF", "LOADING", "MASTERDOWN", "NOREPLICAS", "BUSY")
T = TypeVar("T")


def redact_url(url: str) -> str:
    """``url`` without credentials or socket paths: ``redis://host:6379/0``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return f"redis: unix socket '{Path(parts.path).name}'"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    db = parts.path.lstrip("/") or dict(urllib.parse.parse_qsl(parts.query)).get("db", "0")
    return f"{parts.scheme}://{host}:{parts.port or 6379}/{db}"


class RedisStore(Store):
    """Store in a Redis server shared by every replica (see the module doc)."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        max_bytes: int,
        prefix: str = DEFAULT_PREFIX,
        retry_s: float = RETRY_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
    ):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(max_bytes)
        self._redis = redis
        self.location = redact_url(url)
        self.prefix = prefix
        self.retry_s = float(retry_s)
        # one immediate retry on a broken connection (a pooled socket of a restarted server), no loop
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT_S,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self._client = redis.Redis(connection_pool=self._pool)
        self._put = self._client.register_script(redis_scripts.PUT)
        self._get_touch = self._client.register_script(redis_scripts.GET_TOUCH)
        self._delete = self._client.register_script(redis_scripts.DELETE)
        self._clear = self._client.register_script(redis_scripts.CLEAR)
        self._fallback = MemoryStore(max_bytes, location="memory (Redis fallback)")
        self._lock = threading.Lock()
        self._up = True
        self._down_since: float | None = None
        self._down_reason = ""
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None
        try:
            self._client.ping()
            log.info("cache store: Redis at %s", self.location)
        except self._unavailable_errors() as exc:
            self._went_down(exc)

    # -- namespaces ------------------------------------------------------------------------------

    def namespace(self, name: str, max_entries: int | None = None):
        self._fallback.namespace(name, max_entries)
        return super().namespace(name, max_entries)

    def value_key(self, ns: str, key: str) -> str:
        """The Redis key holding the value of ``key`` in ``ns``."""
        return f"{self.prefix}{ns}:v:{key}"

    # -- entries ---------------------------------------------------------------------------------

    def get(self, ns: str, key: str) -> dict | None:
        spec = self._ns(ns)

        def read(client) -> dict | None:
            if spec.bounded:
                keys = [self.value_key(ns, key), self._k(ns, "lru"), self.prefix + "tick"]
                data = self._get_touch(keys=keys, args=[key], client=client)
            else:
                data = client.get(self.value_key(ns, key))
            return self._decoded(client, ns, key, data)

        return self._call(read, lambda: self._fallback.get(ns, key))

    def get_many(self, ns: str, keys: Iterable[str]) -> dict[str, dict]:
        spec = self._ns(ns)
        keys = list(keys)
        if spec.bounded or not keys:
            return super().get_many(ns, keys)

        def read(client) -> dict[str, dict]:
            out = {}
            for key, data in zip(keys, client.mget([self.value_key(ns, k) for k in keys]), strict=True):
                value = self._decoded(client, ns, key, data)
                if value is not None:
                    out[key] = value
            return out

        return self._call(read, lambda: self._fallback.get_many(ns, keys))

    def put(self, ns: str, key: str, value: Mapping) -> None:
        self._check_key(key)
        data = encode_value(value)
        self._call(
            lambda c: self._run_put(c, ns, key, data, "set"), lambda: self._fallback.put(ns, key, value)
        )

    def add(self, ns: str, key: str, value: Mapping) -> bool:
        self._check_key(key)
        data = encode_value(value)
        return self._call(
            lambda c: self._run_put(c, ns, key, data, "add") == 1, lambda: self._fallback.add(ns, key, value)
        )

    def update(self, ns: str, key: str, fields: Mapping) -> dict | None:
        self._ns(ns)

        def merge(client) -> dict | None:
            for _ in range(CAS_ATTEMPTS):
                data = client.get(self.value_key(ns, key))
                current = self._decoded(client, ns, key, data)
                if current is None:
                    return None
                value = merged(current, fields)
                sha = hashlib.sha1(data).hexdigest()
                if self._run_put(client, ns, key, encode_value(value), "cas", sha) == 1:
                    return value
            raise BackendUnavailable(f"the cache entry {key} changed under {CAS_ATTEMPTS} updates in a row")

        return self._call(merge, lambda: self._fallback.update(ns, key, fields))

    def delete(self, ns: str, key: str) -> bool:
        self._ns(ns)
        return self._call(
            lambda c: self._delete(args=[self.prefix, ns, key, ""], client=c) == 1,
            lambda: self._fallback.delete(ns, key),
        )

    def keys(self, ns: str) -> list[str]:
        self._ns(ns)
        return self._call(
            lambda c: [k.decode() for k in c.hkeys(self._k(ns, "sizes"))], lambda: self._fallback.keys(ns)
        )

    def clear(self, ns: str) -> dict:
        self._ns(ns)

        def clear(client) -> dict:
            removed = {"entries": 0, "bytes": 0}
            while True:
                n, size, left = self._clear(args=[self.prefix, ns, CLEAR_BATCH], client=client)
                removed["entries"] += int(n)
                removed["bytes"] += int(size)
                if int(left) == 0 or int(n) == 0:
                    return removed

        return self._call(clear, lambda: self._fallback.clear(ns))

    def count(self, ns: str) -> int:
        self._ns(ns)
        return self._call(lambda c: int(c.hlen(self._k(ns, "sizes"))), lambda: self._fallback.count(ns))

    def size(self, ns: str) -> int:
        self._ns(ns)
        return self._call(lambda c: int(c.get(self._k(ns, "bytes")) or 0), lambda: self._fallback.size(ns))

    def usage(self) -> int:
        """Bytes of the JSON values of the bounded namespaces (Redis's own overhead is not counted)."""
        names = self._bounded_names()
        if not names:
            return 0
        return self._call(
            lambda c: sum(int(v or 0) for v in c.mget([self._k(n, "bytes") for n in names])),
            self._fallback.usage,
        )

    # -- counters --------------------------------------------------------------------------------

    def _write_counters(self, amounts: Mapping[str, Number]) -> None:
        self._call(lambda c: self._add_counters(c, amounts), lambda: self._fallback.incr_many(amounts))

    def _read_counters(self) -> dict[str, Number]:
        return self._call(
            lambda c: self._parse_counters(c.hgetall(self.prefix + "counters")), self._fallback.counters
        )

    def _clear_counters(self) -> dict[str, Number]:
        def reset(client) -> dict[str, Number]:
            pipe = client.pipeline(transaction=True)
            pipe.hgetall(self.prefix + "counters")
            pipe.delete(self.prefix + "counters")
            return self._parse_counters(pipe.execute()[0])

        return self._call(reset, self._fallback.reset_counters)

    # -- state -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up

    def status(self) -> dict:
        up = self._up
        degraded = None
        if not up:
            since = time.strftime("%H:%M:%S", time.localtime(self._down_since or time.time()))
            degraded = f"Redis not answering since {since} ({self._down_reason}); serving from memory"
        return {
            "backend": self.backend,
            "location": self.location,
            "persistent": up,
            "connected": up,
            "fallback": None if up else "memory",
            "degraded": degraded,
        }

    def _close(self) -> None:
        self._closed.set()
        self._pool.disconnect()

    # -- internals -------------------------------------------------------------------------------

    def _k(self, ns: str, what: str) -> str:
        return f"{self.prefix}{ns}:{what}"

    def _run_put(self, client, ns: str, key: str, data: bytes, mode: str, expected: str = "") -> int:
        spec = self._ns(ns)
        args = [
            self.prefix,
            ns,
            key,
            data,
            mode,
            expected,
            spec.max_entries or 0,
            self.max_bytes,
            *self._bounded_names(),
        ]
        return int(self._put(args=args, client=client))

    def _decoded(self, client, ns: str, key: str, data: bytes | None) -> dict | None:
        """The value of ``data``; a value that is not a JSON object is removed (if still the same)."""
        if data is None:
            return None
        value = decode_value(data)
        if value is None:
            log.warning(
                "cache store: entry %s/%s is corrupt (not a JSON object); removed (it is made again "
                "when needed)",
                ns,
                key,
            )
            self._delete(args=[self.prefix, ns, key, hashlib.sha1(data).hexdigest()], client=client)
        return value

    def _add_counters(self, client, amounts: Mapping[str, Number]) -> None:
        """HINCRBY for ints, HINCRBYFLOAT for floats, in one round trip."""
        pipe = client.pipeline(transaction=False)
        for name, amount in amounts.items():
            if isinstance(amount, int):
                pipe.hincrby(self.prefix + "counters", name, amount)
            else:
                pipe.hincrbyfloat(self.prefix + "counters", name, float(amount))
        pipe.execute()

    @staticmethod
    def _parse_counters(raw: Mapping) -> dict[str, Number]:
        out: dict[str, Number] = {}
        for name, value in raw.items():
            number = parse_counter(value)
            if number is not None:
                out[name.decode() if isinstance(name, bytes) else name] = number
        return out

    def _unavailable_errors(self) -> tuple[type[BaseException], ...]:
        return (self._redis.ConnectionError, self._redis.TimeoutError, self._redis.ResponseError)

    def _call(self, fn: Callable[[object], T], fallback: Callable[[], T]) -> T:
        """``fn(client)`` while Redis answers, else ``fallback()`` (switching over on the first failure)."""
        if not self._up:
            return fallback()
        try:
            return fn(self._client)
        except self._unavailable_errors() as exc:
            if isinstance(exc, self._redis.ResponseError) and not str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise  # a real error in a command or script: not an outage
            self._went_down(exc)
            return fallback()

    def _went_down(self, exc: BaseException) -> None:
        with self._lock:
            if not self._up and self._down_since is not None:
                return
            self._up = False
            self._down_since = time.time()
            self._down_reason = type(exc).__name__
            log.warning(
                "cache store: Redis at %s is not answering (%s); serving from a local in-memory "
                "store with the same bounds and reconnecting every %.0f s. Entries written meanwhile "
                "are not shared and are dropped when Redis is back (voices and counters are added "
                "to it).",
                self.location,
                exc,
                self.retry_s,
            )
            self._pool.disconnect()
            if not self._closed.is_set() and (self._prober is None or not self._prober.is_alive()):
                self._prober = threading.Thread(target=self._reconnect, name="redis-reconnect", daemon=True)
                self._prober.start()

    def _reconnect(self) -> None:
        """Background: ping every ``retry_s`` until Redis answers, then switch back to it."""
        while not self._closed.wait(self.retry_s):
            try:
                self._client.ping()
                self._hand_back()
            except self._unavailable_errors() as exc:
                log.debug("cache store: Redis at %s still not answering (%s)", self.location, exc)
                continue
            with self._lock:
                self._up = True
                self._down_since = None
            log.info("cache store: Redis at %s answers again; using it", self.location)
            return

    def _hand_back(self) -> None:
        """Write the fallback's kept namespaces (add-only) and counters to Redis; drop the rest."""
        for name, spec in self.namespaces.items():
            if not spec.bounded:
                for key, value in self._fallback.items(name):
                    if self._run_put(self._client, name, key, encode_value(value), "add") != 1:
                        log.warning(
                            "cache store: %s/%s made while Redis was down was taken meanwhile; "
                            "the copy in memory is dropped",
                            name,
                            key,
                        )
            self._fallback.clear(name)
        counts = self._fallback.reset_counters()
        if counts:
            self._add_counters(self._client, counts)
