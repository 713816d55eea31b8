"""The "Insert a tag" helper of the clone text: non-verbal sounds and the language or dialect tag.

    choices = TAG_CHOICES                     # [(label, tag)] for a dropdown
    insert_tag("[Laughter]", "So funny")      # -> "So funny [Laughter]"
    insert_tag("[Cantonese]", "[Korean] hi")  # -> "[Cantonese] hi" (one language tag, first)

Both generations of paralinguistic tags are offered (models/prompts.py). A language tag applies to
the whole text only when it comes first, so it goes to the front and replaces any other one; a
sound tag goes at the end, where the person is typing.
"""

from __future__ import annotations

from models.edit_tasks import LANGUAGE_TAGS, PARALINGUISTIC_TAGS
from models.text_input import split_language_tag

TAG_CHOICES = [(f"{tag} (language, goes first)", tag) for tag in LANGUAGE_TAGS] + [
    (f"{tag} (sound)", tag) for tag in PARALINGUISTIC_TAGS
]


def insert_tag(tag: str | None, text: str | None) -> str:
    """``text`` with ``tag`` added: a language tag at the front (replacing one there), else at the end."""
    text = text or ""
    if not tag:
        return text
    if tag in LANGUAGE_TAGS:
        _, rest = split_language_tag(text)
        return f"{tag} {rest.lstrip()}".rstrip()
    return f"{text.rstrip()} {tag}".strip()
