"""The one place where errors become HTTP: our error tree -> status + OpenAI's error JSON.

Every /v1 route uses ``ApiRoute``, whose handler turns any exception into ``error_response``:
bad input 400, a missing or wrong key 401, a forbidden destructive call 403, an unknown voice or
output 404, an upload over the limit 413, a full queue 429, a backend down 503 (the server opens
its port only once the models are loaded, so no request meets a loading state), anything else 500
with a generic message. No traceback and no server path reaches a
client (``errors.public_message``); the server log keeps the details.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException  # FastAPI's and Starlette's own (request.form)

from errors import (
    AccessError,
    AudioInputError,
    BackendUnavailable,
    BusyError,
    EditXError,
    GenerationError,
    InputError,
    ModelFilesError,
    NotFoundError,
    OptionsError,
    TextInputError,
    TooLargeError,
    public_message,
)

log = logging.getLogger(__name__)

# (error class, HTTP status, OpenAI error type, code); the first match wins, so subclasses go first.
STATUS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (TooLargeError, 413, "invalid_request_error", "too_large"),
    (AudioInputError, 400, "invalid_request_error", "invalid_audio"),
    (TextInputError, 400, "invalid_request_error", "invalid_text"),
    (OptionsError, 400, "invalid_request_error", "invalid_option"),
    (InputError, 400, "invalid_request_error", "invalid_request"),
    (NotFoundError, 404, "invalid_request_error", "not_found"),
    (BusyError, 429, "rate_limit_error", "queue_full"),
    (BackendUnavailable, 503, "server_error", "backend_unavailable"),
    (GenerationError, 500, "server_error", "no_audio"),
    (ModelFilesError, 500, "server_error", "model_files"),
)
# which request field an input error is about, by a word of its message (for OpenAI's "param")
PARAMS = (
    ("voice", "voice"),
    ("target text", "input"),
    ("seed", "seed"),
    ("temperature", "temperature"),
    ("top-p", "top_p"),
    ("speed", "speed"),
    ("edit task", "task"),
    ("sub-task", "subtask"),
    ("new text", "new_text"),
    ("audio", "file"),
    ("reference", "file"),
    ("format", "response_format"),
)


def error_response(exc: BaseException) -> JSONResponse:
    """The JSON error for ``exc`` (logged here: warnings for client errors, tracebacks for ours)."""
    if isinstance(exc, AccessError):
        return _json(
            exc.status,
            public_message(exc),
            "invalid_request_error",
            "invalid_api_key" if exc.status == 401 else "forbidden",
            None,
        )
    if isinstance(exc, RequestValidationError):
        first = (exc.errors() or [{}])[0]
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else "the request body is invalid"
        log.warning("api: request refused: %s", message)
        return _json(400, message, "invalid_request_error", "invalid_request", param)
    if isinstance(exc, HTTPException):
        return _json(exc.status_code, public_message(exc.detail), "invalid_request_error", None, None)
    for kind, status, error_type, code in STATUS:
        if isinstance(exc, kind):
            message = public_message(exc)
            if status >= 500:
                log.error("api: %s: %s", type(exc).__name__, exc)
            else:
                log.warning("api: refused (%d): %s", status, exc)
            param = _param(message) if status == 400 else None
            return _json(status, message, error_type, code, param)
    if isinstance(exc, EditXError):
        log.error("api: %s: %s", type(exc).__name__, exc)
        return _json(500, public_message(exc), "server_error", None, None)
    log.exception("api: unexpected error", exc_info=exc)
    return _json(
        500,
        "Something went wrong inside the server; the server log has the details.",
        "server_error",
        "internal_error",
        None,
    )


class ApiRoute(APIRoute):
    """An APIRoute whose errors (validation included) all leave through ``error_response``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - this is the boundary: every error becomes JSON
                return error_response(exc)

        return route


def _json(status: int, message: str, error_type: str, code: str | None, param: str | None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}, status_code=status
    )


def _param(message: str) -> str | None:
    return next((param for word, param in PARAMS if word in message.lower()), None)
