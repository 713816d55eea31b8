"""Hostile stored values for the storage tests: what a tampered cache folder or Redis key could hold."""

from __future__ import annotations

import os
import pickle
from pathlib import Path


class _MakesDirectoryWhenUnpickled:
    """Unpickling it creates a directory (what a tampered row could do, and worse)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def pickle_payload(marker: Path) -> bytes:
    """Pickle bytes that create the folder ``marker`` if anything ever unpickles them."""
    return pickle.dumps(_MakesDirectoryWhenUnpickled(str(marker)))
