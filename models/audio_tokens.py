"""The dual-codebook audio-token layout, defined once (tokenizer, LLM prompts, LLM output, vocoder).

Codes come in two streams: vq02 (linguistic, 16.67 Hz, 1024 codes) and vq06 (semantic, 25 Hz,
4096 codes). They are interleaved in groups of 2 vq02 then 3 vq06 (41.67 tokens/s). In the
"mixed stream" a vq02 code keeps its value N in [0, 1024) and a vq06 code c becomes N = 1024 + c
in [1024, 5120). The LLM sees ``<audio_N>`` as token id 65536 + N; the text form is ``<audio_N>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

AUDIO_ID_OFFSET = 65536  # LLM id of <audio_0>
VQ02_CODES = 1024
VQ06_CODES = 4096
AUDIO_CODES = VQ02_CODES + VQ06_CODES  # mixed-stream ids are in [0, AUDIO_CODES)
VQ02_PER_GROUP, VQ06_PER_GROUP = 2, 3
GROUP_SIZE = VQ02_PER_GROUP + VQ06_PER_GROUP
GROUP_KINDS = (0,) * VQ02_PER_GROUP + (1,) * VQ06_PER_GROUP  # 0: vq02, 1: vq06, in group order
VQ06_RATE_HZ = 25  # semantic tokens per second; a group spans 3 of them (0.12 s)
GROUP_SECONDS = VQ06_PER_GROUP / VQ06_RATE_HZ
TOKENS_PER_SECOND = GROUP_SIZE / GROUP_SECONDS  # 41.67 mixed tokens per second of audio

AUDIO_TOKEN_RE = re.compile(r"<audio_(\d+)>")


def kind(code: int) -> int:
    """0 for a vq02 code in [0, 1024), 1 for a vq06 code in [1024, 5120)."""
    return 0 if code < VQ02_CODES else 1


def n_groups(vq02: Sequence[int], vq06: Sequence[int]) -> int:
    """Number of whole 2+3 groups the two streams make: ``min(len(vq02) // 2, len(vq06) // 3)``."""
    return min(len(vq02) // VQ02_PER_GROUP, len(vq06) // VQ06_PER_GROUP)


def interleave(vq02: Sequence[int], vq06: Sequence[int]) -> list[int]:
    """Mixed-stream codes ``[a, b, 1024+x, 1024+y, 1024+z, ...]`` for the whole groups only."""
    mixed: list[int] = []
    for g in range(n_groups(vq02, vq06)):
        mixed += [int(c) for c in vq02[g * VQ02_PER_GROUP : (g + 1) * VQ02_PER_GROUP]]
        mixed += [VQ02_CODES + int(c) for c in vq06[g * VQ06_PER_GROUP : (g + 1) * VQ06_PER_GROUP]]
    return mixed


def to_llm_ids(mixed: Iterable[int]) -> list[int]:
    """Mixed-stream codes -> LLM token ids (``+ 65536``)."""
    return [AUDIO_ID_OFFSET + int(c) for c in mixed]


def token_str(mixed: Iterable[int]) -> str:
    """Mixed-stream codes -> the text form ``"<audio_N><audio_M>..."``."""
    return "".join(f"<audio_{int(c)}>" for c in mixed)


def codes_in(text: str) -> list[int]:
    """The N of every ``<audio_N>`` in ``text``, in order."""
    return [int(n) for n in AUDIO_TOKEN_RE.findall(text)]


def realign_groups(codes: Sequence[int]) -> tuple[list[int], int]:
    """Keep only whole [02, 02, 06, 06, 06] groups from mixed-stream codes; returns (codes, dropped).

    A token of the wrong kind is dropped on its own, so one stray token does not shift the groups
    after it; when it starts a run of its kind (the next token has the same kind), the partial group
    before it is abandoned instead, since a new group has begun (or, for vq06, an orphaned run is
    being skipped). The reference code does not realign, and a stray token garbles its audio.
    """
    aligner = GroupAligner()
    out: list[int] = []
    for code in codes:
        out += aligner.push(code)
    out += aligner.finish()
    return out, aligner.dropped


class GroupAligner:
    """``realign_groups`` for a stream that arrives token by token (the LLM's output as it is sampled).

    ``push(code)`` returns the whole groups that became final with it (a list of 0 or more codes).
    The decision about a token can depend on the next one, so one token is held back until the
    next arrives or ``finish()`` is called. Pushing all codes and finishing gives exactly
    ``realign_groups(codes)``.
    """

    def __init__(self) -> None:
        self._pending: int | None = None
        self._group: list[int] = []
        self.dropped = 0

    def push(self, code: int) -> list[int]:
        previous, self._pending = self._pending, int(code)
        return [] if previous is None else self._decide(previous, kind(code))

    def finish(self) -> list[int]:
        """Flush the held-back token; returns the last whole group (if any). ``dropped`` is final."""
        previous, self._pending = self._pending, None
        out = [] if previous is None else self._decide(previous, None)
        self.dropped += len(self._group)
        self._group = []
        return out

    def _decide(self, code: int, next_kind: int | None) -> list[int]:
        k = kind(code)
        if k == GROUP_KINDS[len(self._group)]:
            self._group.append(code)
            if len(self._group) == GROUP_SIZE:
                done, self._group = self._group, []
                return done
            return []
        if next_kind == k:
            self.dropped += len(self._group)
            self._group = []
            if k == GROUP_KINDS[0]:
                self._group.append(code)
                return []
        self.dropped += 1
        return []
