"""An iterator run ahead in a thread of its own (the LLM sampling while the streaming vocoder works).

stream = Prefetched(llm.stream_ids(ids, generation, cancel), max_ahead=256)
with contextlib.closing(stream):
    for token in stream: ...
stream.busy_s                       # the producer's wall time
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator


class Prefetched:
    """An iterator run ahead in a thread of its own (here: the LLM sampling while the vocoder works).

    Items, the end and any exception arrive in order through a bounded queue of ``max_ahead`` items.
    ``close()`` stops the producer and closes the source generator in the producer's own thread (a
    generator holding a lock releases it where it took it). ``busy_s`` is the producer's wall time.
    """

    _END = object()

    def __init__(self, source: Iterator, max_ahead: int):
        self._source = source
        self._items: queue.Queue = queue.Queue(maxsize=max_ahead)
        self._stop = threading.Event()
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._produce, name="llm-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        start = time.perf_counter()
        try:
            for item in self._source:
                if not self._put((True, item)):
                    break
            else:
                self._put((True, self._END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put((False, exc))
        finally:
            self.busy_s = time.perf_counter() - start
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetched:
        return self

    def __next__(self):
        ok, item = self._items.get()
        if not ok:
            raise item
        if item is self._END:
            self._thread.join()
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
