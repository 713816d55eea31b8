"""Rendering one request: text chunks -> LLM token streams -> vocoder -> one joined 24 kHz waveform.

    render = Render(llm, vocoder, jobs, options, seed, cancel, report)
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
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from audio_join import ChunkJoiner
from audio_prep import VOCODER_SAMPLE_RATE
from errors import GenerationCancelled
from models.audio_tokens import TOKENS_PER_SECOND, GroupAligner
from models.generation import GenerationOptions, TokenStreamLLM, audio_code
from models.vocoder import Vocoder
from synthesis import AudioPiece, ChunkReport, Progress, Segment, StageReport, SynthesisOptions, VoicePrompt

log = logging.getLogger(__name__)

SEED_SPACE = 2**32
CHUNK_SEED_STEP = 7919  # chunk k of a request samples with seed + k * step (a prime: no overlaps)
RETRY_SEED_STEP = 104729  # the retry of a chunk that made no audio adds this
PREFETCH_TOKENS = 256  # tokens the LLM may run ahead of the streaming vocoder


def chunk_seed(seed: int, chunk: int, attempt: int = 0) -> int:
    """The seed of text chunk ``chunk`` (0-based), try ``attempt``: the request's seed for the first."""
    return (int(seed) + CHUNK_SEED_STEP * chunk + RETRY_SEED_STEP * attempt) % SEED_SPACE


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
                 report: StageReport, started: float):
        self.llm, self.vocoder, self.jobs = llm, vocoder, jobs
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
        chunk_report = ChunkReport(text=job.text, seed=chunk_seed(self.seed, index))
        self.report.chunks.append(chunk_report)
        for attempt in range(2):
            seed = chunk_seed(self.seed, index, attempt)
            chunk_report.seed, chunk_report.attempts = seed, attempt + 1
            made = yield from self._attempt(index, job, seed, chunk_report)
            if made or self.stopped:
                return
            if attempt == 0:
                log.info("chunk %d/%d: no audio with seed %d; trying seed %d", index + 1, len(self.jobs),
                         seed, chunk_seed(self.seed, index, 1))
                yield Progress(index + 1, len(self.jobs), self._llm_audio_s, stage="retry")
        chunk_report.warning = (f"text chunk {index + 1} of {len(self.jobs)} produced no audio with two "
                                f"seeds and is missing: {_quote(job.text)}")
        self.warnings.append(chunk_report.warning)
        log.warning("%s", chunk_report.warning)

    def _attempt(self, index: int, job: ChunkJob, seed: int, chunk_report: ChunkReport):
        """One LLM pass (+ vocoder) of a chunk; yields events, returns whether it made audio."""
        options = self.options
        generation = GenerationOptions(temperature=options.temperature, top_p=options.top_p, seed=seed,
                                       max_length=options.max_length, max_new_tokens=options.max_new_tokens)
        ids = job.prompt_ids()
        self.report.prompt_tokens = max(self.report.prompt_tokens, len(ids))
        session = (self.vocoder.stream(job.voice.mixed_tokens, job.voice.features, options.flow_steps, seed)
                   if options.stream else None)
        aligner = GroupAligner()
        tokens: list[int] = []
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
                        self.stopped = True
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
                            yield from self._vocode_stream(index, session, groups, False, chunk_report)
            if isinstance(stream, Prefetched):  # its own clock: the LLM ran beside the vocoder
                self._add_llm(chunk_report, stream.busy_s)
            final = aligner.finish()
            tokens += final
            self._llm_audio_s += len(final) / TOKENS_PER_SECOND
            self._count(chunk_report, new, len(tokens), aligner.dropped + dropped_text)
            if not tokens:
                return False
            if session is not None:
                yield from self._vocode_stream(index, session, final, True, chunk_report)
            else:
                yield Progress(index + 1, len(self.jobs), self._llm_audio_s, stage="vocoder")
                t0 = time.perf_counter()
                audio = self.vocoder.decode(tokens, job.voice.mixed_tokens, job.voice.features,
                                            n_steps=options.flow_steps, seed=seed)
                self._add_vocoder(chunk_report, time.perf_counter() - t0)
                yield from self._emit(index, np.asarray(audio, dtype=np.float32).reshape(-1))
        finally:
            if session is not None:
                session.close()
        self.tokens += tokens
        self.segments[-1].tokens = tokens
        chunk_report.audio_s = len(tokens) / TOKENS_PER_SECOND
        return True

    def _vocode_stream(self, index: int, session, groups: list[int], last: bool,
                       chunk_report: ChunkReport) -> Iterator[AudioPiece]:
        t0 = time.perf_counter()
        piece = session.feed(groups, last=last)
        self._add_vocoder(chunk_report, time.perf_counter() - t0)
        if piece is not None and piece.size:
            yield from self._emit(index, piece)

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

    def _count(self, chunk_report: ChunkReport, new: int, kept: int, dropped: int) -> None:
        chunk_report.new_tokens += new
        chunk_report.audio_tokens = kept
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


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")
