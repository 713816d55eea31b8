"""``SafeDisk``: diskcache serialisation that never unpickles.

The disk store opens its diskcache ``Cache`` with this ``Disk`` (storage/disk_folder.py): it writes
only str keys and bytes or number values, refuses rows in pickle mode (or any unknown mode, a pickled
key, a value file outside the folder's own naming) with ``UnsafeRow``, which the store treats as a
corrupt entry (removed), and never reads or deletes a file outside that naming.
"""

from __future__ import annotations

import os
import re

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, MODE_TEXT, UNKNOWN

MIN_FILE_SIZE = 1 << 15  # values from 32 KiB up live in their own file (diskcache's default)
VALUE_DIR = re.compile(r"[0-9a-f]{2}")  # the folders that hold value files
_VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")


class UnsafeRow(Exception):
    """A row the store will not decode: pickle mode, a pickled key, a stray or missing value file."""


def valid_value_file(filename: object) -> bool:
    """Whether ``filename`` is diskcache's own ``xx/yy/<28 hex>.val`` (relative to the folder)."""
    return isinstance(filename, str) and _VALUE_FILE.fullmatch(filename.replace(os.sep, "/")) is not None


class SafeDisk(diskcache.Disk):
    """diskcache serialisation without pickle: str keys, bytes and number values only.

    Reading refuses pickle-mode rows (``UnsafeRow``) instead of unpickling them, and any value file
    whose name is not diskcache's own ``xx/yy/<28 hex>.val`` (a tampered row could name any path).
    """

    def __init__(self, directory: str, min_file_size: int = MIN_FILE_SIZE, pickle_protocol: int = 0):
        super().__init__(directory, min_file_size=min_file_size, pickle_protocol=pickle_protocol)

    def put(self, key):
        if type(key) is not str:
            raise TypeError(f"store keys are str, got {type(key).__name__}")
        return key, True

    def get(self, key, raw):
        if not raw:
            raise UnsafeRow("a pickled key")
        return super().get(key, raw)

    def store(self, value, read, key=UNKNOWN):
        if read or type(value) not in (bytes, int, float):
            raise TypeError(f"the disk store writes bytes and numbers only, got {type(value).__name__}")
        return super().store(value, False, key=key)

    def fetch(self, mode, filename, value, read):
        if read:
            raise TypeError("file handles are not handed out")
        if mode == MODE_RAW:
            return super().fetch(mode, filename, value, False)
        if mode in (MODE_BINARY, MODE_TEXT):
            if not valid_value_file(filename):
                raise UnsafeRow(f"a value file outside the cache's naming ({filename!r})")
            try:
                return super().fetch(mode, filename, value, False)
            except FileNotFoundError:
                raise UnsafeRow("its value file is missing") from None
            except UnicodeDecodeError as exc:
                raise UnsafeRow(f"its value file is not text ({exc})") from None
        raise UnsafeRow(f"stored in mode {mode} (pickle), refused")

    def remove(self, file_path):
        if valid_value_file(file_path):
            super().remove(file_path)
