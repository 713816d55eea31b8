"""Requests and results of the clone / edit engine: the one schema the page, the API and the tools share.

    request = CloneRequest.from_audio("voice.wav", reference_text="", target_text="Hello.")
    result = engine.clone(request)          # SynthesisResult: audio, text, per-stage StageReport

Options are validated here (``SynthesisOptions.validated``), so every front end refuses the same
values with the same message. What a request cost and how it scored (``StageReport``,
``ChunkReport``, ``TakeScore``) is in ``reports.py``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from audio_read import read_audio
from errors import OptionsError
from model_layout import ALL_VARIANTS, LLM_BACKENDS
from models.prompt_features import PromptFeatures
from models.text_input import DEFAULT_MAX_TEXT_CHARS
from models.vllm_options import VLLMEngineOptions
from reports import StageReport
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
            raise OptionsError(
                f"unknown LLM backend {self.backend!r}; choose one of {', '.join(LLM_BACKENDS)}"
            )
        if self.variant is not None and self.variant not in ALL_VARIANTS:
            raise OptionsError(
                f"unknown model variant {self.variant!r}; choose one of {', '.join(ALL_VARIANTS)}"
            )
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
            raise OptionsError(
                f"chunk size must be in {MIN_CHUNK_CHARS}..{MAX_CHUNK_CHARS} characters, "
                f"got {self.chunk_chars}"
            )
        if not (1 <= self.best_of <= MAX_BEST_OF):
            raise OptionsError(f"best of must be in 1..{MAX_BEST_OF} takes, got {self.best_of}")
        return self

    def resolved(self, config: EngineConfig, scores: bool) -> SynthesisOptions:
        """The validated options with every default made explicit (as recorded in the manifest): the
        variant, the chunk size and the seed (a fresh random one when none was asked for). ``scores``
        says whether the engine scores its outputs, which best-of-N needs."""
        options = self.validated()
        if options.best_of > 1 and not scores:
            raise OptionsError(
                "trying several takes needs the output scores, which are off on this server "
                "(--no-scores); ask for one take"
            )
        seed = options.seed if options.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return replace(
            options,
            variant=options.variant or config.variant,
            chunk_chars=options.chunk_chars or config.chunk_chars,
            seed=seed,
        )


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
    def from_audio(
        cls,
        source: str | Path | bytes | tuple,
        reference_text: str,
        target_text: str,
        options: SynthesisOptions | None = None,
    ) -> CloneRequest:
        audio, sr = read_audio(source)
        return cls(audio, sr, reference_text or "", target_text or "", options or SynthesisOptions())

    @classmethod
    def from_voice(
        cls, voice_id: str, target_text: str, options: SynthesisOptions | None = None
    ) -> CloneRequest:
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
    def from_audio(
        cls,
        source: str | Path | bytes | tuple,
        audio_text: str,
        task: str,
        subtask: str | None = None,
        target_text: str = "",
        options: SynthesisOptions | None = None,
    ) -> EditRequest:
        audio, sr = read_audio(source)
        return cls(
            audio, sr, audio_text or "", task, subtask, target_text or "", options or SynthesisOptions()
        )

    @classmethod
    def from_result(
        cls,
        result: SynthesisResult,
        task: str,
        subtask: str | None = None,
        target_text: str = "",
        options: SynthesisOptions | None = None,
    ) -> EditRequest:
        """Edit a previous output again (chaining); its text and kept tokens are reused."""
        return cls(
            result.audio,
            result.sample_rate,
            result.text,
            task,
            subtask,
            target_text or "",
            options or SynthesisOptions(),
            source=result,
        )


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
    llm_decode: str = "auto"  # native: auto, dynamic, static or graphs (models/decode.py)
    llm_prefix_cache_mb: float = 256.0  # native: voices' prompt keys/values kept (0: none)
    llm_url: str | None = None  # vllm: a `vllm serve` server; None runs vLLM's engine in this process
    vllm: VLLMEngineOptions | None = None  # vllm in-process engine settings (None: the defaults)
    scores: bool = True  # score every output (similarity, error rate); off: --no-scores
    accept_error_rate: float = DEFAULT_ACCEPT_ERROR_RATE  # best-of-N: first take below this is kept
