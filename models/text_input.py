"""A person's text on its way into a prompt: control-token removal, limits, validation, language tag.

    cleaned = clean_text(text, "target text", DEFAULT_MAX_TEXT_CHARS, warnings)  # refuses or cleans
    tag, rest = split_language_tag("[cantonese] Hi")                              # ("[Cantonese]", "Hi")
    sanitize_text(text)                # strips <audio_N>, <s>, <|EOT|>, [speaker_start] ... until stable
    validate_text(text) / validate_audio_token_str(tokens)   # what the prompt builders accept

The prompt builders (models/prompts.py) sanitise and validate again, so no text reaches a prompt
with a control token in it, whatever path it came by.
"""

from __future__ import annotations

import logging
import re

from errors import TextInputError
from models.audio_tokens import AUDIO_CODES, AUDIO_TOKEN_RE, codes_in
from models.edit_tasks import LANGUAGE_TAGS

log = logging.getLogger(__name__)

# Longest text a person may send (--max-text-chars); the prompt builders themselves take any length.
DEFAULT_MAX_TEXT_CHARS = 20_000  # --max-text-chars; long text is spoken in chunks (text_split.py)

# A leading language or dialect tag, any case, with the whitespace around it.
_LANGUAGE_TAG_RE = re.compile(r"\s*(" + "|".join(map(re.escape, LANGUAGE_TAGS)) + r")\s*", re.IGNORECASE)

# Strings that mean something to the prompt frame or the tokenizer and must not come from user text.
_CONTROL_RE = re.compile(
    r"<audio_\d+>|</?s>|<unk>|<\|[^<>|]{0,40}\|>|\[speaker_(?:start|end)\]",
    re.IGNORECASE,
)


def sanitize_text(text: str) -> str:
    """Remove everything from user text that could act as a prompt control token; strip the ends.

    Removed: ``<audio_N>`` strings, ``<s>``, ``</s>``, ``<unk>``, ``<|...|>`` tokens (``<|BOT|>``,
    ``<|EOT|>``, reserved tokens) and the ``[speaker_start]``/``[speaker_end]`` markers. Removal repeats
    until nothing changes, so a nested form like ``<<s>/s>`` cannot reassemble a token.
    """
    if not isinstance(text, str):
        raise TextInputError(f"text must be a string, got {type(text).__name__}")
    previous = None
    while previous != text:
        previous = text
        text = _CONTROL_RE.sub("", text)
    return text.strip()


def split_language_tag(text: str) -> tuple[str | None, str]:
    """(the leading language or dialect tag in its canonical spelling, the rest of the text), or
    (None, text) when the text does not start with one of ``LANGUAGE_TAGS``."""
    match = _LANGUAGE_TAG_RE.match(text or "")
    if not match:
        return None, text
    tag = next(t for t in LANGUAGE_TAGS if t.lower() == match.group(1).lower())
    return tag, text[match.end() :]


def clean_text(
    text: str | None, what: str, limit: int, warnings: list[str], allow_empty: bool = False
) -> str:
    """Strip and sanitise a person's ``text`` (control tokens such as ``<audio_3>`` are removed, with
    a note appended to ``warnings``); refuse it when it is longer than ``limit`` characters, not
    valid Unicode, or (unless ``allow_empty``) empty."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TextInputError(f"the {what} must be text, got {type(text).__name__}")
    raw = text.strip()
    if len(raw) > limit:
        raise TextInputError(
            f"the {what} is {len(raw)} characters long; the limit is {limit} "
            f"(--max-text-chars). Split it into shorter pieces."
        )
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (e.g. "\ud800"), sendable as JSON escapes
        raise TextInputError(
            f"the {what} contains a character that is not valid Unicode (position "
            f"{exc.start}); remove it or retype the text"
        ) from None
    cleaned = sanitize_text(raw)
    if cleaned != raw:
        note = f"removed control tokens or markup from the {what}"
        log.warning("%s: %r -> %r", note, raw[:80], cleaned[:80])
        warnings.append(note)
    if not cleaned and not allow_empty:
        if raw:
            raise TextInputError(f"the {what} contains only control tokens or markup; type ordinary words")
        raise TextInputError(f"the {what} is empty; type the words to speak")
    return cleaned


def validate_text(text: str | None, what: str = "text") -> str:
    """Sanitise a text for a prompt; raises TextInputError when nothing usable is left."""
    if text is None:
        raise TextInputError(f"{what} is empty: type the text to speak")
    clean = sanitize_text(text)
    if not clean:
        raise TextInputError(f"{what} is empty (after removing control tokens): type the text to speak")
    return clean


def validate_audio_token_str(token_str: str, what: str = "audio tokens") -> str:
    """Check that a string holds only ``<audio_N>`` tokens (N < 5120) and whitespace; returns it stripped."""
    token_str = (token_str or "").strip()
    rest = AUDIO_TOKEN_RE.sub("", token_str)
    if rest.strip():
        raise TextInputError(
            f"{what} must contain only <audio_N> tokens; found other text {rest.strip()[:40]!r}"
        )
    codes = codes_in(token_str)
    if not codes:
        raise TextInputError(f"{what} are empty: the reference audio produced no tokens")
    bad = [c for c in codes if c >= AUDIO_CODES]
    if bad:
        raise TextInputError(f"{what} contain codes outside [0, {AUDIO_CODES}): {bad[:5]}")
    return token_str
