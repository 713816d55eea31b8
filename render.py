"""Rendering one request: text chunks -> LLM token streams -> vocoder -> one joined 24 kHz waveform.

    render = Render(llm, vocoder, jobs, options, seed, cancel, report, started, scorer)
    for event in render.events():        # AudioPiece and Progress, as they happen
        ...
    render.audio, render.segments, render.tokens, render.warnings, render.stopped
    result = render.result(mode, text, prompt_text, transcribed, warnings)   # SynthesisResult

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
the lowest error rate (ties: the highest similarity); its audio is emitted once it is chosen. The
seeds and that choice live in ``takes.py``; the jobs come from ``jobs.py``; while streaming, the LLM
samples ahead in a thread of its own (``prefetch.Prefetched``) on the CPU and with vLLM, and inline
on a GPU (``runs_ahead``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np

from audio_join import ChunkJoiner
from audio_prep import VOCODER_SAMPLE_RATE
from errors import EmptyGenerationError, GenerationCancelled
from jobs import ChunkJob
from models.audio_tokens import TOKENS_PER_SECOND, GroupAligner
from models.generation import GenerationOptions, TokenStreamLLM, audio_code
from models.vocoder import Vocoder
from prefetch import Prefetched
from reports import ChunkReport, StageReport, TakeScore
from scoring import Scorer
from synthesis import (
    DEFAULT_ACCEPT_ERROR_RATE,
    AudioPiece,
    Progress,
    Segment,
    SynthesisOptions,
    SynthesisResult,
)
from takes import Take, acceptable, choose, chunk_seed

log = logging.getLogger(__name__)

PREFETCH_TOKENS = 256  # tokens the LLM may run ahead of the streaming vocoder


class Render:
    """One request's chunk loop; iterate ``events()`` once, then read the results."""

    def __init__(
        self,
        llm: TokenStreamLLM,
        vocoder: Vocoder,
        jobs: list[ChunkJob],
        options: SynthesisOptions,
        seed: int,
        cancel: threading.Event | None,
        report: StageReport,
        started: float,
        scorer: Scorer | None = None,
        accept_error_rate: float = DEFAULT_ACCEPT_ERROR_RATE,
    ):
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

    def result(
        self, mode: str, text: str, prompt_text: str, transcribed: bool, warnings: list[str]
    ) -> SynthesisResult:
        """The request's result once ``events()`` has run (the report's totals filled in); an error
        when no chunk made audio. ``text`` is what was asked for (the spoken words when some chunk
        made none); ``warnings`` are the prep's, the render's own follow them."""
        audio, report = self.audio, self.report
        report.seed, report.stream, report.stopped = self.seed, self.options.stream, self.stopped
        report.audio_s = len(audio) / VOCODER_SAMPLE_RATE
        report.tokens_per_s = report.new_tokens / report.llm_s if report.llm_s > 0 else 0.0
        report.total_s = time.perf_counter() - self.started
        warnings = warnings + self.warnings
        if not self.segments:
            if self.stopped:
                raise GenerationCancelled("stopped before any audio was made")
            raise EmptyGenerationError(
                f"the model produced no audio for any of the {len(self.jobs)} text "
                "chunk(s); try another seed or a clearer reference clip"
            )
        log.info("%s breakdown: %s", mode, report.summary())
        spoken = " ".join(segment.text for segment in self.segments)
        return SynthesisResult(
            audio=audio,
            sample_rate=VOCODER_SAMPLE_RATE,
            text=spoken if len(self.segments) < len(self.jobs) else text,
            prompt_text=prompt_text,
            transcribed=transcribed,
            mode=mode,
            variant=self.llm.variant,
            backend=self.llm.backend,
            report=report,
            audio_tokens=list(self.tokens),
            warnings=warnings,
            segments=self.segments,
            stopped=self.stopped,
        )

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
                log.info(
                    "chunk %d/%d: %s with seed %d",
                    index + 1,
                    len(self.jobs),
                    f"take {number + 1} of {best_of}" if stage == "take" else "no audio; trying again",
                    seed,
                )
                yield Progress(index + 1, len(self.jobs), self._llm_audio_s, stage=stage)
            take = Take(seed, live=best_of == 1)
            takes.append(take)
            chunk_report.attempts = len(takes)
            yield from self._take(index, job, take, chunk_report)
            if take.tokens and not take.stopped and self.scorer is not None:
                yield Progress(index + 1, len(self.jobs), self._llm_audio_s, stage="score")
                self._score(index, job, take, chunk_report)
            chunk_report.takes.append(TakeScore(seed, take.similarity, take.error_rate))
            if self.stopped or (take.tokens and (best_of == 1 or acceptable(take, self.accept_error_rate))):
                break
        kept = choose(takes, self.accept_error_rate)
        if kept is None:
            chunk_report.seed = takes[-1].seed
            if self.stopped:
                return
            chunk_report.warning = (
                f"text chunk {index + 1} of {len(self.jobs)} produced no audio with "
                f"{len(takes)} seeds and is missing: {_quote(job.text)}"
            )
            self.warnings.append(chunk_report.warning)
            log.warning("%s", chunk_report.warning)
            return
        self._llm_audio_s -= sum(len(t.tokens) for t in takes if t is not kept) / TOKENS_PER_SECOND
        yield from self._keep(index, kept, chunk_report)

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
            take.score = self.scorer.score(
                take.audio, VOCODER_SAMPLE_RATE, job.text, job.voice.features.speaker_embedding
            )
        except Exception:  # a failed check must never cost the audio: the take stays unscored
            log.warning(
                "chunk %d/%d: scoring the take with seed %d failed; it stays unscored",
                index + 1,
                len(self.jobs),
                take.seed,
                exc_info=True,
            )
        seconds = time.perf_counter() - t0
        chunk_report.scored_s += seconds
        self.report.score_s += seconds
        if take.score is not None:
            log.info(
                "chunk %d/%d, seed %d: similarity %s, %s %s in %.3f s",
                index + 1,
                len(self.jobs),
                take.seed,
                _fmt(take.similarity),
                take.score.metric or "error rate",
                _fmt(take.error_rate),
                seconds,
            )

    def _take(self, index: int, job: ChunkJob, take: Take, chunk_report: ChunkReport):
        """One LLM pass (+ vocoder) of a chunk into ``take``; yields events (audio only when live)."""
        options = self.options
        seed = take.seed
        generation = GenerationOptions(
            temperature=options.temperature,
            top_p=options.top_p,
            seed=seed,
            max_length=options.max_length,
            max_new_tokens=options.max_new_tokens,
        )
        ids = job.prompt_ids()
        self.report.prompt_tokens = max(self.report.prompt_tokens, len(ids))
        session = (
            self.vocoder.stream(job.voice.mixed_tokens, job.voice.features, options.flow_steps, seed)
            if options.stream
            else None
        )
        aligner = GroupAligner()
        tokens = take.tokens
        new = dropped_text = 0
        try:
            stream = self.llm.stream_ids(ids, generation, self.cancel)
            if session is not None and runs_ahead(self.llm):  # sample on while the vocoder works
                stream = Prefetched(stream, PREFETCH_TOKENS)
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
                        if not isinstance(stream, Prefetched):
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
                audio = self.vocoder.decode(
                    tokens, job.voice.mixed_tokens, job.voice.features, n_steps=options.flow_steps, seed=seed
                )
                self._add_vocoder(chunk_report, time.perf_counter() - t0)
                yield from self._made(index, take, np.asarray(audio, dtype=np.float32).reshape(-1))
        finally:
            if session is not None:
                session.close()

    def _vocode_stream(
        self, index: int, session, groups: list[int], last: bool, chunk_report: ChunkReport, take: Take
    ) -> Iterator[AudioPiece]:
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


def runs_ahead(llm: TokenStreamLLM) -> bool:
    """Whether a streaming request samples the LLM in a thread of its own (``Prefetched``).

    Yes for an LLM on the CPU (the vocoder gets the other cores meanwhile) and for vLLM (another
    process). Not for a native LLM on a GPU: both models queue on the same CUDA stream, so the
    thread buys no overlap, and on an H200 it cut the LLM from 122 to 15 tokens/s at real width
    (scripts/benchmark.py ttfa, docs/STREAMING.md); there the groups are vocoded between tokens.
    """
    return getattr(getattr(llm, "device", None), "type", None) != "cuda"  # vLLM's device is a str


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
