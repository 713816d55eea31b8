"""Long text -> sentences -> chunks the LLM can speak in one pass (Chinese, English, Japanese, Korean).

    chunks = split_text("Dr. Smith paid $3.14 [laugh]. 你好。今天很好！", max_chars=200)
    [c.text for c in chunks], [c.pause_s for c in chunks]

Sentences end at 。！？；… and ! ? ; . and at line breaks, but never inside a word, a number such
as 3.14 or 1,000, an abbreviation such as "Dr." or "e.g.", an initial ("J. K."), or a bracketed
tag such as ``[laugh]``. Sentences are packed greedily into chunks of at most ``max_chars``; a
sentence longer than that is cut at its commas, then at spaces (or between CJK characters), never
inside a word, number or tag. Each chunk carries the pause that should follow it: longer after a
paragraph, shorter after a clause cut mid-sentence.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_CHUNK_CHARS = 200  # --chunk-chars: the seed project's long-text setting
MIN_CHUNK_CHARS, MAX_CHUNK_CHARS = 20, 2000  # a clause at least, a page at most per LLM pass

# Pauses inserted after a chunk, by how the text was cut there (seconds of silence).
PAUSE_PARAGRAPH_S = 0.45  # a blank line or a line break
PAUSE_SENTENCE_S = 0.25  # . ! ? 。 ！ ？ …
PAUSE_CLAUSE_S = 0.15  # ; , ， 、 and the like, where a long sentence was cut
PAUSE_WORD_S = 0.06  # a cut at a space or between CJK characters (no punctuation there)

SENTENCE_END = "。！？!?…"
SEMICOLONS = ";；"
CLAUSE_MARKS = ",，、:：;；"
CLOSERS = "\"'”’」』）)】]》〉"
# Lower-case forms of abbreviations that do not end a sentence when followed by a period.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e no nos fig figs vol vols inc ltd co corp dept est "
    "approx jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k a.m p.m ph.d".split()
)

# Pieces that are never cut: a bracketed tag, a number (3.14, 1,000, 12:30), a Latin word (with
# inner apostrophes, hyphens or periods as in "e.g" / "U.S"), a run of spaces, or one other char.
_ATOM = re.compile(
    r"\[[^\[\]\n]{1,40}\]"
    r"|\d+(?:[.,:]\d+)*"
    r"|[A-Za-z\u00C0-\u024F\uAC00-\uD7A3]+(?:['’\-.][A-Za-z\u00C0-\u024F\uAC00-\uD7A3]+)*"
    r"|[ \t\u3000]+"
    r"|\n"
    r"|\.{3}"
    r"|.",
    re.DOTALL,
)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class TextChunk:
    """One piece of text for one LLM pass: its characters and the pause that follows it (seconds)."""

    text: str
    pause_s: float


@dataclass(frozen=True)
class _Piece:
    text: str
    pause_s: float  # pause after the piece if a chunk ends here


def split_sentences(text: str) -> list[_Piece]:
    """Sentences of ``text`` (stripped, non-empty) with the pause their ending asks for."""
    atoms = _ATOM.findall(text)
    sentences: list[_Piece] = []
    current: list[str] = []

    def close(pause: float) -> None:
        sentence = "".join(current).strip()
        current.clear()
        if sentence:
            sentences.append(_Piece(sentence, pause))
        elif sentences and pause > sentences[-1].pause_s:  # a blank line deepens the previous pause
            sentences[-1] = _Piece(sentences[-1].text, pause)

    i = 0
    while i < len(atoms):
        atom = atoms[i]
        if atom == "\n":
            close(PAUSE_PARAGRAPH_S)
            i += 1
            continue
        current.append(atom)
        i += 1
        if _ends_sentence(atom, atoms, i, current):
            while i < len(atoms) and atoms[i] in CLOSERS:  # keep closing quotes with their sentence
                current.append(atoms[i])
                i += 1
            close(PAUSE_CLAUSE_S if atom in SEMICOLONS else PAUSE_SENTENCE_S)
    close(PAUSE_SENTENCE_S)
    return sentences


def _ends_sentence(atom: str, atoms: list[str], nxt: int, current: list[str]) -> bool:
    if atom in SENTENCE_END or atom in SEMICOLONS:
        return not (nxt < len(atoms) and atoms[nxt] in SENTENCE_END)  # "?!" ends once, at its end
    if atom not in (".", "..."):
        return False
    following = atoms[nxt] if nxt < len(atoms) else None
    if following is not None and not following.isspace() and following not in CLOSERS:
        return False  # "3.x", "file.txt", ".com": no space after the period
    previous = next((a for a in reversed(current[:-1]) if a.strip()), "")
    if atom == "." and previous.lower() in ABBREVIATIONS:
        return False
    if atom == "." and len(previous) == 1 and previous.isupper():  # an initial: "J. K. Rowling"
        return False
    after = next((a for a in atoms[nxt:] if a.strip() and a not in CLOSERS), None)
    return after is None or not after[:1].islower()  # "approx. three" continues the sentence


def split_text(text: str, max_chars: int = DEFAULT_CHUNK_CHARS) -> list[TextChunk]:
    """Chunks of at most ``max_chars`` characters covering ``text`` in order (no empty chunk).

    The last chunk's pause is 0. ``max_chars`` below 8 is raised to 8 so a chunk holds a word.
    """
    max_chars = max(8, int(max_chars))
    pieces: list[_Piece] = []
    for sentence in split_sentences(text):
        pieces += _fit(sentence, max_chars)
    chunks: list[TextChunk] = []
    text_parts: list[str] = []
    pause = 0.0
    for piece in pieces:
        joined = _join(text_parts + [piece.text])
        if text_parts and len(joined) > max_chars:
            chunks.append(TextChunk(_join(text_parts), pause))
            text_parts = []
        text_parts.append(piece.text)
        pause = piece.pause_s
    if text_parts:
        chunks.append(TextChunk(_join(text_parts), 0.0))
    return chunks


def _join(parts: list[str]) -> str:
    """Join sentences with a space between Latin text and nothing between CJK text."""
    out = ""
    for part in parts:
        if out and not (_CJK.match(out[-1]) or _CJK.match(part[0])):
            out += " "
        out += part
    return out


def _fit(piece: _Piece, max_chars: int) -> list[_Piece]:
    """Cut one over-long sentence at clause marks, then at spaces / CJK boundaries."""
    if len(piece.text) <= max_chars:
        return [piece]
    atoms = _ATOM.findall(piece.text)
    clauses = _cut(atoms, lambda a: a in CLAUSE_MARKS, PAUSE_CLAUSE_S)
    out: list[_Piece] = []
    for clause in clauses:
        if len(clause.text) <= max_chars:
            out.append(clause)
            continue
        words = _cut(_ATOM.findall(clause.text), lambda a: a.isspace() or bool(_CJK.match(a)), PAUSE_WORD_S)
        out += _pack_words(words, max_chars, clause.pause_s)
    if out:
        out[-1] = _Piece(out[-1].text, piece.pause_s)
    return _pack_words(out, max_chars, piece.pause_s) if out else []


def _cut(atoms: list[str], is_cut: Callable[[str], bool], pause: float) -> list[_Piece]:
    """Split atoms after every atom ``is_cut`` accepts (the atom stays with the left part)."""
    pieces, current = [], []
    for atom in atoms:
        current.append(atom)
        if is_cut(atom):
            text = "".join(current).strip()
            if text:
                pieces.append(_Piece(text, pause))
            current = []
    text = "".join(current).strip()
    if text:
        pieces.append(_Piece(text, pause))
    return pieces


def _pack_words(pieces: list[_Piece], max_chars: int, last_pause: float) -> list[_Piece]:
    """Greedy packing of small pieces into pieces of at most ``max_chars`` (one that alone is
    longer, e.g. a 300-letter "word", is kept whole rather than cut inside)."""
    out: list[_Piece] = []
    parts: list[str] = []
    pause = last_pause
    for piece in pieces:
        if parts and len(_join(parts + [piece.text])) > max_chars:
            out.append(_Piece(_join(parts), pause))
            parts = []
        parts.append(piece.text)
        pause = piece.pause_s
    if parts:
        out.append(_Piece(_join(parts), last_pause))
    return out
