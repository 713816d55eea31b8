"""Requests and results of the clone / edit engine: the one schema the page, the API and the tools share.

    request = CloneRequest.from_audio("voice.wav", reference_text="", target_text="Hello.")
    result = engine.clone(request)          # SynthesisResult: audio, text, per-stage StageReport

Options are validated here (``SynthesisOptions.validated``), so every front end refuses the same
values with the same message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio_read import read_audio
from errors import OptionsError
from model_layout import ALL_VARIANTS, LLM_BACKENDS
from models.prompt_features import PromptFeatures
from models.text_input import DEFAULT_MAX_TEXT_CHARS
from models.vllm_options import VLLMEngineOptions
from text_split import DEFAULT_CHUNK_CHARS, MAX_CHUNK_CHARS, MIN_CHUNK_CHARS

MAX_SEED = 2**32 - 1
MAX_BEST_OF = 8  # takes per text chunk at most ("Try up to N takes, keep the best")
DEFAULT_ACCEPT_ERROR_RATE = 0.2  # best-of-N keeps the first take whose CER/WER is below this


@dataclass(frozen=True)
class SynthesisOptions:
    """Sampling and decoding knobs shared by clone and edit (defaults are the upstream ones)."""

    variant: str | None = None  # None: the engine's default (--variant)
    backend: str | None = None  # "native" or "vllm"; None: the engine's (--llm-backend)
    seed: int | None = 0  # None: a fresh random seed each time
    temperature: float = 0.7
    top_p: float = 1.0
    flow_steps: int = 10  # Euler steps of the vocoder's flow matching
    max_length: int = 8192  # LLM total length cap (prompt + generated), in tokens
    max_new_tokens: int | None = None  # cap on generated tokens per text chunk (None: only max_length)
    stream: bool = False  # streaming vocoder: audio in pieces as the LLM makes tokens (else per chunk)
    chunk_chars: int | None = None  # longest text chunk per LLM pass (None: the engine's --chunk-chars)
    best_of: int = 1  # takes per text chunk; the best-scored is kept (needs the scores on)

    def validated(self) -> SynthesisOptions:
        """Self, or an ``OptionsError`` saying which value is out of range."""
        if self.backend is not None and self.backend not in LLM_BACKENDS:
            raise OptionsError(f"unknown LLM backend {self.backend!r}; choose one of "
                               f"{', '.join(LLM_BACKENDS)}")
        if self.variant is not None and self.variant not in ALL_VARIANTS:
            raise OptionsError(f"unknown model variant {self.variant!r}; choose one of "
                               f"{', '.join(ALL_VARIANTS)}")
        if not (0.0 < self.temperature <= 2.0):
            raise OptionsError(f"temperature must be in (0, 2], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise OptionsError(f"top-p must be in (0, 1], got {self.top_p}")
        if not (1 <= self.flow_steps <= 100):
            raise OptionsError(f"flow steps must be in 1..100, got {self.flow_steps}")
        if self.max_length < 16:
            raise OptionsError(f"max length must be at least 16 tokens, got {self.max_length}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise OptionsError(f"max new tokens must be at least 1, got {self.max_new_tokens}")
        if self.seed is not None and not (0 <= self.seed <= MAX_SEED):
            raise OptionsError(f"seed must be in 0..{MAX_SEED} (or empty for a random one), got {self.seed}")
        if self.chunk_chars is not None and not (MIN_CHUNK_CHARS <= self.chunk_chars <= MAX_CHUNK_CHARS):
            raise OptionsError(f"chunk size must be in {MIN_CHUNK_CHARS}..{MAX_CHUNK_CHARS} characters, "
                               f"got {self.chunk_chars}")
        if not (1 <= self.best_of <= MAX_BEST_OF):
            raise OptionsError(f"best of must be in 1..{MAX_BEST_OF} takes, got {self.best_of}")
        return self


@dataclass(frozen=True)
class CloneRequest:
    """Speak ``target_text`` in the voice of ``audio`` (or of the library voice ``voice_id``).

    ``audio`` is (samples,) or (channels, samples) float32 at ``sample_rate`` Hz (any rate).
    An empty ``reference_text`` is transcribed when auto-transcription is on. With ``voice_id``
    the voice library's tokens, features and text are used and ``audio`` may be None.
    """

    audio: np.ndarray | None
    sample_rate: int
    reference_text: str
    target_text: str
    options: SynthesisOptions = SynthesisOptions()
    voice_id: str | None = None

    @classmethod
    def from_audio(cls, source: str | Path | bytes | tuple, reference_text: str, target_text: str,
                   options: SynthesisOptions | None = None) -> CloneRequest:
        audio, sr = read_audio(source)
        return cls(audio, sr, reference_text or "", target_text or "", options or SynthesisOptions())

    @classmethod
    def from_voice(cls, voice_id: str, target_text: str,
                   options: SynthesisOptions | None = None) -> CloneRequest:
        """Speak ``target_text`` in a voice of the library."""
        return cls(None, 0, "", target_text or "", options or SynthesisOptions(), voice_id=voice_id)


@dataclass(frozen=True)
class EditRequest:
    """Edit ``audio`` (whose words are ``audio_text``) with one of ``EDIT_TASKS``.

    ``target_text`` is the new text for the paralinguistic task (tags such as ``[Laughter]``).
    ``source`` is a previous result being edited again: its kept tokens skip re-encoding.
    """

    audio: np.ndarray
    sample_rate: int
    audio_text: str
    task: str
    subtask: str | None = None
    target_text: str = ""
    options: SynthesisOptions = SynthesisOptions()
    source: SynthesisResult | None = None

    @classmethod
    def from_audio(cls, source: str | Path | bytes | tuple, audio_text: str, task: str,
                   subtask: str | None = None, target_text: str = "",
                   options: SynthesisOptions | None = None) -> EditRequest:
        audio, sr = read_audio(source)
        return cls(audio, sr, audio_text or "", task, subtask, target_text or "",
                   options or SynthesisOptions())

    @classmethod
    def from_result(cls, result: SynthesisResult, task: str, subtask: str | None = None,
                    target_text: str = "", options: SynthesisOptions | None = None) -> EditRequest:
        """Edit a previous output again (chaining); its text and kept tokens are reused."""
        return cls(result.audio, result.sample_rate, result.text, task, subtask, target_text or "",
                   options or SynthesisOptions(), source=result)


@dataclass
class TakeScore:
    """One take of a text chunk: its seed and its scores (None: not scored, or no audio)."""

    seed: int
    similarity: float | None = None
    error_rate: float | None = None


@dataclass
class ChunkReport:
    """One text chunk of a request: what was said, with which seed, what it cost and how it scored.

    ``seed`` is the kept take's; ``takes`` lists every take that was generated (best-of-N), in order.
    """

    text: str
    seed: int
    attempts: int = 1  # generations run: 2 when the first seed gave no audio, up to N with best-of-N
    new_tokens: int = 0
    audio_tokens: int = 0
    llm_s: float = 0.0
    vocoder_s: float = 0.0
    audio_s: float = 0.0
    warning: str = ""  # why this chunk has no audio, when it has none
    similarity: float | None = None  # cosine of CAM++ embeddings, output vs reference (or version edited)
    error_rate: float | None = None  # CER or WER of the Paraformer transcript against ``text``
    metric: str | None = None  # "cer", "wer", or None when not scored
    reference_tokens: int = 0  # characters (CER) or words (WER) of ``text`` after normalisation
    transcript: str = ""  # what the Paraformer heard in the kept take
    score_note: str = ""  # why a score is missing (e.g. "not scored" for Japanese)
    scored_s: float = 0.0  # seconds spent scoring this chunk's takes
    takes: list[TakeScore] = field(default_factory=list)


@dataclass
class StageReport:
    """Seconds spent per stage of one request (wall clock), with token and audio counts.

    LLM and vocoder figures add up over the text chunks; ``ttfa_s`` is the time from the request
    to its first audio sample (the whole first chunk when not streaming).
    """

    prep_s: float = 0.0
    tokenizer_s: float = 0.0
    tokens_from: str = "encoded"  # "encoded", "cache hit" or "kept" (a previous version's own tokens)
    cache_hit: bool = False
    encode_s_saved: float = 0.0  # recorded encode time of the cache entry that was hit
    transcribed: bool = False  # the reference text was empty and Paraformer transcribed it (in tokenizer_s)
    vocoder_prompt_s: float = 0.0
    vocoder_prompt_cached: bool = False
    llm_s: float = 0.0
    prompt_tokens: int = 0
    new_tokens: int = 0
    tokens_per_s: float = 0.0
    dropped_tokens: int = 0
    seed: int | None = None  # the request's seed (each chunk's is derived from it)
    vocoder_s: float = 0.0
    total_s: float = 0.0
    audio_s: float = 0.0  # seconds of generated audio
    ttfa_s: float = 0.0  # time to first audio
    stream: bool = False
    stopped: bool = False  # Stop was pressed: the audio made until then is kept
    scored: bool = False  # the outputs were scored (off with --no-scores)
    score_s: float = 0.0  # seconds spent scoring (included in total_s)
    chunks: list[ChunkReport] = field(default_factory=list)

    @property
    def similarity(self) -> float | None:
        """Mean speaker similarity of the chunks that have one, weighted by their audio seconds."""
        scored = [(c.similarity, max(c.audio_s, 1e-9)) for c in self.chunks if c.similarity is not None]
        return sum(s * w for s, w in scored) / sum(w for _, w in scored) if scored else None

    @property
    def error_rate(self) -> float | None:
        """Overall error rate: the chunks' errors over their reference tokens (as one long text)."""
        scored = [(c.error_rate, c.reference_tokens) for c in self.chunks
                  if c.error_rate is not None and c.reference_tokens]
        total = sum(n for _, n in scored)
        return sum(r * n for r, n in scored) / total if total else None

    @property
    def metric(self) -> str | None:
        """"cer" or "wer" when every scored chunk used it, "mixed" for both, None when none was scored."""
        metrics = {c.metric for c in self.chunks if c.error_rate is not None}
        return (metrics.pop() if len(metrics) == 1 else "mixed") if metrics else None

    def score_detail(self) -> str:
        """The scores in words, for the timing table: "similarity 0.93, CER 4.2%, 3 takes"."""
        if not self.scored:
            return "off (--no-scores)"
        parts = [f"similarity {self.similarity:.3f}" if self.similarity is not None else "similarity -"]
        rate, metric = self.error_rate, self.metric
        parts.append(f"{metric.upper()} {rate:.1%}" if rate is not None and metric else
                     next((c.score_note for c in self.chunks if c.score_note), "error rate -"))
        takes = sum(len(c.takes) for c in self.chunks)
        if takes > len(self.chunks):
            parts.append(f"{takes} takes for {len(self.chunks)} chunk(s)")
        return ", ".join(parts)

    @property
    def rtf(self) -> float:
        """Real-time factor: processing seconds per second of generated audio (< 1 is faster)."""
        return self.total_s / self.audio_s if self.audio_s > 0 else float("inf")

    def rows(self) -> list[list[str]]:
        """[stage, seconds, detail] rows for a table, in pipeline order."""
        tok_label = f"tokenizer ({self.tokens_from})"
        tok_detail = {"cache hit": f"saved {self.encode_s_saved:.2f} s of encoding",
                      "kept": "tokens of the version being edited"}.get(self.tokens_from,
                                                                         "dual-codebook encode")
        rows = [["prep", f"{self.prep_s:.3f}", "validate, mono, peak"],
                [tok_label, f"{self.tokenizer_s:.3f}", tok_detail]]
        if self.transcribed:  # not timed apart: the transcript is decoded from the vq02 encoder output
            rows.append(["transcription", "in tokenizer", "Paraformer (the reference text was empty)"])
        rows.append(["vocoder prompt" + (" (cached)" if self.vocoder_prompt_cached else ""),
                     f"{self.vocoder_prompt_s:.3f}", "mel + speaker embedding"])
        chunks = f", {len(self.chunks)} chunks" if len(self.chunks) > 1 else ""
        rows.append(["LLM", f"{self.llm_s:.3f}",
                     f"{self.new_tokens} tokens, {self.tokens_per_s:.1f} tok/s, prompt {self.prompt_tokens}"
                     f"{chunks}"])
        rows.append(["vocoder", f"{self.vocoder_s:.3f}", f"{self.audio_s:.2f} s of 24 kHz audio"
                     + (" (streamed)" if self.stream else "")])
        rows.append(["scores", f"{self.score_s:.3f}" if self.scored else "off", self.score_detail()])
        rows.append(["total", f"{self.total_s:.3f}", f"real-time factor {self.rtf:.2f}, first audio after "
                     f"{self.ttfa_s:.2f} s" + (" (stopped)" if self.stopped else "")])
        return rows

    def summary(self) -> str:
        """One log line with the whole breakdown."""
        transcribe = " + transcription" if self.transcribed else ""
        scores = f"{self.score_s:.3f}s {self.score_detail()}" if self.scored else self.score_detail()
        return (f"prep {self.prep_s:.3f}s | tokenizer {self.tokens_from} "
                f"{self.tokenizer_s:.3f}s{transcribe} | vocoder prompt "
                f"{'hit' if self.vocoder_prompt_cached else 'miss'} {self.vocoder_prompt_s:.3f}s | llm "
                f"{self.llm_s:.3f}s ({self.new_tokens} tok, {self.tokens_per_s:.1f} tok/s) | vocoder "
                f"{self.vocoder_s:.3f}s{' streamed' if self.stream else ''} | scores {scores} | "
                f"{len(self.chunks)} chunk(s) | "
                f"first audio {self.ttfa_s:.3f}s | total {self.total_s:.3f}s for {self.audio_s:.2f}s audio, "
                f"RTF {self.rtf:.2f}{' | STOPPED' if self.stopped else ''}")


@dataclass
class VoicePrompt:
    """Everything the LLM and the vocoder need about one prompt clip (reference or audio to edit)."""

    token_str: str  # "<audio_N>..." for the LLM prompt
    mixed_tokens: list[int]  # mixed stream in [0, 5120), the vocoder's prompt tokens
    features: PromptFeatures  # mel (frames, 80) + speaker embedding (192,)
    text: str  # what the clip says
    cache_key: str
    vq02: list[int] = field(default_factory=list, repr=False)  # the two code streams (for the library)
    vq06: list[int] = field(default_factory=list, repr=False)


@dataclass
class Segment:
    """The part of a version made from one text chunk: its words, tokens and samples [start, end)."""

    text: str
    tokens: list[int]  # whole groups, mixed-stream codes in [0, 5120)
    start: int
    end: int


@dataclass
class SynthesisResult:
    """One generated version: 24 kHz audio, its text, and how long each stage took."""

    audio: np.ndarray  # (samples,) float32 at sample_rate Hz
    sample_rate: int
    text: str  # the words spoken in ``audio``
    prompt_text: str  # the reference (or edited audio's) text that was used, transcribed if it was empty
    transcribed: bool
    mode: str  # "clone" or "edit <task>[/<subtask>]"
    variant: str
    backend: str
    report: StageReport
    audio_tokens: list[int]  # the generated mixed stream of every chunk, in order
    warnings: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)  # one per text chunk that made audio
    stopped: bool = False  # Stop was pressed: this is the audio made until then
    # this version's own prompts (tokens + vocoder features per segment), made when first edited
    voices: list[VoicePrompt] = field(default_factory=list, repr=False)
    manifest: dict = field(default_factory=dict, repr=False)  # provenance record (provenance.py), JSON-safe

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class AudioPiece:
    """A piece of a request's audio, streamed as soon as it is final (24 kHz float32 samples)."""

    audio: np.ndarray  # (samples,) float32
    chunk: int  # index of the text chunk it belongs to (pauses between chunks count to the earlier one)


@dataclass
class Progress:
    """Where a request stands: text chunk ``chunk`` (1-based) of ``chunks``, audio made so far."""

    chunk: int
    chunks: int
    audio_s: float  # seconds of audio the LLM has produced tokens for, over all chunks so far
    stage: str = "llm"  # "llm", "vocoder", "retry" (no audio: another seed), "take" (best-of-N), "score"


StreamEvent = AudioPiece | Progress | SynthesisResult  # the last event of a request is its result


@dataclass(frozen=True)
class EngineConfig:
    """Engine behaviour chosen at start-up (from settings.py)."""

    variant: str = "base"  # default LLM variant, preloaded
    auto_transcribe: bool = True  # empty reference text -> Paraformer transcript; off: refused
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    chunk_chars: int = DEFAULT_CHUNK_CHARS  # longest text chunk per LLM pass
    max_reference_seconds: float = 30.0
    device: str = "auto"
    dtype: str = "auto"
    llm_backend: str = "native"  # "native" (our Step1 model) or "vllm"
    llm_url: str | None = None  # vllm: a `vllm serve` server; None runs vLLM's engine in this process
    vllm: VLLMEngineOptions | None = None  # vllm in-process engine settings (None: the defaults)
    scores: bool = True  # score every output (similarity, error rate); off: --no-scores
    accept_error_rate: float = DEFAULT_ACCEPT_ERROR_RATE  # best-of-N: first take below this is kept
