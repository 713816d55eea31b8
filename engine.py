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
6. scores      each chunk's audio is checked (``scoring.py``): CAM++ similarity to the reference,
               Paraformer transcript error rate against its text; best-of-N keeps the best take

Every result carries its provenance record (``result.manifest``, ``provenance.py``); ``replay``
makes the same audio again from it with the same models.

The engine knows nothing of any UI: the Gradio adapter, the REST API, the benchmark and the tests
all call the same ``clone`` / ``edit`` with the request types of ``synthesis.py``. Bad input
raises one of the input errors of ``errors.py`` with a message a person can act on.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from audio_prep import VOCODER_SAMPLE_RATE
from errors import AudioInputError, EmptyGenerationError, GenerationCancelled, OptionsError, TextInputError
from model_layout import (
    LLM_BACKENDS,
    TOKENIZER_FOLDER,
    VARIANTS,
    VLLM_VARIANTS,
    VOCODER_FOLDER,
    is_demo_models,
    llm_dir_for,
)
from models.edit_tasks import EDIT_TASKS, TASKS_WITH_OPTION, TEXTLESS_TASKS
from models.generation import TokenStreamLLM
from models.llm import Step1LLM, variant_problem
from models.text_input import clean_text, split_language_tag
from models.vocoder import Vocoder
from prompt_cache import PromptCache, open_prompt_cache
from provenance import build_manifest, check_manifest, folder_fingerprint, replay_request
from render import ChunkJob, Render
from scoring import OutputScorer, Scorer
from synthesis import (
    MAX_SEED,
    CloneRequest,
    EditRequest,
    EngineConfig,
    Progress,
    StageReport,
    StreamEvent,
    SynthesisOptions,
    SynthesisResult,
    VoicePrompt,
)
from text_split import PAUSE_SENTENCE_S, split_text
from tokenizer import StepAudioTokenizer
from voice_prompts import VOCODER_HITS, VOCODER_MISSES, VOCODER_SAVED, VoicePrompts
from voices import VoiceLibrary

log = logging.getLogger(__name__)

WARMUP_NEW_TOKENS = 40  # a few audio-token groups run every kernel of every stage once
ProgressFn = Callable[[Progress], None]


class CloneEngine:
    """Loaded models + prompt cache; ``clone`` and ``edit`` return ``SynthesisResult``s.

    Thread-safe: model loading is locked; inference calls are independent (the server limits
    how many run at once with its queue).
    """

    def __init__(self, tokenizer: StepAudioTokenizer, llms: dict[str, TokenStreamLLM], vocoder: Vocoder,
                 cache: PromptCache | None, config: EngineConfig | None = None,
                 model_root: Path | None = None, demo: bool = False,
                 llm_loader: Callable[[str], Step1LLM] | None = None,
                 library: VoiceLibrary | None = None):
        config = config or EngineConfig()
        if config.variant not in llms and llm_loader is None:
            raise OptionsError(f"default variant {config.variant!r} is not loaded")
        self.tokenizer = tokenizer
        self.vocoder = vocoder
        self.cache = cache  # the tokenizer's cache: vocoder features are merged into its entries
        self.config = config
        if library is None and cache is not None:
            library = VoiceLibrary(cache.store)  # voices live beside the prompt cache, never evicted
        self.voices = VoicePrompts(tokenizer, vocoder, cache, library, config)
        self.model_root = model_root
        self.demo = demo
        # (backend, variant) -> loaded LLM; llms given by name belong to the configured backend
        self._llms = {(config.llm_backend, v): llm for v, llm in llms.items()}
        self._llm_loader = llm_loader
        self._load_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._llm_fingerprints: dict[str, str | None] = {}
        # the output checks use the models already loaded; a test may put forced scores here
        self.scorer: Scorer | None = (OutputScorer(tokenizer.vq02, vocoder.speaker)
                                      if config.scores and vocoder.speaker is not None else None)
        if config.scores and self.scorer is None:
            log.warning("scores are off: the vocoder folder has no speaker model (campplus.onnx)")
        self.requests = 0  # requests finished since start-up
        self.requests_active = 0  # requests between their first event and their end

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

        if config.llm_backend == "vllm":  # the served model; native variants stay loadable on demand
            llms = {config.variant: load_vllm(model_root, config)}
        else:
            llms = {config.variant: load_llm(config.variant)}
        return cls(tokenizer, llms, vocoder, cache, config, model_root, demo, llm_loader=load_llm)

    def llm(self, variant: str | None = None, backend: str | None = None) -> TokenStreamLLM:
        """The LLM of ``variant`` on ``backend`` (defaults: the configured ones), loading a native
        variant on first use. A vLLM deployment can still use the native backend (e.g. while its
        server is down) by asking for it."""
        backend = backend or self.config.llm_backend
        if backend not in LLM_BACKENDS:
            raise OptionsError(f"unknown LLM backend {backend!r}; choose one of {', '.join(LLM_BACKENDS)}")
        variant = variant or (self.config.variant if backend == self.config.llm_backend else "base")
        key = (backend, variant)
        if key in self._llms:
            return self._llms[key]
        if backend != "native" or variant not in VARIANTS or self._llm_loader is None:
            raise OptionsError(f"model variant {variant!r} on the {backend} backend is not available here; "
                               f"choose {', '.join(self.available_variants())}")
        with self._load_lock:
            if key not in self._llms:
                try:
                    self._llms[key] = self._llm_loader(variant)
                except Exception as exc:  # an optional variant that cannot load is the user's choice to fix
                    log.exception("could not load LLM variant %s", variant)
                    raise OptionsError(f"model variant {variant!r} could not be loaded ({exc}); "
                                       f"use {self.config.variant!r} or check the model files") from exc
        return self._llms[key]

    @property
    def loaded_variants(self) -> list[str]:
        """Variants loaded on the configured backend."""
        return [v for b, v in self._llms if b == self.config.llm_backend]

    def available_variants(self) -> list[str]:
        """Variants of the configured backend that can run here (loaded first): files present,
        shapes and libraries usable. A vLLM deployment serves the one variant it was started with."""
        out = self.loaded_variants
        if self.config.llm_backend == "native" and self._llm_loader is not None and self.model_root:
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
        """``clone_stream`` collected: the whole result at once (``progress`` sees every Progress)."""
        return _collect(self.clone_stream(request, cancel), progress)

    def edit(self, request: EditRequest, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> SynthesisResult:
        """``edit_stream`` collected: the whole result at once (``progress`` sees every Progress)."""
        return _collect(self.edit_stream(request, cancel), progress)

    def clone_stream(self, request: CloneRequest,
                     cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Speak ``request.target_text`` in the voice of ``request.audio``, as it is made.

        Yields ``Progress`` and ``AudioPiece`` events, then the ``SynthesisResult`` (whose audio is
        every piece joined). Long text is split into chunks of at most ``chunk_chars`` characters,
        each one LLM pass with the same voice prompt. Raises an input error before any event when
        the request is unusable; Stop (``cancel``) keeps what was made (``result.stopped``).
        """
        return self._counted(self._clone(request, cancel))

    def edit_stream(self, request: EditRequest,
                    cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Edit ``request.audio`` with ``request.task`` / ``subtask``, as it is made (see clone_stream).

        The audio is also the vocoder prompt. When ``request.source`` is a previous result its kept
        tokens are reused (no hashing, no encode), one text chunk per segment of that result, so a
        long version is edited piece by piece; otherwise the clip goes through the tokenizer.
        """
        return self._counted(self._edit(request, cancel))

    def _counted(self, events: Iterator[StreamEvent]) -> Iterator[StreamEvent]:
        """``events``, counted in ``requests_active`` from the first event until it ends or is closed."""
        with self._stats_lock:
            self.requests_active += 1
        try:
            yield from events
        finally:
            events.close()
            with self._stats_lock:
                self.requests_active -= 1

    def _clone(self, request: CloneRequest, cancel: threading.Event | None,
               accept_error_rate: float | None = None) -> Iterator[StreamEvent]:
        """The body of ``clone_stream`` (``accept_error_rate``: a replay's recorded best-of threshold)."""
        t_start = time.perf_counter()
        report, warnings = StageReport(), []
        options = self._resolved(request.options)
        # 1. prep
        target = clean_text(request.target_text, "target text", self.config.max_text_chars, warnings)
        chunks = split_text(target, options.chunk_chars)
        # a leading dialect or language tag ([Cantonese]) applies to the whole text: every chunk's prompt
        language_tag, _ = split_language_tag(target)
        prompt_text = clean_text(request.reference_text, "reference text", self.config.max_text_chars,
                                 warnings, allow_empty=True)
        llm = self.llm(options.variant, options.backend)
        if request.voice_id is not None:  # a library voice: its tokens, features and text are stored
            transcribe = False
            report.prep_s = time.perf_counter() - t_start
            log.info("clone prep: %.3f s (voice %s, %d target chars in %d chunk(s))", report.prep_s,
                     request.voice_id, len(target), len(chunks))
            voice = self.voices.from_library(request.voice_id, report)
        else:
            transcribe = self.voices.needs_transcription(prompt_text, "reference")
            audio, sr = self.voices.validated_audio(request.audio, request.sample_rate)
            report.prep_s = time.perf_counter() - t_start
            log.info("clone prep: %.3f s (%.2f s of audio at %d Hz, %d target chars in %d chunk(s))",
                     report.prep_s, audio.shape[-1] / sr, sr, len(target), len(chunks))
            # 2-3. tokens (+ transcript) and vocoder prompt features
            voice = self.voices.from_clip(audio, sr, prompt_text, transcribe, report)
        if transcribe and not voice.text:
            warnings.append("auto-transcription found no words in the reference; the clone may be worse")
        # 4-5. LLM and vocoder, chunk by chunk
        jobs = [ChunkJob(c.text, partial(llm.clone_prompt, voice.text, voice.token_str,
                                         _with_tag(language_tag, c.text)), voice, c.pause_s) for c in chunks]
        render = self._render(llm, jobs, options, cancel, report, t_start, accept_error_rate)
        yield from render.events()
        provenance = {"kind": "clone", "text": target, "edit": None,
                      "voice": {"voice_id": request.voice_id, "reference_hash": voice.cache_key or None,
                                "reference_text": voice.text, "transcribed": transcribe}}
        yield self._finish("clone", t_start, render, target, voice.text, transcribe, options, report,
                           warnings, llm, provenance)

    def _edit(self, request: EditRequest, cancel: threading.Event | None,
              accept_error_rate: float | None = None) -> Iterator[StreamEvent]:
        """The body of ``edit_stream`` (``accept_error_rate``: a replay's recorded best-of threshold)."""
        t_start = time.perf_counter()
        report, warnings = StageReport(), []
        options = self._resolved(request.options)
        task, subtask = self._validated_task(request.task, request.subtask)
        source = request.source
        audio_text = clean_text(request.audio_text, "text of the audio", self.config.max_text_chars, warnings,
                                allow_empty=True)
        para_text = None
        if task == "paralinguistic":
            para_text = clean_text(request.target_text, "new text (with tags such as [Laughter])",
                                   self.config.max_text_chars, warnings)
        llm = self.llm(options.variant, options.backend)
        # a previous version edited again keeps its own tokens: no validation, hashing or encode
        chained = source is not None and (not audio_text or audio_text == source.text)
        transcribe = False
        if chained:
            report.prep_s = time.perf_counter() - t_start
            log.info("edit prep: %.3f s (task %s/%s, continuing from a previous %s)", report.prep_s, task,
                     subtask or "-", source.mode)
            voices = self.voices.from_version(source, report)
        else:
            # denoise and vad instructions do not quote the text, so an empty one is fine there
            transcribe = (task not in TEXTLESS_TASKS
                          and self.voices.needs_transcription(audio_text, "audio to edit"))
            audio, sr = self.voices.validated_audio(request.audio, request.sample_rate)
            report.prep_s = time.perf_counter() - t_start
            log.info("edit prep: %.3f s (task %s/%s, %.2f s of audio at %d Hz)", report.prep_s, task,
                     subtask or "-", audio.shape[-1] / sr, sr)
            voices = [self.voices.from_clip(audio, sr, audio_text, transcribe, report)]
        new_texts = self._paralinguistic_texts(para_text, voices, options)
        jobs = [ChunkJob(new if new is not None else voice.text,
                         partial(llm.edit_prompt, voice.text, voice.token_str, task, subtask, new), voice,
                         PAUSE_SENTENCE_S)
                for voice, new in zip(voices, new_texts, strict=True)]
        render = self._render(llm, jobs, options, cancel, report, t_start, accept_error_rate)
        yield from render.events()
        mode = f"edit {task}" + (f"/{subtask}" if subtask else "")
        prompt_text = " ".join(v.text for v in voices)
        text = " ".join(job.text for job in jobs)
        source_record = ({"kind": "output", "manifest": source.manifest or None} if chained else
                         {"kind": "clip", "reference_hash": voices[0].cache_key or None})
        provenance = {"kind": "edit", "text": text, "voice": None,
                      "edit": {"task": task, "subtask": subtask, "audio_text": prompt_text,
                               "new_text": para_text, "transcribed": transcribe, "source": source_record}}
        yield self._finish(mode, t_start, render, text, prompt_text, transcribe, options, report, warnings,
                           llm, provenance)

    def prepare_reference(self, audio: np.ndarray, sample_rate: int, reference_text: str = "",
                          report: StageReport | None = None) -> str:
        """Validate and encode a reference clip ahead of Clone (tokens and vocoder features land in
        the prompt cache, so the clone is a hit); returns the reference text, transcribed when it
        was empty and auto-transcription is on (else returned as given). ``report``, when given,
        receives the tokenizer and vocoder-prompt times of this encode (the page shows them)."""
        start = time.perf_counter()
        text = clean_text(reference_text, "reference text", self.config.max_text_chars, [], allow_empty=True)
        audio, sr = self.voices.validated_audio(audio, sample_rate)
        report = StageReport() if report is None else report
        voice = self.voices.from_clip(audio, sr, text, not text and self.config.auto_transcribe, report)
        log.info("reference prepared in %.3f s (tokens %s, features %s)", time.perf_counter() - start,
                 report.tokens_from, "cached" if report.vocoder_prompt_cached else "computed")
        return voice.text

    def replay(self, manifest: dict, audio: np.ndarray | None = None, sample_rate: int | None = None,
               cancel: threading.Event | None = None) -> SynthesisResult:
        """Make a recorded output again from its provenance record (``result.manifest``).

        With the same model files the samples are the same, bit for bit. A clone from a library voice
        needs nothing else; one from a reference clip, or an edit of an uploaded clip, needs that clip
        ((samples,) or (channels, samples) at ``sample_rate`` Hz; it is checked against the recorded
        prompt-cache key). An edit of a previous output replays that output first from the nested
        record (with the same ``audio`` for the chain's first clip). Other model files are noted in
        ``result.warnings``: the audio will differ then.
        """
        manifest = check_manifest(manifest)
        edit = manifest.get("edit") or {}
        source_record = edit.get("source") or {}
        source = None
        if manifest["kind"] == "edit" and source_record.get("kind") == "output":
            if not isinstance(source_record.get("manifest"), dict):
                raise OptionsError("this edit's record has no record of the version it edited; it cannot "
                                   "be replayed")
            source = self.replay(source_record["manifest"], audio, sample_rate, cancel)
        elif audio is not None:
            expected = (source_record if manifest["kind"] == "edit"
                        else manifest.get("voice") or {}).get("reference_hash")
            clip, sr = self.voices.validated_audio(audio, sample_rate)
            if expected and self.tokenizer.prepare(clip, sr)[0] != expected:
                raise AudioInputError("this clip is not the one the record was made from (its prompt-cache "
                                      "key differs); send the original clip")
        request = replay_request(manifest, audio, sample_rate, source)
        accept = (manifest.get("options") or {}).get("accept_error_rate")
        events = (self._clone(request, cancel, accept) if isinstance(request, CloneRequest)
                  else self._edit(request, cancel, accept))
        result = _collect(self._counted(events), None)
        recorded = (manifest.get("model") or {}).get("fingerprints") or {}
        current = result.manifest["model"]["fingerprints"]
        changed = sorted(name for name, value in recorded.items() if value and current.get(name) != value)
        if changed:
            note = (f"replayed with other model files ({', '.join(changed)}) than the record's; the audio "
                    "differs from the original")
            log.warning("%s", note)
            result.warnings.append(note)
        log.info("replayed a %s record: %d samples, sha256 %s (recorded %s)", manifest["kind"],
                 len(result.audio), result.manifest["audio"]["sha256"][:12],
                 str((manifest.get("audio") or {}).get("sha256", "-"))[:12])
        return result

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
        cache = self.cache_stats()
        return {
            "status": "ok",
            "models_loaded": {"tokenizer": True, "vocoder": True, "llm": self.loaded_variants},
            "model_root": self.model_root.name if self.model_root else None,  # a name, never a server path
            "device": str(getattr(self._llms.get(self.config.variant), "device", self.config.device)),
            "llm_backend": self.config.llm_backend,
            "llm_repetition_rule": all(llm.applies_repetition_rule for llm in self._llms.values()),
            "llm_backends_loaded": sorted({b for b, _ in self._llms}),
            "variant": self.config.variant,
            "variants_loaded": self.loaded_variants,
            "variants_available": self.available_variants(),
            "demo": self.demo,
            "auto_transcribe": self.config.auto_transcribe,
            "scores": self.scorer is not None,
            "requests": self.requests,
            "requests_active": self.requests_active,
            "cache": cache,
            # which store holds the prompt cache and the voices, and whether it answers (Redis may not)
            "store": cache.get("store") or {"backend": "none", "connected": False},
        }

    def cache_stats(self) -> dict:
        """Prompt-cache statistics plus the vocoder-feature hits kept in the same entries."""
        stats = dict(self.cache.stats()) if self.cache is not None else {
            "hits": 0, "misses": 0, "hit_rate": 0.0, "entries": 0, "bytes": 0, "time_saved_s": 0.0,
            "directory": None, "persistent": False}
        for name in (VOCODER_HITS, VOCODER_MISSES, VOCODER_SAVED):  # shared counters, 0 until counted
            stats.setdefault(name, 0)
        return stats

    def clear_cache(self) -> dict:
        """Empty the prompt cache and reset its counters (library voices stay); returns what was removed
        ({"entries", "bytes", "aliases", "counters"}, see ``PromptCache.clear``)."""
        if self.cache is None:
            return {"entries": 0, "bytes": 0, "aliases": 0, "counters": {}}
        return self.cache.clear()

    # ---- stages ------------------------------------------------------------------------------

    def _paralinguistic_texts(self, para_text: str | None, voices: list[VoicePrompt],
                              options: SynthesisOptions) -> list[str | None]:
        """The new text of each segment: the whole text for one segment, else the text split like
        the segments (a paralinguistic edit of a long version needs as many sentences as it has)."""
        if para_text is None or len(voices) == 1:
            return [para_text] * len(voices)
        parts = [c.text for c in split_text(para_text, options.chunk_chars or self.config.chunk_chars)]
        if len(parts) != len(voices):
            raise TextInputError(f"the version has {len(voices)} parts but the new text splits into "
                                 f"{len(parts)}; keep the same sentences and only add tags such as "
                                 "[Laughter]")
        return parts

    def _render(self, llm: Step1LLM, jobs: list[ChunkJob], options: SynthesisOptions,
                cancel: threading.Event | None, report: StageReport, t_start: float,
                accept_error_rate: float | None) -> Render:
        return Render(llm, self.vocoder, jobs, options, options.seed, cancel, report, t_start, self.scorer,
                      self.config.accept_error_rate if accept_error_rate is None else accept_error_rate)

    def _resolved(self, options: SynthesisOptions) -> SynthesisOptions:
        """The validated options with every default made explicit (as recorded in the manifest): the
        variant, the chunk size and the seed (a fresh random one when none was asked for)."""
        options = options.validated()
        if options.best_of > 1 and self.scorer is None:
            raise OptionsError("trying several takes needs the output scores, which are off on this server "
                               "(--no-scores); ask for one take")
        return replace(options, variant=options.variant or self.config.variant,
                       chunk_chars=options.chunk_chars or self.config.chunk_chars,
                       seed=self._request_seed(options))

    def llm_fingerprint(self, llm: Step1LLM) -> str | None:
        """Fingerprint of an LLM's files (computed once per variant; None for a backend without a folder)."""
        key = f"{llm.backend}:{llm.variant}"
        if key not in self._llm_fingerprints:
            self._llm_fingerprints[key] = folder_fingerprint(getattr(llm, "model_dir", None))
        return self._llm_fingerprints[key]

    def _finish(self, mode: str, t_start: float, render: Render, text: str, prompt_text: str,
                transcribed: bool, options: SynthesisOptions, report: StageReport,
                warnings: list[str], llm: Step1LLM, provenance: dict) -> SynthesisResult:
        audio = render.audio
        report.seed, report.stream, report.stopped = render.seed, options.stream, render.stopped
        report.audio_s = len(audio) / VOCODER_SAMPLE_RATE
        report.tokens_per_s = report.new_tokens / report.llm_s if report.llm_s > 0 else 0.0
        report.total_s = time.perf_counter() - t_start
        warnings = warnings + render.warnings
        if not render.segments:
            if render.stopped:
                raise GenerationCancelled("stopped before any audio was made")
            raise EmptyGenerationError(f"the model produced no audio for any of the {len(render.jobs)} text "
                                       "chunk(s); try another seed or a clearer reference clip")
        with self._stats_lock:
            self.requests += 1
        log.info("%s breakdown: %s", mode, report.summary())
        spoken = " ".join(segment.text for segment in render.segments)
        result = SynthesisResult(audio=audio, sample_rate=VOCODER_SAMPLE_RATE,
                                 text=spoken if len(render.segments) < len(render.jobs) else text,
                                 prompt_text=prompt_text, transcribed=transcribed, mode=mode,
                                 variant=render.llm.variant, backend=render.llm.backend,
                                 report=report,
                                 audio_tokens=list(render.tokens), warnings=warnings,
                                 segments=render.segments, stopped=render.stopped)
        model = {"variant": result.variant, "backend": llm.backend, "demo": self.demo,
                 "fingerprints": {**self.voices.fingerprints(), "llm": self.llm_fingerprint(llm)}}
        result.manifest = build_manifest(result, model=model, options=options,
                                         accept_error_rate=render.accept_error_rate, **provenance)
        return result

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
    def _request_seed(options: SynthesisOptions) -> int:
        """The request's seed: the one asked for, or a fresh random one (recorded in the report)."""
        return options.seed if options.seed is not None else secrets.randbelow(MAX_SEED + 1)


def _collect(events: Iterator[StreamEvent], progress: ProgressFn | None) -> SynthesisResult:
    result = None
    for event in events:
        if isinstance(event, Progress) and progress is not None:
            progress(event)
        elif isinstance(event, SynthesisResult):
            result = event
    if result is None:  # clone_stream and edit_stream always end with their result
        raise RuntimeError("the request ended without a result")
    return result


def load_vllm(model_root: Path, config: EngineConfig) -> TokenStreamLLM:
    """The vLLM backend for ``config.variant``: a running ``vllm serve`` at ``config.llm_url``, or
    vLLM's engine in this process (which needs the vllm package: see docs/VLLM.md)."""
    from models.llm_vllm import VLLMStep1LLM
    from models.vllm_options import VLLMEngineOptions

    if config.variant not in VLLM_VARIANTS:
        raise OptionsError(f"the vllm backend serves {' or '.join(VLLM_VARIANTS)}, not {config.variant!r} "
                           "(bitsandbytes 4-bit is the native backend's; vLLM runs the AWQ checkpoint)")
    folder = llm_dir_for(model_root, config.variant)
    t0 = time.perf_counter()
    if config.llm_url:
        llm = VLLMStep1LLM.connect(config.llm_url, folder)
    else:
        llm = VLLMStep1LLM.start_engine(folder, config.vllm or VLLMEngineOptions())
    llm.variant = config.variant
    log.info("LLM %s on vLLM (%s) ready in %.2f s; repetition rule %s", config.variant, llm.mode,
             time.perf_counter() - t0, "on" if llm.applies_repetition_rule else "OFF")
    return llm


def _with_tag(tag: str | None, text: str) -> str:
    """``text`` led by the request's language tag (the first chunk already starts with it)."""
    return text if tag is None or split_language_tag(text)[0] is not None else f"{tag}{text}"
