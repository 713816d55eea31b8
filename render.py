"""Rendering one request: text chunks -> LLM token streams -> vocoder -> one joined 24 kHz waveform.

    render = Render(llm, vocoder, jobs, options, seed, cancel, report, started, scorer)
    for event in render.events():        # AudioPiece and Progress, as they happen
        ...
    render.audio, render.segments, render.tokens, render.warnings, render.stopped

Each text chunk is one LLM pass with the chunk's own prompt; its tokens are realigned to whole
2+3 groups as they are sampled. With ``options.stream`` the groups go straight into a streaming
vocoder session (``models/vocoder_stream.py``) and audio comes out in pieces while the LLM is still
sampling; otherwise each chunk is vocoded whole once its tokens are complete (the reference's
non-streaming path). Chunks are joined with a fade and a natural pause (``audio_join.py``). A chunk
that yields no audio is tried once more with another seed, then reported in ``warnings``. Stop
(the ``cancel`` event) ends the LLM at the next token; the tokens made so far are still vocoded.

With a ``scorer`` (``scoring.py``) each take is scored once its audio is made: speaker similarity
to the chunk's voice prompt and error rate against the chunk's text (``ChunkReport``). With
``options.best_of`` N > 1 a chunk is generated up to N times with the seeds ``chunk_seed(seed,
chunk, take)`` and the first take whose error rate is under ``accept_error_rate`` is kept, else
the lowest error rate (ties: the highest similarity); its audio is emitted once it is chosen.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from audio_join import ChunkJoiner
from audio_prep import VOCODER_SAMPLE_RATE
from errors import GenerationCancelled
from models.audio_tokens import TOKENS_PER_SECOND, GroupAligner
from models.generation import GenerationOptions, TokenStreamLLM, audio_code
from models.vocoder import Vocoder
from scoring import Score, Scorer
from synthesis import (
    DEFAULT_ACCEPT_ERROR_RATE,
    AudioPiece,
    ChunkReport,
    Progress,
    Segment,
    StageReport,
    SynthesisOptions,
    TakeScore,
    VoicePrompt,
)

log = logging.getLogger(__name__)

SEED_SPACE = 2**32
CHUNK_SEED_STEP = 7919  # chunk k of a request samples with seed + k * step (a prime: no overlaps)
RETRY_SEED_STEP = 104729  # each further take of a chunk (a retry, or best-of-N) adds this
PREFETCH_TOKENS = 256  # tokens the LLM may run ahead of the streaming vocoder


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


@dataclass
class ChunkJob:
    """One LLM pass: the words it says, how to build its prompt, the vocoder prompt, the pause after."""

    text: str
    prompt_ids: Callable[[], list[int]]
    voice: VoicePrompt
    pause_s: float


class Render:
    """One request's chunk loop; iterate ``events()`` once, then read the results."""

    def __init__(self, llm: TokenStreamLLM, vocoder: Vocoder, jobs: list[ChunkJob],
                 options: SynthesisOptions, seed: int, cancel: threading.Event | None,
                 report: StageReport, started: float, scorer: Scorer | None = None,
                 accept_error_rate: float = DEFAULT_ACCEPT_ERROR_RATE):
        self.llm, self.vocoder, self.jobs = llm, vocoder, jobs
        self.scorer, self.accept_error_rate = scorer, float(accept_error_rate)
        report.scored = scorer is not None
        self.options, self.seed, self.cancel = options, int(seed), cancel
        self.report, self.started = report, started
        self.joiner = ChunkJoiner(VOCODER_SAMPLE_RATE)
        self.pieces: list[np.ndarray] = []
        self.segments: list[Segment] = []
        self.tokens: list[int] = []
        self.warnings: list[str] = []
        self.stopped = False
        self._segment_job = -1  # index of the job whose segment is open
        self._pending_pause: float | None = None  # pause owed before the next chunk's first sample
        self._llm_audio_s = 0.0

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, np.float32)

    def events(self) -> Iterator[AudioPiece | Progress]:
        for index, job in enumerate(self.jobs):
            yield Progress(index + 1, len(self.jobs), self._llm_audio_s)
            yield from self._chunk(index, job)
            if self.stopped:
                break
        tail = self.joiner.finish()
        if tail.size:
            yield self._piece(tail, max(0, len(self.segments) - 1))

    # ---- one chunk -----------------------------------------------------------------------------

    def _chunk(self, index: int, job: ChunkJob) -> Iterator[AudioPiece | Progress]:
        """Takes of one chunk until one is kept: with best-of-N, the first whose error rate is under
        the threshold, else the lowest error rate (ties: the highest similarity). One take (N = 1)
        plays as it is made; with N > 1 a take's audio waits until the chunk's choice is made. A
        take without audio is tried once more with the next seed when N = 1, and counts as one of
        the N otherwise, so no chunk ever runs more than max(N, 2) generations (N when N > 1)."""
        chunk_report = ChunkReport(text=job.text, seed=chunk_seed(self.seed, index))
        self.report.chunks.append(chunk_report)
        best_of = self.options.best_of if self.scorer is not None else 1
        takes: list[Take] = []
        for number in range(max(best_of, 2)):
            if number >= best_of and any(take.tokens for take in takes):
                break
            seed = chunk_seed(self.seed, index, number)
            if number:
                stage = "take" if takes[-1].tokens else "retry"
                log.info("chunk %d/%d: %s with seed %d", index + 1, len(self.jobs),
                         f"take {number + 1} of {best_of}" if stage == "take" else "no audio; trying again",
                         seed)
                yield Progress(index + 1, len(self.jobs), self._llm_audio_s, stage=stage)
            take = Take(seed, live=best_of == 1)
            takes.append(take)
            chunk_report.attempts = len(takes)
            yield from self._take(index, job, take, chunk_report)
            if take.tokens and not take.stopped and self.scorer is not None:
                yield Progress(index + 1, len(self.jobs), self._llm_audio_s, stage="score")
                self._score(index, job, take, chunk_report)
            chunk_report.takes.append(TakeScore(seed, take.similarity, take.error_rate))
            if self.stopped or (take.tokens and (best_of == 1 or self._acceptable(take))):
                break
        kept = self._choose(takes)
        if kept is None:
            chunk_report.seed = takes[-1].seed
            if self.stopped:
                return
            chunk_report.warning = (f"text chunk {index + 1} of {len(self.jobs)} produced no audio with "
                                    f"{len(takes)} seeds and is missing: {_quote(job.text)}")
            self.warnings.append(chunk_report.warning)
            log.warning("%s", chunk_report.warning)
            return
        self._llm_audio_s -= sum(len(t.tokens) for t in takes if t is not kept) / TOKENS_PER_SECOND
        yield from self._keep(index, kept, chunk_report)

    def _acceptable(self, take: Take) -> bool:
        return take.error_rate is not None and take.error_rate < self.accept_error_rate

    def _choose(self, takes: list[Take]) -> Take | None:
        """The take to keep (None when none made audio); a take cut by Stop only when it is alone."""
        made = [t for t in takes if t.tokens]
        candidates = [t for t in made if not t.stopped] or made
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        for take in candidates:
            if self._acceptable(take):
                return take
        return min(candidates, key=lambda t: (math.inf if t.error_rate is None else t.error_rate,
                                              -math.inf if t.similarity is None else -t.similarity))

    def _keep(self, index: int, take: Take, chunk_report: ChunkReport) -> Iterator[AudioPiece]:
        """Emit the kept take (unless it already played) and record it as the chunk's segment."""
        if not take.live:
            for piece in take.pieces:
                yield from self._emit(index, piece)
        if self._segment_job != index:  # a take whose vocoder gave no samples still has its segment
            yield from self._emit(index, np.zeros(0, np.float32))
        self.tokens += take.tokens
        self.segments[-1].tokens = take.tokens
        chunk_report.seed, chunk_report.audio_tokens = take.seed, len(take.tokens)
        chunk_report.audio_s = len(take.tokens) / TOKENS_PER_SECOND
        if take.score is not None:
            score = take.score
            chunk_report.similarity, chunk_report.error_rate = score.similarity, score.error_rate
            chunk_report.metric, chunk_report.transcript = score.metric, score.transcript
            chunk_report.reference_tokens, chunk_report.score_note = score.reference_tokens, score.reason

    def _score(self, index: int, job: ChunkJob, take: Take, chunk_report: ChunkReport) -> None:
        """Score a finished take (similarity to the chunk's voice prompt, error rate against its text)."""
        if self.scorer is None:
            return
        t0 = time.perf_counter()
        try:
            take.score = self.scorer.score(take.audio, VOCODER_SAMPLE_RATE, job.text,
                                           job.voice.features.speaker_embedding)
        except Exception:  # a failed check must never cost the audio: the take stays unscored
            log.warning("chunk %d/%d: scoring the take with seed %d failed; it stays unscored",
                        index + 1, len(self.jobs), take.seed, exc_info=True)
        seconds = time.perf_counter() - t0
        chunk_report.scored_s += seconds
        self.report.score_s += seconds
        if take.score is not None:
            log.info("chunk %d/%d, seed %d: similarity %s, %s %s in %.3f s", index + 1, len(self.jobs),
                     take.seed, _fmt(take.similarity), take.score.metric or "error rate",
                     _fmt(take.error_rate), seconds)

    def _take(self, index: int, job: ChunkJob, take: Take, chunk_report: ChunkReport):
        """One LLM pass (+ vocoder) of a chunk into ``take``; yields events (audio only when live)."""
        options = self.options
        seed = take.seed
        generation = GenerationOptions(temperature=options.temperature, top_p=options.top_p, seed=seed,
                                       max_length=options.max_length, max_new_tokens=options.max_new_tokens)
        ids = job.prompt_ids()
        self.report.prompt_tokens = max(self.report.prompt_tokens, len(ids))
        session = (self.vocoder.stream(job.voice.mixed_tokens, job.voice.features, options.flow_steps, seed)
                   if options.stream else None)
        aligner = GroupAligner()
        tokens = take.tokens
        new = dropped_text = 0
        try:
            stream = self.llm.stream_ids(ids, generation, self.cancel)
            if session is not None:  # sample the next tokens while the vocoder works on these
                stream = Prefetched(stream)
            with contextlib.closing(stream):
                while True:
                    t0 = time.perf_counter()
                    try:
                        token = next(stream)
                    except StopIteration:
                        break
                    except GenerationCancelled:
                        self.stopped = take.stopped = True
                        break
                    finally:
                        if session is None:
                            self._add_llm(chunk_report, time.perf_counter() - t0)
                    new += 1
                    if token == self.llm.eos_id:
                        break
                    code = audio_code(token)
                    if code is None:
                        dropped_text += 1
                        continue
                    groups = aligner.push(code)
                    if groups:
                        tokens += groups
                        self._llm_audio_s += len(groups) / TOKENS_PER_SECOND
                        yield Progress(index + 1, len(self.jobs), self._llm_audio_s)
                        if session is not None:
                            yield from self._vocode_stream(index, session, groups, False, chunk_report, take)
            if isinstance(stream, Prefetched):  # its own clock: the LLM ran beside the vocoder
                self._add_llm(chunk_report, stream.busy_s)
            final = aligner.finish()
            tokens += final
            self._llm_audio_s += len(final) / TOKENS_PER_SECOND
            self._count(chunk_report, new, aligner.dropped + dropped_text)
            if not tokens:
                return
            if session is not None:
                yield from self._vocode_stream(index, session, final, True, chunk_report, take)
            else:
                yield Progress(index + 1, len(self.jobs), self._llm_audio_s, stage="vocoder")
                t0 = time.perf_counter()
                audio = self.vocoder.decode(tokens, job.voice.mixed_tokens, job.voice.features,
                                            n_steps=options.flow_steps, seed=seed)
                self._add_vocoder(chunk_report, time.perf_counter() - t0)
                yield from self._made(index, take, np.asarray(audio, dtype=np.float32).reshape(-1))
        finally:
            if session is not None:
                session.close()

    def _vocode_stream(self, index: int, session, groups: list[int], last: bool, chunk_report: ChunkReport,
                       take: Take) -> Iterator[AudioPiece]:
        t0 = time.perf_counter()
        piece = session.feed(groups, last=last)
        self._add_vocoder(chunk_report, time.perf_counter() - t0)
        if piece is not None and piece.size:
            yield from self._made(index, take, np.asarray(piece, dtype=np.float32).reshape(-1))

    def _made(self, index: int, take: Take, audio: np.ndarray) -> Iterator[AudioPiece]:
        """New samples of a take: kept with it for its scores, and played at once when it is live."""
        take.pieces.append(audio)
        if take.live:
            yield from self._emit(index, audio)

    # ---- output ------------------------------------------------------------------------------

    def _emit(self, index: int, audio: np.ndarray) -> Iterator[AudioPiece]:
        """Push a chunk's samples through the joiner, opening the chunk's segment on its first."""
        if self._segment_job != index:
            if self._pending_pause is not None:  # the previous chunk ends here: fade out and pause
                yield self._piece(self.joiner.end_chunk(self._pending_pause), len(self.segments) - 1)
            self._segment_job = index
            start = self.joiner.chunk_starts[-1]
            self.segments.append(Segment(self.jobs[index].text, [], start, start))
            self._pending_pause = self.jobs[index].pause_s if index + 1 < len(self.jobs) else None
        self.segments[-1].end += audio.size
        out = self.joiner.push(audio)
        if out.size:
            yield self._piece(out, len(self.segments) - 1)

    def _piece(self, audio: np.ndarray, segment: int) -> AudioPiece:
        if not self.pieces and audio.size:
            self.report.ttfa_s = time.perf_counter() - self.started
        self.pieces.append(audio)
        return AudioPiece(audio=audio, chunk=segment)

    # ---- accounting ----------------------------------------------------------------------------

    def _add_llm(self, chunk_report: ChunkReport, seconds: float) -> None:
        chunk_report.llm_s += seconds
        self.report.llm_s += seconds

    def _add_vocoder(self, chunk_report: ChunkReport, seconds: float) -> None:
        chunk_report.vocoder_s += seconds
        self.report.vocoder_s += seconds

    def _count(self, chunk_report: ChunkReport, new: int, dropped: int) -> None:
        chunk_report.new_tokens += new
        self.report.new_tokens += new
        self.report.dropped_tokens += dropped


class Prefetched:
    """An iterator run ahead in a thread of its own (here: the LLM sampling while the vocoder works).

    Items, the end and any exception arrive in order through a bounded queue. ``close()`` stops the
    producer and closes the source generator in the producer's own thread (a generator holding a
    lock releases it where it took it). ``busy_s`` is the producer's wall time.
    """

    _END = object()

    def __init__(self, source: Iterator, max_ahead: int = PREFETCH_TOKENS):
        self._source = source
        self._items: queue.Queue = queue.Queue(maxsize=max_ahead)
        self._stop = threading.Event()
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._produce, name="llm-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        start = time.perf_counter()
        try:
            for item in self._source:
                if not self._put((True, item)):
                    break
            else:
                self._put((True, self._END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put((False, exc))
        finally:
            self.busy_s = time.perf_counter() - start
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetched:
        return self

    def __next__(self):
        ok, item = self._items.get()
        if not ok:
            raise item
        if item is self._END:
            self._thread.join()
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")
