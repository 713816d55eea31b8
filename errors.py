"""The one error tree of EditX Studio: every error a person can act on is one of these.

    EditXError                    base: the message says what was wrong and what to do
    ├── InputError                something a person sent (the page and the API answer 400)
    │   ├── AudioInputError       the audio: format, length, silence, damaged samples
    │   ├── TextInputError        a text: empty, too long, control tokens only
    │   └── OptionsError          an option: variant, edit task, sampling value, device
    ├── ModelFilesError           a model file is missing, unreadable, truncated or does not match
    ├── GenerationError           the models ran but produced nothing usable
    │   └── EmptyGenerationError  no complete audio-token group came out of the LLM
    ├── GenerationCancelled       a person pressed Stop (a normal outcome, not a failure)
    ├── BackendUnavailable        a service the app relies on (a vLLM server, Redis) is not answering
    ├── NotFoundError             a voice or an output id that does not exist (404)
    ├── TooLargeError             an upload over the size limit (413); also an InputError
    ├── BusyError                 the request queue is full: try again shortly (429)
    └── AccessError               a missing or wrong API key, or a destructive call not allowed (401/403)

The input errors also derive from ``ValueError`` and the model-file error from ``RuntimeError``,
so callers that only know the built-in types still catch them. ``public_message`` is the text a
client may see: server paths are reduced to file names (the log keeps the full text).
"""

from __future__ import annotations

import re


class EditXError(Exception):
    """Base of every error with a message meant for a person (never a traceback, never a path)."""


class InputError(EditXError, ValueError):
    """Bad input from a person or a client: the request is refused, nothing else is affected."""


class AudioInputError(InputError):
    """The audio cannot be used (format, length, silence, NaN samples); the message says what to do."""


class TextInputError(InputError):
    """A text cannot be used (empty, too long, nothing left after sanitising); the message says why."""


class OptionsError(InputError):
    """An option (variant, edit task, sampling value, device) is not usable; the message says which."""


class ModelFilesError(EditXError, RuntimeError):
    """A model file is missing, unreadable, truncated or does not match the others; names the file."""


class GenerationError(EditXError, RuntimeError):
    """The models ran but gave nothing usable for this request (another seed may help)."""


class EmptyGenerationError(GenerationError):
    """The LLM produced no complete audio-token group, so there is nothing to vocode."""


class GenerationCancelled(EditXError):
    """Generation was stopped on request (the Stop button, a closed connection)."""


class BackendUnavailable(EditXError, RuntimeError):
    """A service the app relies on (a vLLM server, a Redis store) is down or stopped answering."""


class NotFoundError(EditXError, LookupError):
    """A voice, output or version id that does not exist (any more)."""


class TooLargeError(InputError):
    """An upload or a body over the size limit; the message gives the limit."""


class BusyError(EditXError):
    """Every slot of the request queue is taken; the client should try again shortly."""


class AccessError(EditXError, PermissionError):
    """A missing or wrong API key, or a destructive action that needs the admin key here."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.status = status


# An absolute path with at least two components (/tmp/gradio/x/voice.wav, C:\x\y.wav), not a URL.
_PATH_RE = re.compile(r"(?<![\w:/.])(?:[A-Za-z]:)?(?:[/\\][^\s/\\'\"<>|:]+){2,}[/\\]?")


def public_message(exc: BaseException | str) -> str:
    """The message of ``exc`` for a client, as a sentence: every absolute server path is replaced by
    its file name (the server log keeps the full text)."""
    text = str(exc).strip()
    text = _PATH_RE.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)
    return text[:1].upper() + text[1:]
