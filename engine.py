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

Stages 1-3 build the request's chunk jobs (``jobs.py``), ``render.py`` runs them (4-6) and makes
the result; the LLMs of every variant and backend are kept by ``llm_registry.py``.

Every result carries its provenance record (``result.manifest``, ``provenance.py``); ``replay``
makes the same audio again from it with the same models.

The engine knows nothing of any UI: the Gradio adapter, the REST API, the benchmark and the tests
all call the same ``clone`` / ``edit`` with the request types of ``synthesis.py``. Bad input
raises one of the input errors of ``errors.py`` with a message a person can act on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from errors import AudioInputError, EmptyGenerationError, TextInputError
from jobs import JobBuilder, Plan
from llm_registry import LLMLoader, LLMRegistry, load_vllm, native_loader
from model_layout import TOKENIZER_FOLDER, VOCODER_FOLDER, is_demo_models
from models.generation import TokenStreamLLM
from models.text_input import clean_text
from models.vocoder import Vocoder
from prompt_cache import PromptCache, open_prompt_cache
from provenance import (
    build_manifest,
    check_manifest,
    edited_version_record,
    note_replay,
    recorded_reference_hash,
    replay_request,
)
from render import Render
from reports import StageReport
from scoring import OutputScorer, Scorer
from synthesis import (
    CloneRequest,
    EditRequest,
    EngineConfig,
    Progress,
    StreamEvent,
    SynthesisOptions,
    SynthesisResult,
)
from tokenizer import StepAudioTokenizer
from voice_prompts import VoicePrompts
from voices import VoiceLibrary

log = logging.getLogger(__name__)

WARMUP_NEW_TOKENS = 40  # a few audio-token groups run every kernel of every stage once
ProgressFn = Callable[[Progress], None]
PrepareFn = Callable[[CloneRequest | EditRequest, SynthesisOptions, StageReport, float], Plan]


class CloneEngine:
    """Loaded models + prompt cache; ``clone`` and ``edit`` return ``SynthesisResult``s.

    Thread-safe: model loading is locked; inference calls are independent (the server limits
    how many run at once with its queue).
    """

    def __init__(
        self,
        tokenizer: StepAudioTokenizer,
        llms: dict[str, TokenStreamLLM],
        vocoder: Vocoder,
        cache: PromptCache | None,
        config: EngineConfig | None = None,
        model_root: Path | None = None,
        demo: bool = False,
        llm_loader: LLMLoader | None = None,
        library: VoiceLibrary | None = None,
    ):
        config = config or EngineConfig()
        self.llms = LLMRegistry(llms, config, model_root, llm_loader)  # raises when the default is missing
        self.tokenizer = tokenizer
        self.vocoder = vocoder
        self.cache = cache  # the tokenizer's cache: vocoder features are merged into its entries
        self.config = config
        if library is None and cache is not None:
            library = VoiceLibrary(cache.store)  # voices live beside the prompt cache, never evicted
        self.voices = VoicePrompts(tokenizer, vocoder, cache, library, config)
        self._jobs = JobBuilder(config, self.voices, self.llms)
        self.model_root = model_root
        self.demo = demo
        self._stats_lock = threading.Lock()
        # the output checks use the models already loaded; a test may put forced scores here
        self.scorer: Scorer | None = (
            OutputScorer(tokenizer.vq02, vocoder.speaker)
            if config.scores and vocoder.speaker is not None
            else None
        )
        if config.scores and self.scorer is None:
            log.warning("scores are off: the vocoder folder has no speaker model (campplus.onnx)")
        self.requests = 0  # requests finished since start-up
        self.requests_active = 0  # requests between their first event and their end

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model_root: Path,
        config: EngineConfig | None = None,
        *,
        cache_dir: Path | None = None,
        cache_max_entries: int = 2000,
        cache_max_bytes: int = 1 << 30,
        ort_threads: int | None = None,
        demo: bool | None = None,
        cache_url: str | None = None,
    ) -> CloneEngine:
        """Load the tokenizer, the vocoder and the ``config.variant`` LLM from ``model_root`` (once)."""
        config = config or EngineConfig()
        model_root = Path(model_root)
        demo = is_demo_models(model_root) if demo is None else demo
        cache = open_prompt_cache(cache_dir, cache_max_entries, cache_max_bytes, url=cache_url)
        start = time.perf_counter()
        tokenizer = StepAudioTokenizer(
            model_root / TOKENIZER_FOLDER, device=config.device, ort_threads=ort_threads, cache=cache
        )
        log.info(
            "loaded tokenizer from %s (%.2f s)", model_root / TOKENIZER_FOLDER, time.perf_counter() - start
        )
        start = time.perf_counter()
        vocoder = Vocoder.load(model_root / VOCODER_FOLDER, device=config.device, dtype=config.dtype)
        log.info("loaded vocoder from %s (%.2f s)", model_root / VOCODER_FOLDER, time.perf_counter() - start)
        load_llm = native_loader(model_root, config)
        if config.llm_backend == "vllm":  # the served model; native variants stay loadable on demand
            llms = {config.variant: load_vllm(model_root, config)}
        else:
            llms = {config.variant: load_llm(config.variant)}
        return cls(tokenizer, llms, vocoder, cache, config, model_root, demo, llm_loader=load_llm)

    def llm(self, variant: str | None = None, backend: str | None = None) -> TokenStreamLLM:
        """The LLM of ``variant`` on ``backend`` (defaults: the configured ones; see ``LLMRegistry.get``)."""
        return self.llms.get(variant, backend)

    @property
    def loaded_variants(self) -> list[str]:
        """Variants loaded on the configured backend."""
        return self.llms.loaded_variants

    def available_variants(self) -> list[str]:
        """Variants of the configured backend that can run here (loaded first)."""
        return self.llms.available_variants()

    # ---- requests ----------------------------------------------------------------------------

    def clone(
        self, request: CloneRequest, progress: ProgressFn | None = None, cancel: threading.Event | None = None
    ) -> SynthesisResult:
        """``clone_stream`` collected: the whole result at once (``progress`` sees every Progress)."""
        return _collect(self.clone_stream(request, cancel), progress)

    def edit(
        self, request: EditRequest, progress: ProgressFn | None = None, cancel: threading.Event | None = None
    ) -> SynthesisResult:
        """``edit_stream`` collected: the whole result at once (``progress`` sees every Progress)."""
        return _collect(self.edit_stream(request, cancel), progress)

    def clone_stream(
        self, request: CloneRequest, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]:
        """Speak ``request.target_text`` in the voice of ``request.audio``, as it is made.

        Yields ``Progress`` and ``AudioPiece`` events, then the ``SynthesisResult`` (whose audio is
        every piece joined). Long text is split into chunks of at most ``chunk_chars`` characters,
        each one LLM pass with the same voice prompt. Raises an input error before any event when
        the request is unusable; Stop (``cancel``) keeps what was made (``result.stopped``).
        """
        return self._counted(self._run(self._jobs.clone, request, cancel))

    def edit_stream(
        self, request: EditRequest, cancel: threading.Event | None = None
    ) -> Iterator[StreamEvent]:
        """Edit ``request.audio`` with ``request.task`` / ``subtask``, as it is made (see clone_stream).

        The audio is also the vocoder prompt. When ``request.source`` is a previous result its kept
        tokens are reused (no hashing, no encode), one text chunk per segment of that result, so a
        long version is edited piece by piece; otherwise the clip goes through the tokenizer.
        """
        return self._counted(self._run(self._jobs.edit, request, cancel))

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

    def _run(
        self,
        prepare: PrepareFn,
        request: CloneRequest | EditRequest,
        cancel: threading.Event | None,
        accept_error_rate: float | None = None,
    ) -> Iterator[StreamEvent]:
        """The body of ``clone_stream`` / ``edit_stream``: prep (``prepare``, a ``JobBuilder`` method),
        render, result (``accept_error_rate``: a replay's recorded best-of threshold)."""
        t_start = time.perf_counter()
        report = StageReport()
        options = request.options.resolved(self.config, self.scorer is not None)
        # 1-3. texts, LLM, voice prompts (tokens + transcript, vocoder prompt features), jobs
        plan = prepare(request, options, report, t_start)
        # 4-6. LLM and vocoder (and scores), chunk by chunk
        accept = self.config.accept_error_rate if accept_error_rate is None else accept_error_rate
        render = Render(
            plan.llm,
            self.vocoder,
            plan.jobs,
            options,
            options.seed,
            cancel,
            report,
            t_start,
            self.scorer,
            accept,
        )
        yield from render.events()
        result = render.result(plan.mode, plan.text, plan.prompt_text, plan.transcribed, plan.warnings)
        with self._stats_lock:
            self.requests += 1
        model = {
            "variant": result.variant,
            "backend": plan.llm.backend,
            "demo": self.demo,
            "fingerprints": {**self.voices.fingerprints(), "llm": self.llms.fingerprint(plan.llm)},
        }
        result.manifest = build_manifest(
            result,
            model=model,
            options=options,
            accept_error_rate=render.accept_error_rate,
            **plan.provenance,
        )
        yield result

    def prepare_reference(
        self, audio: np.ndarray, sample_rate: int, reference_text: str = "", report: StageReport | None = None
    ) -> str:
        """Validate and encode a reference clip ahead of Clone (tokens and vocoder features land in
        the prompt cache, so the clone is a hit); returns the reference text, transcribed when it
        was empty and auto-transcription is on (else returned as given). ``report``, when given,
        receives the tokenizer and vocoder-prompt times of this encode (the page shows them)."""
        start = time.perf_counter()
        text = clean_text(reference_text, "reference text", self.config.max_text_chars, [], allow_empty=True)
        audio, sr = self.voices.validated_audio(audio, sample_rate)
        report = StageReport() if report is None else report
        voice = self.voices.from_clip(audio, sr, text, not text and self.config.auto_transcribe, report)
        log.info(
            "reference prepared in %.3f s (tokens %s, features %s)",
            time.perf_counter() - start,
            report.tokens_from,
            "cached" if report.vocoder_prompt_cached else "computed",
        )
        return voice.text

    def replay(
        self,
        manifest: dict,
        audio: np.ndarray | None = None,
        sample_rate: int | None = None,
        cancel: threading.Event | None = None,
    ) -> SynthesisResult:
        """Make a recorded output again from its provenance record (``result.manifest``).

        With the same model files the samples are the same, bit for bit. A clone from a library voice
        needs nothing else; one from a reference clip, or an edit of an uploaded clip, needs that clip
        ((samples,) or (channels, samples) at ``sample_rate`` Hz; it is checked against the recorded
        prompt-cache key). An edit of a previous output replays that output first from the nested
        record (with the same ``audio`` for the chain's first clip). Other model files are noted in
        ``result.warnings``: the audio will differ then.
        """
        manifest = check_manifest(manifest)
        edited = edited_version_record(manifest)
        source = None
        if edited is not None:
            source = self.replay(edited, audio, sample_rate, cancel)
        elif audio is not None:
            expected = recorded_reference_hash(manifest)
            clip, sr = self.voices.validated_audio(audio, sample_rate)
            if expected and self.tokenizer.prepare(clip, sr)[0] != expected:
                raise AudioInputError(
                    "this clip is not the one the record was made from (its prompt-cache "
                    "key differs); send the original clip"
                )
        request = replay_request(manifest, audio, sample_rate, source)
        accept = (manifest.get("options") or {}).get("accept_error_rate")
        prepare = self._jobs.clone if isinstance(request, CloneRequest) else self._jobs.edit
        events = self._run(prepare, request, cancel, accept)
        result = _collect(self._counted(events), None)
        note_replay(manifest, result)
        return result

    def warm_up(
        self, audio: np.ndarray, sample_rate: int, reference_text: str, target_text: str = "Warm up."
    ) -> StageReport:
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
            "device": self.llms.device(),
            "llm_backend": self.config.llm_backend,
            "llm_repetition_rule": self.llms.applies_repetition_rule,
            "llm_decode": self.llms.decode(),
            "llm_prefix_cache": _merged([store.stats() for store in self.llms.prefix_stores()]),
            "llm_backends_loaded": self.llms.loaded_backends,
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
        """Prompt-cache statistics plus the vocoder-feature hits (``VoicePrompts.cache_stats``)."""
        return self.voices.cache_stats()

    def clear_cache(self) -> dict:
        """Empty the prompt cache and reset its counters (library voices stay); returns what was removed
        (``VoicePrompts.clear_cache``)."""
        for store in self.llms.prefix_stores():  # what the LLM kept of those voices goes too
            store.clear()
        return self.voices.clear_cache()


def _merged(stats: list[dict]) -> dict | None:
    """Figures of several stores summed (None when there is none)."""
    if not stats:
        return None
    return {
        key: round(sum(s[key] for s in stats), 1) if key == "mb" else sum(s[key] for s in stats)
        for key in stats[0]
    }


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
