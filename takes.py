"""Takes of a text chunk: their seeds, what each made, and which one is kept (best-of-N).

    seed = chunk_seed(request_seed, chunk, take)    # the request's seed for chunk 0, take 0
    kept = choose(takes, accept_error_rate)         # None when no take made audio

Chunk k of a request samples with ``seed + k * CHUNK_SEED_STEP``, each further take of it (a retry,
or best-of-N) adds ``RETRY_SEED_STEP``. The first take whose error rate is under the threshold is
kept, else the lowest error rate (ties: the highest similarity); a take cut short by Stop is kept
only when no other take made audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scoring import Score

SEED_SPACE = 2**32
CHUNK_SEED_STEP = 7919  # chunk k of a request samples with seed + k * step (a prime: no overlaps)
RETRY_SEED_STEP = 104729  # each further take of a chunk (a retry, or best-of-N) adds this


def chunk_seed(seed: int, chunk: int, attempt: int = 0) -> int:
    """The seed of text chunk ``chunk`` (0-based), take ``attempt``: the request's seed for the first."""
    return (int(seed) + CHUNK_SEED_STEP * chunk + RETRY_SEED_STEP * attempt) % SEED_SPACE


@dataclass
class Take:
    """One generation of a text chunk: its seed, whole-group tokens and raw 24 kHz audio pieces (as
    the vocoder made them, before the joiner's fades), and its scores once checked."""

    seed: int
    live: bool = False  # its pieces are played as they are made (one take per chunk)
    tokens: list[int] = field(default_factory=list)
    pieces: list[np.ndarray] = field(default_factory=list)
    stopped: bool = False  # Stop cut this take short
    score: Score | None = None

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)

    @property
    def similarity(self) -> float | None:
        return self.score.similarity if self.score is not None else None

    @property
    def error_rate(self) -> float | None:
        return self.score.error_rate if self.score is not None else None


def acceptable(take: Take, accept_error_rate: float) -> bool:
    """Whether ``take`` is scored with an error rate under ``accept_error_rate`` (it can be kept at once)."""
    return take.error_rate is not None and take.error_rate < accept_error_rate


def choose(takes: list[Take], accept_error_rate: float) -> Take | None:
    """The take to keep (None when none made audio); a take cut by Stop only when it is alone."""
    made = [t for t in takes if t.tokens]
    candidates = [t for t in made if not t.stopped] or made
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    for take in candidates:
        if acceptable(take, accept_error_rate):
            return take
    return min(
        candidates,
        key=lambda t: (
            math.inf if t.error_rate is None else t.error_rate,
            -math.inf if t.similarity is None else -t.similarity,
        ),
    )
