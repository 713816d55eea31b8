"""Sanity checks of single model files, without loading them: is it there, readable, complete?

Each weight file's own header says how long the file must be (safetensors, .npy, the zip
directory of a torch checkpoint, the protobuf fields of ONNX and SentencePiece models), so
truncation is found without reading the weights. A Git LFS pointer left by a clone without
git-lfs, an empty file and a file the app's user cannot read are named as such.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import yaml

MB = 1_000_000
GIT_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


def file_problem(path: Path, kind: str, min_bytes: int = 1) -> str | None:
    """What is wrong with one model file (None when sound): missing, unreadable, empty, an LFS
    pointer, under ``min_bytes``, or not a complete file of ``kind`` (see ``format_problem``)."""
    if not path.exists():
        return "missing"
    if not path.is_file():
        return "is not a file"
    if not os.access(path, os.R_OK):
        return (
            f"is not readable by this user (uid {os.getuid()}); make it readable, e.g. "
            "`chmod -R a+rX` on the model folder (in Docker, the image runs as uid 10001)"
        )
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if size < 1024:
        with path.open("rb") as f:
            if f.read(len(GIT_LFS_POINTER_PREFIX)) == GIT_LFS_POINTER_PREFIX:
                return "is a Git LFS pointer, not the file (run `git lfs pull` or scripts/download_models.py)"
    if size < min_bytes:
        return (
            f"is {human_size(size)}, the real checkpoint file is at least {human_size(min_bytes)} "
            "(incomplete download?)"
        )
    return format_problem(path, kind)


# --- format checks: each returns None when the file is sound, else what is wrong ---


def _check_json(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"is not valid JSON ({exc})"
    return None


class _TagTolerantLoader(yaml.SafeLoader):
    """SafeLoader that accepts hyperpyyaml tags (``!new:``, ``!name:``, ``!ref``) without running them."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _check_yaml(path: Path) -> str | None:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TagTolerantLoader)  # noqa: S506
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        return f"is not valid YAML ({str(exc).splitlines()[0]})"
    if not isinstance(data, dict):
        return "is not a YAML mapping"
    return None


def _check_npy(path: Path) -> str | None:
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None  # format 3.0 (utf-8 header) has no public reader; the size floor still applies
        except ValueError as exc:
            return f"is not a .npy array ({exc})"
        if dtype.hasobject:
            return None
        expected = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _length_problem(path, expected, f"its header ({shape} {dtype})")


def _check_safetensors(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is truncated (no safetensors header)"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100 * MB):
            return f"is truncated or not safetensors (header length {header_len} vs file {size} bytes)"
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "is not a safetensors file (header is not JSON)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return _length_problem(path, 8 + header_len + max(ends, default=0), "its safetensors header")


def _check_torch(path: Path) -> str | None:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic.startswith(b"\x80"):
        return None  # legacy (pre-1.6) pickle format: no length to check
    if magic != b"PK\x03\x04":
        return "is not a PyTorch checkpoint (neither zip nor pickle)"
    # torch.save writes a zip whose central directory sits at the very end: a cut file loses it.
    if not zipfile.is_zipfile(path):
        return "is truncated (the zip directory of the torch checkpoint is missing)"
    return None


def _read_varint(buf: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _protobuf_fields(path: Path) -> set[int]:
    """Walk the top-level fields of a protobuf message file; raise ValueError if one runs past EOF."""
    fields: set[int] = set()
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos, end = 0, len(buf)
        while pos < end:
            key, pos = _read_varint(buf, pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ValueError("field number 0")
            if wire == 0:
                _, pos = _read_varint(buf, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = _read_varint(buf, pos, end)
                pos += length
            elif wire == 5:
                pos += 4
            else:
                raise ValueError(f"unsupported wire type {wire}")
            if pos > end:
                raise ValueError(f"field {number} needs {pos - end} more bytes")
            fields.add(number)
    return fields


def _check_protobuf(path: Path, required_field: int) -> str | None:
    # ONNX ModelProto keeps the graph in field 7; a SentencePiece ModelProto its pieces in field 1.
    try:
        fields = _protobuf_fields(path)
    except ValueError as exc:
        return f"is truncated or not a protobuf model ({exc})"
    if required_field not in fields:
        return f"is not the expected protobuf model (top-level field {required_field} is absent)"
    return None


def _length_problem(path: Path, expected: int, source: str) -> str | None:
    size = path.stat().st_size
    if size < expected:
        return f"is truncated: {source} needs {expected} bytes, the file has {size}"
    if size > expected:
        return f"has {size - expected} unexpected bytes after the data {source} describes"
    return None


def format_problem(path: Path, kind: str) -> str | None:
    """``kind``: bytes (no check), json, yaml, npy, safetensors, torch or protobuf:<required field>."""
    if kind == "bytes":
        return None
    if kind.startswith("protobuf:"):
        return _check_protobuf(path, int(kind.split(":", 1)[1]))
    check = {
        "json": _check_json,
        "yaml": _check_yaml,
        "npy": _check_npy,
        "safetensors": _check_safetensors,
        "torch": _check_torch,
    }[kind]
    return check(path)


def human_size(n: int) -> str:
    """1234567 -> "1.2 MB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
