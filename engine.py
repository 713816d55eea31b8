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

The engine knows nothing of any UI: the Gradio adapter, the REST API, the benchmark and the tests
all call the same ``clone`` / ``edit`` with the request types of ``synthesis.py``. Bad input
raises one of the input errors of ``errors.py`` with a message a person can act on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from audio_prep import VOCODER_SAMPLE_RATE, prompt_prelude, to_float, validate_reference
from errors import AudioInputError, EmptyGenerationError, OptionsError, TextInputError
from model_layout import TOKENIZER_FOLDER, VARIANTS, VOCODER_FOLDER, is_demo_models, llm_dir_for
from models.audio_tokens import token_str
from models.llm import GenerationOptions, GenerationResult, Step1LLM, variant_problem
from models.prompt_features import PromptFeatures, audio_digest, decode_features, encode_features
from models.prompts import EDIT_TASKS, TASKS_WITH_OPTION, TEXTLESS_TASKS, clean_text
from models.vocoder import Vocoder
from prompt_cache import PromptCache, open_prompt_cache
from synthesis import (
    CloneRequest,
    EditRequest,
    EngineConfig,
    StageReport,
    SynthesisOptions,
    SynthesisResult,
    VoicePrompt,
)
from tokenizer import StepAudioTokenizer, TokenizedAudio

log = logging.getLogger(__name__)

VOCODER_FIELD_PREFIX = "vocoder:"  # prompt-cache field holding the vocoder prompt features
WARMUP_NEW_TOKENS = 40  # a few audio-token groups run every kernel of every stage once
ProgressFn = Callable[[int], None]


class CloneEngine:
    """Loaded models + prompt cache; ``clone`` and ``edit`` return ``SynthesisResult``s.

    Thread-safe: model loading is locked; inference calls are independent (the server limits
    how many run at once with its queue).
    """

    def __init__(self, tokenizer: StepAudioTokenizer, llms: dict[str, Step1LLM], vocoder: Vocoder,
                 cache: PromptCache | None, config: EngineConfig | None = None,
                 model_root: Path | None = None, demo: bool = False,
                 llm_loader: Callable[[str], Step1LLM] | None = None):
        config = config or EngineConfig()
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
    def load(cls, model_root: Path, config: EngineConfig | None = None, *, cache_dir: Path | None = None,
             cache_max_entries: int = 2000, cache_max_bytes: int = 1 << 30, ort_threads: int | None = None,
             demo: bool | None = None, cache_url: str | None = None) -> CloneEngine:
        """Load the tokenizer, the vocoder and the ``config.variant`` LLM from ``model_root`` (once)."""
        config = config or EngineConfig()
        model_root = Path(model_root)
        demo = is_demo_models(model_root) if demo is None else demo
        cache = open_prompt_cache(cache_dir, cache_max_entries, cache_max_bytes, url=cache_url)
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
        """Variants that can run here (the loaded ones first): files present, shapes and libraries usable."""
        out = list(self._llms)
        if self._llm_loader is not None and self.model_root is not None:
            for variant in VARIANTS:
                if variant in out:
                    continue
                problem = variant_problem(llm_dir_for(self.model_root, variant), variant)
                if problem is None:
                    out.append(variant)
                else:
                    log.debug("variant %s not offered: %s", variant, problem)
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
        options = SynthesisOptions(seed=0, max_new_tokens=WARMUP_NEW_TOKENS)
        start = time.perf_counter()
        try:
            result = self.clone(CloneRequest(audio, sample_rate, reference_text, target_text, options))
        except (EmptyGenerationError, TextInputError) as exc:  # any outcome warms the kernels
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
        audio = to_float(np.asarray(audio))
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
        return VoicePrompt(tokens.token_str, tokens.mixed, features, text, tokens.cache_key)

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
        version.voice = VoicePrompt(token_str(tokens), tokens, features, version.text, cache_key="")
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
                                 max_length=options.max_length, max_new_tokens=options.max_new_tokens)
