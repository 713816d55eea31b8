"""Recent outputs by id, so a clone or an edit can be edited again (page versions and API outputs).

    outputs = OutputStore()
    output_id = outputs.add(result)          # "out-3f2a9c1b7d0e"
    outputs.get(output_id)                   # the SynthesisResult (tokens, segments, audio) or NotFoundError

Bounded by count and by the bytes of their audio: the least recently used output is forgotten
first. Outputs live in this process's memory (an id is only known to the replica that made it).
"""

from __future__ import annotations

import secrets

from errors import NotFoundError
from lru import LRU
from synthesis import SynthesisResult

MAX_OUTPUTS = 256
MAX_OUTPUT_BYTES = 512 << 20  # 512 MiB of float32 audio: about 90 minutes at 24 kHz
ID_PREFIX = "out-"


class OutputStore:
    """Thread-safe id -> SynthesisResult map with LRU bounds."""

    def __init__(self, max_entries: int = MAX_OUTPUTS, max_bytes: int = MAX_OUTPUT_BYTES):
        self._items: LRU[str, SynthesisResult] = LRU(max_entries, max_bytes, size_of=_audio_bytes)

    @staticmethod
    def new_id() -> str:
        return ID_PREFIX + secrets.token_hex(6)

    def add(self, result: SynthesisResult, output_id: str | None = None) -> str:
        """Keep ``result`` under ``output_id`` (a new id when None); returns the id."""
        output_id = output_id or self.new_id()
        self._items.put(output_id, result)
        return output_id

    def get(self, output_id: str) -> SynthesisResult:
        result = self._items.get(str(output_id))
        if result is None:
            raise NotFoundError(
                f"no output with id {output_id!r}: it was never made here or is too old "
                "(only the most recent outputs are kept); send the audio file instead"
            )
        return result

    def __len__(self) -> int:
        return len(self._items)


def _audio_bytes(result: SynthesisResult) -> int:
    return int(result.audio.nbytes)
