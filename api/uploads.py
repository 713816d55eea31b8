"""Reading request bodies within the upload limit: JSON, multipart forms, uploaded clips and form fields.

A declared ``Content-Length`` over the limit is refused (413) before anything is read; bodies without
one are counted as they arrive. Uploaded clips are decoded within the engine's reference limits, and
messages name the upload by its file name only. A form that cannot be parsed (no boundary, broken
parts, a second file) is a 400 that says so.
"""

from __future__ import annotations

import io

import numpy as np
from fastapi import Request
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from audio_read import load_audio
from engine import CloneEngine
from errors import OptionsError, TooLargeError

DEFAULT_MAX_UPLOAD_BYTES = 50 << 20  # a 30 s reference is a few MB even as 48 kHz float WAV


def upload_audio(data: bytes, filename: str | None, engine: CloneEngine) -> tuple[np.ndarray, int]:
    """An uploaded clip, decoded within the reference limits; messages name the upload's file name."""
    upload = io.BytesIO(data)
    upload.name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return load_audio(upload, max_seconds=engine.config.max_reference_seconds)


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the request is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise TooLargeError(f"the request is over the {limit / 1e6:.0f} MB limit")
    return data


async def read_form(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise OptionsError("send this request as multipart/form-data")
    try:
        return await request.form(max_files=1, max_fields=16, max_part_size=limit)
    except (MultiPartException, HTTPException) as exc:  # HTTPException: Starlette's wrapper of the first
        reason = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc).split("\n")[0]
        if "maximum size" in reason:
            raise TooLargeError(f"a form field is over the {limit / 1e6:.0f} MB limit") from None
        raise OptionsError(
            f"the multipart form could not be read ({reason.rstrip('.')}); send the clip as the form "
            "field 'file' with curl -F or any HTTP client's multipart option"
        ) from None


def int_or_none(value, name: str = "seed") -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(str(value))
    except ValueError:
        raise OptionsError(f"{name} must be a whole number, got {value!r}") from None


def first_error(exc: ValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', 'invalid')}"
