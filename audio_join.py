"""Joining the audio of consecutive text chunks, as it streams: fade, natural pause, fade back in.

    joiner = ChunkJoiner(24000)
    out = [joiner.push(piece) for piece in first_chunk_pieces]
    out.append(joiner.end_chunk(pause_s=0.25))          # fade out, then the pause
    out += [joiner.push(piece) for piece in second_chunk_pieces]   # fades in
    out.append(joiner.finish())

Each chunk's last ``crossfade`` samples fade out with an equal-power (cosine) curve and the next
chunk's first ``crossfade`` samples fade in (sine) over the end of the pause, so a join of
chunks a and b with pause p is ``len(a) + p - crossfade + len(b)`` samples long: the joined
file is the sum of its chunks and pauses minus one crossfade per join. Every sample is emitted
as soon as it is final: only the last ``crossfade`` samples of the current chunk are held back.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CROSSFADE_S = 0.02  # 20 ms: long enough to hide a click, short enough to keep consonants


class ChunkJoiner:
    """Streaming concatenation of chunk audio (float32 samples) with fades and pauses between chunks."""

    def __init__(self, sample_rate: int, crossfade_s: float = DEFAULT_CROSSFADE_S):
        self.sample_rate = int(sample_rate)
        self.crossfade = max(1, int(round(crossfade_s * self.sample_rate)))
        t = (np.arange(self.crossfade, dtype=np.float64) + 0.5) / self.crossfade
        self._fade_in = np.sin(0.5 * np.pi * t).astype(np.float32)
        self._fade_out = np.cos(0.5 * np.pi * t).astype(np.float32)
        self._held = np.zeros(0, np.float32)  # the current chunk's newest samples, not yet final
        self._seen = 0  # samples of the current chunk received so far
        self._fading_in = False  # the current chunk follows a pause and starts with a fade-in
        self.emitted = 0  # samples returned so far
        self.chunk_starts: list[int] = [0]  # position of each chunk's first sample in the output

    def push(self, audio: np.ndarray) -> np.ndarray:
        """Add samples of the current chunk; returns the samples that are now final."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if self._fading_in and self._seen < self.crossfade and audio.size:
            n = min(self.crossfade - self._seen, audio.size)
            audio = audio.copy()
            audio[:n] *= self._fade_in[self._seen : self._seen + n]
        self._seen += audio.size
        joined = np.concatenate([self._held, audio])
        cut = max(0, joined.size - self.crossfade)
        self._held = joined[cut:]
        return self._emit(joined[:cut])

    def end_chunk(self, pause_s: float) -> np.ndarray:
        """The current chunk is complete and another follows: fade out its end and add ``pause_s`` of
        silence, whose last ``crossfade`` samples carry the next chunk's fade-in. Returns the final
        samples. Call it only once the next chunk has audio (a chunk that makes none adds no pause)."""
        pause = int(round(pause_s * self.sample_rate))
        if pause < self.crossfade:
            raise ValueError(
                f"a pause between chunks must be at least the crossfade "
                f"({self.crossfade / self.sample_rate:.3f} s), got {pause_s} s"
            )
        tail = self._held * self._fade_out[self.crossfade - self._held.size :]
        self._held = np.zeros(0, np.float32)
        self._seen = 0
        self._fading_in = True
        out = self._emit(np.concatenate([tail, np.zeros(pause - self.crossfade, np.float32)]))
        self.chunk_starts.append(self.emitted)
        return out

    def finish(self) -> np.ndarray:
        """The last chunk is complete: returns its held samples (no fade at the very end)."""
        tail, self._held = self._held, np.zeros(0, np.float32)
        return self._emit(tail)

    def _emit(self, samples: np.ndarray) -> np.ndarray:
        self.emitted += samples.size
        return samples
