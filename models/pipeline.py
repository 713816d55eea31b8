"""The clone / edit engine: reference audio + texts -> 24 kHz speech, with a per-stage time report.

    engine = CloneEngine.load(model_root, EngineConfig(variant="base"))
    result = engine.clone(CloneRequest.from_audio(path, reference_text="", target_text="Hello."))
    result.audio        # (samples,) float32 at 24 kHz
    result.report       # prep, tokenizer or cache hit, transcription, LLM (tokens/s), vocoder, total, RTF

Stages (each logged on one line with its time):

1. prep        validate the clip and the texts; mono + peak prelude for the vocoder prompt
2. tokenizer   StepAudioTokenizer.encode: dual-codebook tokens (a prompt-cache hit skips the encode),
               plus the Paraformer transcript when the reference text is empty
3. vocoder prompt  mel + CAM++ embedding of the reference, cached in the same prompt-cache entry
               under the vocoder's fingerprint (so another vocoder never reuses them)
4. llm         Step1LLM.clone / .edit generates the mixed audio-token stream
5. vocoder     flow + HiFT turn the tokens into 24 kHz audio, prompted by the reference

The engine knows nothing of any UI: the Gradio adapter (ui_adapter.py), the benchmark and the tests
all call the same ``clone`` / ``edit``. Bad input raises ``AudioInputError``, ``TextInputError`` or
``OptionsError`` with a message a person can act on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio_prep import (
    VOCODER_SAMPLE_RATE,
    AudioInputError,
    load_audio,
    prompt_prelude,
    validate_reference,
)
from model_layout import (
    BNB_FOLDER,
    LLM_FOLDER,
    TOKENIZER_FOLDER,
    VOCODER_FOLDER,
    find_model_root,
    is_demo_models,
    verify_layout,
)
from models.llm import (
    VARIANTS,
    EmptyGenerationError,
    GenerationCancelled,
    GenerationOptions,
    GenerationResult,
    Step1LLM,
)
from models.prompts import (
    AUDIO_ID_OFFSET,
    EDIT_TASKS,
    TASKS_WITH_OPTION,
    TextInputError,
    audio_token_str,
    sanitize_text,
)
from models.vocoder import PromptFeatures, Vocoder
from prompt_cache import MIB, PromptCache, decode_array, encode_array
from tokenizer import StepAudioTokenizer, TokenizedAudio

log = logging.getLogger(__name__)

__all__ = [
    "AudioInputError", "CloneEngine", "CloneRequest", "EditRequest", "EmptyGenerationError", "EngineConfig",
    "GenerationCancelled",
    "ModelFilesMissing", "ModelRoot", "OptionsError", "StageReport", "SynthesisOptions", "SynthesisResult",
    "TextInputError", "VoicePrompt", "locate_models", "read_audio",
]

TEXTLESS_TASKS = ("denoise", "vad")  # edit tasks whose instruction does not quote the audio's text
VOCODER_FIELD_PREFIX = "vocoder:"  # prompt-cache field holding the vocoder prompt features
DOWNLOAD_HINT = "python scripts/download_models.py --out {root}"


class OptionsError(ValueError):
    """An option (variant, edit task, sampling value) a person picked is not usable; says which."""


class ModelFilesMissing(RuntimeError):
    """Start-up error naming the model files that are missing and how to get them."""


# ----------------------------------------------------------------------------------------------
# Requests and results
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthesisOptions:
    """Sampling and decoding knobs shared by clone and edit (defaults are the upstream ones)."""

    variant: str | None = None  # None: the engine's default (--variant)
    seed: int | None = 0  # None: a fresh random seed each time
    temperature: float = 0.7
    top_p: float = 1.0
    flow_steps: int = 10  # Euler steps of the vocoder's flow matching
    max_length: int = 8192  # LLM total length cap (prompt + generated), in tokens

    def validated(self) -> SynthesisOptions:
        """Self, or an ``OptionsError`` saying which value is out of range."""
        if self.variant is not None and self.variant not in VARIANTS:
            raise OptionsError(f"unknown model variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if not (0.0 < self.temperature <= 2.0):
            raise OptionsError(f"temperature must be in (0, 2], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise OptionsError(f"top-p must be in (0, 1], got {self.top_p}")
        if not (1 <= self.flow_steps <= 100):
            raise OptionsError(f"flow steps must be in 1..100, got {self.flow_steps}")
        if self.max_length < 16:
            raise OptionsError(f"max length must be at least 16 tokens, got {self.max_length}")
        if self.seed is not None and not (0 <= self.seed < 2**32):
            raise OptionsError(f"seed must be in 0..{2**32 - 1}, got {self.seed}")
        return self


@dataclass(frozen=True)
class CloneRequest:
    """Speak ``target_text`` in the voice of ``audio``.

    ``audio`` is (samples,) or (channels, samples) float32 at ``sample_rate`` Hz (any rate).
    An empty ``reference_text`` is transcribed when auto-transcription is on.
    """

    audio: np.ndarray
    sample_rate: int
    reference_text: str
    target_text: str
    options: SynthesisOptions = SynthesisOptions()

    @classmethod
    def from_audio(cls, source: str | Path | bytes | tuple, reference_text: str, target_text: str,
                   options: SynthesisOptions | None = None) -> CloneRequest:
        audio, sr = read_audio(source)
        return cls(audio, sr, reference_text or "", target_text or "", options or SynthesisOptions())


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
class StageReport:
    """Seconds spent per stage of one request (wall clock), with token and audio counts."""

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
    seed: int | None = None  # the LLM sampling seed actually used
    vocoder_s: float = 0.0
    total_s: float = 0.0
    audio_s: float = 0.0  # seconds of generated audio

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
        rows.append(["LLM", f"{self.llm_s:.3f}",
                     f"{self.new_tokens} tokens, {self.tokens_per_s:.1f} tok/s, prompt {self.prompt_tokens}"])
        rows.append(["vocoder", f"{self.vocoder_s:.3f}", f"{self.audio_s:.2f} s of 24 kHz audio"])
        rows.append(["total", f"{self.total_s:.3f}", f"real-time factor {self.rtf:.2f}"])
        return rows

    def summary(self) -> str:
        """One log line with the whole breakdown."""
        transcribe = " + transcription" if self.transcribed else ""
        return (f"prep {self.prep_s:.3f}s | tokenizer {self.tokens_from} "
                f"{self.tokenizer_s:.3f}s{transcribe} | vocoder prompt "
                f"{'hit' if self.vocoder_prompt_cached else 'miss'} {self.vocoder_prompt_s:.3f}s | llm "
                f"{self.llm_s:.3f}s ({self.new_tokens} tok, {self.tokens_per_s:.1f} tok/s) | vocoder "
                f"{self.vocoder_s:.3f}s | total {self.total_s:.3f}s for {self.audio_s:.2f}s audio, "
                f"RTF {self.rtf:.2f}")


@dataclass
class VoicePrompt:
    """Everything the LLM and the vocoder need about one prompt clip (reference or audio to edit)."""

    token_str: str  # "<audio_N>..." for the LLM prompt
    mixed_tokens: list[int]  # mixed stream in [0, 5120), the vocoder's prompt tokens
    features: PromptFeatures  # mel (frames, 80) + speaker embedding (192,)
    text: str  # what the clip says
    cache_key: str


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
    report: StageReport
    audio_tokens: list[int]  # the generated mixed stream (kept so the version's provenance is known)
    warnings: list[str] = field(default_factory=list)
    # this version's own tokens + vocoder features, filled the first time it is edited (chaining)
    voice: VoicePrompt | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class EngineConfig:
    """Engine behaviour chosen at start-up (from settings.py)."""

    variant: str = "base"  # default LLM variant, preloaded
    auto_transcribe: bool = True  # empty reference text -> Paraformer transcript; off: refused
    max_text_chars: int = 1000
    max_reference_seconds: float = 30.0
    device: str = "auto"
    dtype: str = "auto"


# ----------------------------------------------------------------------------------------------
# Model files
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRoot:
    """A model root folder and whether it holds the untrained demo models."""

    path: Path
    demo: bool


def locate_models(model_dir: Path, demo_dir: Path | None = None, allow_demo: bool = True) -> ModelRoot:
    """The root to load: ``model_dir`` when it holds every required file, else demo models.

    With ``allow_demo`` the tiny demo models are written once into ``demo_dir`` and used (the
    caller says so in the log and the UI). Without it a ``ModelFilesMissing`` names the files.
    """
    model_dir = find_model_root(model_dir) or Path(model_dir)
    missing = verify_layout(model_dir)
    if not missing:
        return ModelRoot(model_dir, is_demo_models(model_dir))
    shown = ", ".join(str(m) for m in missing[:5])
    if len(missing) > 5:
        shown += f" and {len(missing) - 5} more"
    if not allow_demo or demo_dir is None:
        raise ModelFilesMissing(
            f"model files missing under {model_dir.resolve()}: {shown}. Download them with "
            f"`{DOWNLOAD_HINT.format(root=model_dir)}` or pass --model-dir to the folder holding them.")
    from scripts.make_demo_models import write_demo_models

    log.warning("no complete models under %s (missing: %s); using the untrained demo models in %s "
                "(the output is noise; get the real ones with `%s`)", model_dir, shown, demo_dir,
                DOWNLOAD_HINT.format(root=model_dir))
    start = time.perf_counter()
    write_demo_models(Path(demo_dir))
    still = verify_layout(Path(demo_dir))
    if still:
        raise ModelFilesMissing(f"demo models under {demo_dir} are incomplete: {still[:5]}; "
                                "delete the folder to rebuild them")
    log.info("demo models ready in %s (%.2f s)", demo_dir, time.perf_counter() - start)
    return ModelRoot(Path(demo_dir), True)


def llm_dir_for(root: Path, variant: str) -> Path:
    """Folder of the LLM ``variant``: a pre-quantized BnB save when present, else the base weights
    (quantized while loading)."""
    if variant == "bnb-4bit" and (Path(root) / BNB_FOLDER / "config.json").exists():
        return Path(root) / BNB_FOLDER
    return Path(root) / LLM_FOLDER


# ----------------------------------------------------------------------------------------------
# Audio and text input
# ----------------------------------------------------------------------------------------------

def read_audio(source: str | Path | bytes | tuple) -> tuple[np.ndarray, int]:
    """Any accepted audio input -> (float32 array (samples,) or (channels, samples), rate in Hz).

    ``source`` is a file path, the file's bytes, ``(array, rate)`` or Gradio's ``(rate, array)``
    (integer PCM is scaled to [-1, 1]; (samples, channels) arrays are transposed).
    """
    if source is None:
        raise AudioInputError("no audio was given: upload or record a clip first")
    if isinstance(source, (str, Path, bytes, bytearray)):
        return load_audio(source)  # float32 (channels, samples); a missing or unreadable file is named
    if isinstance(source, tuple) and len(source) == 2:
        first, second = source
        rate, data = (first, second) if np.isscalar(first) else (second, first)
        return _to_float(np.asarray(data)), int(rate)
    raise AudioInputError(f"unsupported audio input of type {type(source).__name__}; "
                          "give a file or (array, rate)")


def _to_float(data: np.ndarray) -> np.ndarray:
    """PCM of any dtype -> float32 in [-1, 1], channels first when 2-D."""
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    elif data.dtype.kind == "u":
        info = np.iinfo(data.dtype)
        data = (data.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    elif data.dtype.kind != "f":
        raise AudioInputError(f"audio samples of type {data.dtype} are not supported; use PCM or float")
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2 and data.shape[0] > data.shape[1]:
        data = data.T  # (samples, channels) as soundfile and Gradio give it
    if data.ndim not in (1, 2):
        raise AudioInputError(f"audio must be 1-D or 2-D (channels, samples), got shape {data.shape}")
    return np.ascontiguousarray(data)


def clean_text(text: str, what: str, limit: int, warnings: list[str], allow_empty: bool = False) -> str:
    """Strip and sanitise ``text`` (control tokens such as ``<audio_3>`` are removed, with a warning)."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TextInputError(f"the {what} must be text, got {type(text).__name__}")
    raw = text.strip()
    if len(raw) > limit:
        raise TextInputError(f"the {what} is {len(raw)} characters long; the limit is {limit} "
                             f"(--max-text-chars). Split it into shorter pieces.")
    cleaned = sanitize_text(raw).strip()
    if cleaned != raw:
        note = f"removed control tokens or markup from the {what}"
        log.warning("%s: %r -> %r", note, raw[:80], cleaned[:80])
        warnings.append(note)
    if not cleaned and not allow_empty:
        if raw:
            raise TextInputError(f"the {what} contains only control tokens or markup; type ordinary words")
        raise TextInputError(f"the {what} is empty; type the words to speak")
    return cleaned


# ----------------------------------------------------------------------------------------------
# Vocoder prompt features <-> prompt-cache JSON (base64 float32: compact and exact)
# ----------------------------------------------------------------------------------------------

def encode_features(features: PromptFeatures, audio_hash: str, seconds: float) -> dict:
    """JSON form of ``features`` for the prompt cache (base64 float32 via ``prompt_cache.encode_array``)."""
    return {"audio_hash": audio_hash, "seconds": round(seconds, 6),
            "mel": encode_array(np.asarray(features.mel, dtype=np.float32)),
            "speaker_embedding": encode_array(np.asarray(features.speaker_embedding, dtype=np.float32))}


def decode_features(value: dict) -> PromptFeatures:
    """Inverse of ``encode_features`` (raises KeyError/ValueError/TypeError on a damaged field)."""
    return PromptFeatures(mel=decode_array(value["mel"]).astype(np.float32),
                          speaker_embedding=decode_array(value["speaker_embedding"]).astype(np.float32))


def audio_digest(audio: np.ndarray, sample_rate: int) -> str:
    """Short hash of the vocoder's input clip: the cache key hashes the trimmed 16 kHz clip, and
    two clips can share it while differing outside the trimmed region or in their original rate."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(int(sample_rate)).encode())
    h.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------

ProgressFn = Callable[[int], None]


class CloneEngine:
    """Loaded models + prompt cache; ``clone`` and ``edit`` return ``SynthesisResult``s.

    Thread-safe: model loading is locked; inference calls are independent (the server limits
    how many run at once with its queue).
    """

    def __init__(self, tokenizer: StepAudioTokenizer, llms: dict[str, Step1LLM], vocoder: Vocoder,
                 cache: PromptCache | None, config: EngineConfig = EngineConfig(),
                 model_root: Path | None = None, demo: bool = False,
                 llm_loader: Callable[[str], Step1LLM] | None = None):
        if config.variant not in llms and llm_loader is None:
            raise OptionsError(f"default variant {config.variant!r} is not loaded")
        self.tokenizer = tokenizer
        self.vocoder = vocoder
        self.cache = cache  # the tokenizer's cache: vocoder features are merged into its entries
        self.config = config
        self.model_root = model_root
        self.demo = demo
        self._llms = dict(llms)
        self._llm_loader = llm_loader
        self._load_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._vocoder_hits = 0
        self._vocoder_misses = 0
        self._vocoder_saved_s = 0.0
        self.requests = 0

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def load(cls, model_root: Path, config: EngineConfig = EngineConfig(), *, cache_dir: Path | None = None,
             cache_max_entries: int = 2000, cache_max_bytes: int = 1 << 30, ort_threads: int | None = None,
             demo: bool | None = None) -> CloneEngine:
        """Load the tokenizer, the vocoder and the ``config.variant`` LLM from ``model_root`` (once)."""
        model_root = Path(model_root)
        demo = is_demo_models(model_root) if demo is None else demo
        cache = open_cache(cache_dir, cache_max_entries, cache_max_bytes)
        start = time.perf_counter()
        tokenizer = StepAudioTokenizer(model_root / TOKENIZER_FOLDER, device=config.device,
                                       ort_threads=ort_threads, cache=cache)
        log.info("loaded tokenizer from %s (%.2f s)", model_root / TOKENIZER_FOLDER,
                 time.perf_counter() - start)
        start = time.perf_counter()
        vocoder = Vocoder.load(model_root / VOCODER_FOLDER, device=config.device, dtype=config.dtype)
        log.info("loaded vocoder from %s (%.2f s)", model_root / VOCODER_FOLDER, time.perf_counter() - start)

        def load_llm(variant: str) -> Step1LLM:
            folder = llm_dir_for(model_root, variant)
            t0 = time.perf_counter()
            llm = Step1LLM.load(folder, variant=variant, device=config.device, dtype=config.dtype)
            log.info("loaded LLM %s from %s (%.2f s)", variant, folder, time.perf_counter() - t0)
            return llm

        llms = {config.variant: load_llm(config.variant)}
        return cls(tokenizer, llms, vocoder, cache, config, model_root, demo, llm_loader=load_llm)

    def llm(self, variant: str | None) -> Step1LLM:
        """The LLM of ``variant`` (default: the configured one), loading it on first use."""
        variant = variant or self.config.variant
        if variant not in VARIANTS:
            raise OptionsError(f"unknown model variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if variant in self._llms:
            return self._llms[variant]
        if self._llm_loader is None:
            raise OptionsError(f"model variant {variant!r} is not loaded; loaded: {', '.join(self._llms)}")
        with self._load_lock:
            if variant not in self._llms:
                try:
                    self._llms[variant] = self._llm_loader(variant)
                except Exception as exc:  # an optional variant that cannot load is the user's choice to fix
                    log.exception("could not load LLM variant %s", variant)
                    raise OptionsError(f"model variant {variant!r} could not be loaded ({exc}); "
                                       f"use {self.config.variant!r} or check the model files") from exc
        return self._llms[variant]

    @property
    def loaded_variants(self) -> list[str]:
        return list(self._llms)

    def available_variants(self) -> list[str]:
        """Variants whose files are present (the loaded ones first)."""
        out = list(self._llms)
        if self._llm_loader is not None and self.model_root is not None:
            for variant in VARIANTS:
                if variant not in out and (llm_dir_for(self.model_root, variant) / "config.json").exists():
                    out.append(variant)
        return out

    # ---- requests ----------------------------------------------------------------------------

    def clone(self, request: CloneRequest, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None) -> SynthesisResult:
        """Speak ``request.target_text`` in the voice of ``request.audio``; see the module doc."""
        t_start = time.perf_counter()
        report, warnings = StageReport(), []
        options = request.options.validated()
        # 1. prep
        target = clean_text(request.target_text, "target text", self.config.max_text_chars, warnings)
        prompt_text = clean_text(request.reference_text, "reference text", self.config.max_text_chars,
                                 warnings, allow_empty=True)
        transcribe = self._needs_transcription(prompt_text, "reference")
        audio, sr = self._validated_audio(request.audio, request.sample_rate)
        report.prep_s = time.perf_counter() - t_start
        log.info("clone prep: %.3f s (%.2f s of audio at %d Hz, %d target chars)", report.prep_s,
                 audio.shape[-1] / sr, sr, len(target))
        # 2-3. tokens (+ transcript) and vocoder prompt features
        voice = self._voice_prompt(audio, sr, prompt_text, transcribe, report)
        if transcribe and not voice.text:
            warnings.append("auto-transcription found no words in the reference; the clone may be worse")
        # 4. LLM
        llm = self.llm(options.variant)
        generation = self._timed_generation(
            lambda: llm.clone(voice.text, voice.token_str, target, self._generation_options(options),
                              progress=progress, cancel=cancel), report)
        # 5. vocoder
        result_audio = self._vocode(generation, voice, options, report)
        return self._finish("clone", t_start, result_audio, target, voice.text, transcribe, options, report,
                            generation, warnings)

    def edit(self, request: EditRequest, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> SynthesisResult:
        """Edit ``request.audio`` with ``request.task`` / ``subtask``; the audio is also the vocoder prompt.

        When ``request.source`` is a previous result its kept tokens and features are reused (no
        hashing, no encode); otherwise the clip goes through the tokenizer like a reference.
        """
        t_start = time.perf_counter()
        report, warnings = StageReport(), []
        options = request.options.validated()
        task, subtask = self._validated_task(request.task, request.subtask)
        source = request.source
        audio_text = clean_text(request.audio_text, "text of the audio", self.config.max_text_chars, warnings,
                                allow_empty=True)
        para_text = None
        if task == "paralinguistic":
            para_text = clean_text(request.target_text, "new text (with tags such as [Laughter])",
                                   self.config.max_text_chars, warnings)
        # a previous version edited again keeps its own tokens: no validation, hashing or encode
        chained = source is not None and (not audio_text or audio_text == source.text)
        transcribe = False
        if chained:
            report.prep_s = time.perf_counter() - t_start
            log.info("edit prep: %.3f s (task %s/%s, continuing from a previous %s)", report.prep_s, task,
                     subtask or "-", source.mode)
            voice = self._version_voice(source, report)
        else:
            # denoise and vad instructions do not quote the text, so an empty one is fine there
            transcribe = task not in TEXTLESS_TASKS and self._needs_transcription(audio_text, "audio to edit")
            audio, sr = self._validated_audio(request.audio, request.sample_rate)
            report.prep_s = time.perf_counter() - t_start
            log.info("edit prep: %.3f s (task %s/%s, %.2f s of audio at %d Hz)", report.prep_s, task,
                     subtask or "-", audio.shape[-1] / sr, sr)
            voice = self._voice_prompt(audio, sr, audio_text, transcribe, report)
        new_text = para_text if para_text is not None else voice.text
        llm = self.llm(options.variant)
        generation = self._timed_generation(
            lambda: llm.edit(voice.text, voice.token_str, task, subtask, self._generation_options(options),
                             progress=progress, cancel=cancel, new_text=para_text), report)
        result_audio = self._vocode(generation, voice, options, report)
        mode = f"edit {task}" + (f"/{subtask}" if subtask else "")
        return self._finish(mode, t_start, result_audio, new_text, voice.text, transcribe, options, report,
                            generation, warnings)

    def prepare_reference(self, audio: np.ndarray, sample_rate: int, reference_text: str = "") -> str:
        """Validate and encode a reference clip ahead of Clone (tokens and vocoder features land in
        the prompt cache, so the clone is a hit); returns the reference text, transcribed when it
        was empty and auto-transcription is on (else returned as given)."""
        start = time.perf_counter()
        text = clean_text(reference_text, "reference text", self.config.max_text_chars, [], allow_empty=True)
        audio, sr = self._validated_audio(audio, sample_rate)
        report = StageReport()
        voice = self._voice_prompt(audio, sr, text, not text and self.config.auto_transcribe, report)
        log.info("reference prepared in %.3f s (tokens %s, features %s)", time.perf_counter() - start,
                 report.tokens_from, "cached" if report.vocoder_prompt_cached else "computed")
        return voice.text

    def warm_up(self, audio: np.ndarray, sample_rate: int, reference_text: str,
                target_text: str = "Warm up.") -> StageReport:
        """One short clone so the first user click does not pay for lazy initialisation.

        Give it an example voice: that voice is then already in the prompt cache for users.
        """
        options = SynthesisOptions(seed=0, max_length=self._warmup_max_length())
        start = time.perf_counter()
        try:
            result = self.clone(CloneRequest(audio, sample_rate, reference_text, target_text, options))
        except (EmptyGenerationError, TextInputError) as exc:  # demo weights: any outcome warms the kernels
            log.info("warm-up: no audio (%s); the models are warm anyway", exc)
            return StageReport(total_s=time.perf_counter() - start)
        log.info("warm-up done in %.2f s", time.perf_counter() - start)
        return result.report

    def status(self) -> dict:
        """Health / status summary: models, device, variants, demo flag, cache statistics."""
        return {
            "status": "ok",
            "models_loaded": {"tokenizer": True, "vocoder": True, "llm": self.loaded_variants},
            "model_root": str(self.model_root) if self.model_root else None,
            "device": str(getattr(self._llms.get(self.config.variant), "device", self.config.device)),
            "variant": self.config.variant,
            "variants_loaded": self.loaded_variants,
            "variants_available": self.available_variants(),
            "demo": self.demo,
            "auto_transcribe": self.config.auto_transcribe,
            "requests": self.requests,
            "cache": self.cache_stats(),
        }

    def cache_stats(self) -> dict:
        """Prompt-cache statistics plus the vocoder-feature hits kept in the same entries."""
        stats = dict(self.cache.stats()) if self.cache is not None else {
            "hits": 0, "misses": 0, "hit_rate": 0.0, "entries": 0, "bytes": 0, "time_saved_s": 0.0,
            "directory": None, "persistent": False}
        with self._stats_lock:
            stats["vocoder_prompt_hits"] = self._vocoder_hits
            stats["vocoder_prompt_misses"] = self._vocoder_misses
            stats["vocoder_prompt_time_saved_s"] = round(self._vocoder_saved_s, 4)
        return stats

    def clear_cache(self) -> None:
        if self.cache is not None:
            self.cache.clear()
            log.info("prompt cache cleared")

    # ---- stages ------------------------------------------------------------------------------

    def _needs_transcription(self, text: str, what: str) -> bool:
        if text:
            return False
        if not self.config.auto_transcribe:
            raise TextInputError(f"the {what} text is empty and auto-transcription is off "
                                 "(--no-auto-transcribe); type what the clip says")
        return True

    def _validated_audio(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
        audio = _to_float(np.asarray(audio))
        if sample_rate is None or int(sample_rate) <= 0:
            raise AudioInputError(f"the sample rate must be a positive number of Hz, got {sample_rate}")
        validate_reference(audio, int(sample_rate), self.config.max_reference_seconds)
        return audio, int(sample_rate)

    def _voice_prompt(self, audio: np.ndarray, sr: int, text: str, transcribe: bool,
                      report: StageReport) -> VoicePrompt:
        """Tokens (prompt cache), transcript when asked, and vocoder features (same cache entry)."""
        t0 = time.perf_counter()
        tokens: TokenizedAudio = self.tokenizer.encode(audio, sr, transcribe=transcribe)
        report.tokenizer_s = time.perf_counter() - t0
        report.cache_hit = bool(tokens.from_cache)
        report.tokens_from = "cache hit" if tokens.from_cache else "encoded"
        report.encode_s_saved = float(tokens.encode_seconds) if tokens.from_cache else 0.0
        log.info("tokenizer: %s in %.3f s (%d vq02 + %d vq06 codes, key %s)",
                 "cache hit" if tokens.from_cache else "encoded", report.tokenizer_s, len(tokens.vq02),
                 len(tokens.vq06), tokens.cache_key[:12])
        if transcribe:
            text = (tokens.transcript or "").strip()
            report.transcribed = True
            log.info("transcription (with the encode): %r", text[:80])
        features = self._prompt_features(audio, sr, tokens, report)
        mixed = [i - AUDIO_ID_OFFSET for i in tokens.llm_ids]
        return VoicePrompt(tokens.token_str, mixed, features, text, tokens.cache_key)

    def _version_voice(self, version: SynthesisResult, report: StageReport) -> VoicePrompt:
        """A previous output as a prompt: the tokens it was rendered from + its own vocoder features.

        The vocoder made ``version.audio`` from exactly ``version.audio_tokens`` (whole 2+3 groups),
        so they stand for the audio without re-encoding; the features are computed once and kept.
        """
        report.tokens_from, report.cache_hit = "kept", True
        if version.voice is not None:
            report.vocoder_prompt_cached = True
            log.info("edit tokens: kept from the previous version, features reused (0.000 s)")
            return version.voice
        t0 = time.perf_counter()
        features = self.vocoder.prompt_features(prompt_prelude(version.audio, version.sample_rate),
                                                version.sample_rate)
        report.vocoder_prompt_s = time.perf_counter() - t0
        tokens = list(version.audio_tokens)
        version.voice = VoicePrompt(audio_token_str(tokens), tokens, features, version.text, cache_key="")
        log.info("edit tokens: kept %d tokens of the previous version; vocoder prompt computed in %.3f s",
                 len(tokens), report.vocoder_prompt_s)
        return version.voice

    def _prompt_features(self, audio: np.ndarray, sr: int, tokens: TokenizedAudio,
                         report: StageReport) -> PromptFeatures:
        t0 = time.perf_counter()
        prelude = prompt_prelude(audio, sr)
        digest = audio_digest(prelude, sr)
        field_name = VOCODER_FIELD_PREFIX + self.vocoder.fingerprint
        stored = (tokens.cache_entry or {}).get(field_name)
        if isinstance(stored, dict) and stored.get("audio_hash") == digest:
            try:
                features = decode_features(stored)
                report.vocoder_prompt_s = time.perf_counter() - t0
                report.vocoder_prompt_cached = True
                with self._stats_lock:
                    self._vocoder_hits += 1
                    self._vocoder_saved_s += float(stored.get("seconds", 0.0))
                log.info("vocoder prompt: cache hit in %.3f s (mel %s)", report.vocoder_prompt_s,
                         features.mel.shape)
                return features
            except (KeyError, ValueError, TypeError) as exc:  # a damaged field is recomputed, not fatal
                log.warning("vocoder prompt: cached features unreadable (%s); recomputing", exc)
        t1 = time.perf_counter()
        features = self.vocoder.prompt_features(prelude, sr)
        seconds = time.perf_counter() - t1
        if self.cache is not None and tokens.cache_key:
            try:
                self.cache.update(tokens.cache_key, {field_name: encode_features(features, digest, seconds)})
            except Exception as exc:  # an unwritable cache costs speed, never the request
                log.warning("vocoder prompt: could not store features in the prompt cache (%s)", exc)
        report.vocoder_prompt_s = time.perf_counter() - t0
        with self._stats_lock:
            self._vocoder_misses += 1
        log.info("vocoder prompt: computed in %.3f s (mel %s, speaker %s)", report.vocoder_prompt_s,
                 np.shape(features.mel), np.shape(features.speaker_embedding))
        return features

    def _timed_generation(self, run: Callable[[], GenerationResult], report: StageReport) -> GenerationResult:
        t0 = time.perf_counter()
        generation = run()
        report.llm_s = time.perf_counter() - t0
        report.prompt_tokens = generation.prompt_tokens
        report.new_tokens = generation.new_tokens
        report.tokens_per_s = generation.tokens_per_s
        report.dropped_tokens = generation.dropped_tokens
        report.seed = getattr(generation, "seed", None)
        log.info("llm: %d new tokens in %.3f s (%.1f tok/s, prompt %d, %d audio tokens, %d dropped)",
                 generation.new_tokens, report.llm_s, generation.tokens_per_s, generation.prompt_tokens,
                 len(generation.audio_tokens), generation.dropped_tokens)
        if not generation.audio_tokens:
            raise EmptyGenerationError("the model produced no audio tokens; try another seed or a higher "
                                       "temperature")
        return generation

    def _vocode(self, generation: GenerationResult, voice: VoicePrompt, options: SynthesisOptions,
                report: StageReport) -> np.ndarray:
        t0 = time.perf_counter()
        audio = self.vocoder.decode(generation.audio_tokens, voice.mixed_tokens, voice.features,
                                    n_steps=options.flow_steps, seed=options.seed)
        report.vocoder_s = time.perf_counter() - t0
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        report.audio_s = len(audio) / VOCODER_SAMPLE_RATE
        log.info("vocoder: %.2f s of audio in %.3f s (%d flow steps)", report.audio_s, report.vocoder_s,
                 options.flow_steps)
        return audio

    def _finish(self, mode: str, t_start: float, audio: np.ndarray, text: str, prompt_text: str,
                transcribed: bool, options: SynthesisOptions, report: StageReport,
                generation: GenerationResult, warnings: list[str]) -> SynthesisResult:
        report.total_s = time.perf_counter() - t_start
        with self._stats_lock:
            self.requests += 1
        log.info("%s breakdown: %s", mode, report.summary())
        return SynthesisResult(audio=audio, sample_rate=VOCODER_SAMPLE_RATE, text=text,
                               prompt_text=prompt_text, transcribed=transcribed, mode=mode,
                               variant=options.variant or self.config.variant, report=report,
                               audio_tokens=list(generation.audio_tokens), warnings=warnings)

    @staticmethod
    def _validated_task(task: str, subtask: str | None) -> tuple[str, str | None]:
        if task not in EDIT_TASKS:
            raise OptionsError(f"unknown edit task {task!r}; choose one of {', '.join(EDIT_TASKS)}")
        if task not in TASKS_WITH_OPTION:
            return task, None  # paralinguistic tags go into the new text; denoise and vad take none
        if subtask not in EDIT_TASKS[task]:
            raise OptionsError(f"the {task} edit needs a sub-task, one of {', '.join(EDIT_TASKS[task])}; "
                               f"got {subtask!r}")
        return task, subtask

    @staticmethod
    def _generation_options(options: SynthesisOptions) -> GenerationOptions:
        seed = options.seed if options.seed is not None else int(np.random.default_rng().integers(2**31))
        return GenerationOptions(temperature=options.temperature, top_p=options.top_p, seed=seed,
                                 max_length=options.max_length)

    def _warmup_max_length(self) -> int:
        # a short generation is enough to initialise every kernel; random demo weights rarely stop
        return 8192 if not self.demo else 512


def open_cache(directory: Path | None, max_entries: int, max_bytes: int) -> PromptCache:
    """The persistent prompt cache; an unusable folder degrades to an in-memory cache (logged)."""
    try:
        cache = PromptCache(Path(directory) if directory else None, max_entries=max_entries,
                            max_bytes=max_bytes)
    except Exception as exc:  # unwritable or corrupt folder: keep serving, just without persistence
        log.warning("prompt cache at %s is not usable (%s); using an in-memory cache for this run",
                    directory, exc)
        cache = PromptCache(None, max_entries=max_entries, max_bytes=max_bytes)
    if not cache.persistent:  # a persistent cache logs its folder, size and limits when it opens
        log.info("prompt cache: in memory only (limits %d entries / %.0f MiB)", max_entries, max_bytes / MIB)
    return cache
