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
    └── BackendUnavailable        a service the app relies on (a vLLM server, Redis) is not answering

The input errors also derive from ``ValueError`` and the model-file error from ``RuntimeError``,
so callers that only know the built-in types still catch them.
"""

from __future__ import annotations


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
