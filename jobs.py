"""Chunk jobs: how a clone or an edit request becomes the LLM passes that ``render.Render`` runs.

    builder = JobBuilder(config, voice_prompts, llms)
    plan = builder.clone(request, options, report, t_start)    # or builder.edit(...)
    plan.llm, plan.jobs                                        # what Render runs
    plan.text, plan.prompt_text, plan.provenance               # what the result and its record say

This is the prep stage of a request (steps 1-3 of engine.py): the texts are cleaned and split, the
LLM is chosen, the voice prompts are made (tokenizer and prompt cache, a previous version's own
tokens, or the voice library) and the jobs are built. A clone is one job per text chunk, each with
the same voice prompt (a leading language tag such as ``[Cantonese]`` leads every chunk's prompt).
An edit is one job per voice prompt: one for a clip, one per segment of a previous version, each
saying that segment's words (or its part of the new text of a paralinguistic edit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from errors import OptionsError, TextInputError
from llm_registry import LLMRegistry
from models.edit_tasks import EDIT_TASKS, TASKS_WITH_OPTION, TEXTLESS_TASKS
from models.generation import TokenStreamLLM
from models.text_input import clean_text, split_language_tag
from provenance import clone_record, edit_record
from reports import StageReport
from synthesis import CloneRequest, EditRequest, EngineConfig, SynthesisOptions, VoicePrompt
from text_split import PAUSE_SENTENCE_S, TextChunk, split_text
from voice_prompts import VoicePrompts

log = logging.getLogger(__name__)


@dataclass
class ChunkJob:
    """One LLM pass: the words it says, how to build its prompt, the vocoder prompt, the pause after."""

    text: str
    prompt_ids: Callable[[], list[int]]
    voice: VoicePrompt
    pause_s: float


@dataclass
class Plan:
    """A request made ready to render: its LLM and jobs, and what its result and record will say."""

    mode: str  # "clone" or "edit <task>[/<subtask>]"
    llm: TokenStreamLLM
    jobs: list[ChunkJob]
    text: str  # the words asked for
    prompt_text: str  # the reference's (or edited audio's) words, transcribed when they were empty
    transcribed: bool
    provenance: dict  # build_manifest's kind, text, voice and edit
    warnings: list[str] = field(default_factory=list)


class JobBuilder:
    """The prep stage of clone and edit requests; raises an input error when a request is unusable."""

    def __init__(self, config: EngineConfig, voices: VoicePrompts, llms: LLMRegistry):
        self.config, self.voices, self.llms = config, voices, llms

    def clone(
        self, request: CloneRequest, options: SynthesisOptions, report: StageReport, t_start: float
    ) -> Plan:
        """One job per chunk of the target text, all in the voice of the clip or the library voice."""
        warnings: list[str] = []
        target = clean_text(request.target_text, "target text", self.config.max_text_chars, warnings)
        chunks = split_text(target, options.chunk_chars)
        # a leading dialect or language tag ([Cantonese]) applies to the whole text: every chunk's prompt
        language_tag, _ = split_language_tag(target)
        prompt_text = clean_text(
            request.reference_text, "reference text", self.config.max_text_chars, warnings, allow_empty=True
        )
        llm = self.llms.get(options.variant, options.backend)
        if request.voice_id is not None:  # a library voice: its tokens, features and text are stored
            transcribe = False
            report.prep_s = time.perf_counter() - t_start
            log.info(
                "clone prep: %.3f s (voice %s, %d target chars in %d chunk(s))",
                report.prep_s,
                request.voice_id,
                len(target),
                len(chunks),
            )
            voice = self.voices.from_library(request.voice_id, report)
        else:
            transcribe = self.voices.needs_transcription(prompt_text, "reference")
            audio, sr = self.voices.validated_audio(request.audio, request.sample_rate)
            report.prep_s = time.perf_counter() - t_start
            log.info(
                "clone prep: %.3f s (%.2f s of audio at %d Hz, %d target chars in %d chunk(s))",
                report.prep_s,
                audio.shape[-1] / sr,
                sr,
                len(target),
                len(chunks),
            )
            # 2-3. tokens (+ transcript) and vocoder prompt features
            voice = self.voices.from_clip(audio, sr, prompt_text, transcribe, report)
        if transcribe and not voice.text:
            warnings.append("auto-transcription found no words in the reference; the clone may be worse")
        return Plan(
            "clone",
            llm,
            clone_jobs(llm, voice, chunks, language_tag),
            target,
            voice.text,
            transcribe,
            clone_record(target, request.voice_id, voice, transcribe),
            warnings,
        )

    def edit(
        self, request: EditRequest, options: SynthesisOptions, report: StageReport, t_start: float
    ) -> Plan:
        """One job per voice prompt: the clip, or each segment of the previous version (``source``)."""
        warnings: list[str] = []
        task, subtask = validated_task(request.task, request.subtask)
        source = request.source
        audio_text = clean_text(
            request.audio_text, "text of the audio", self.config.max_text_chars, warnings, allow_empty=True
        )
        para_text = None
        if task == "paralinguistic":
            para_text = clean_text(
                request.target_text,
                "new text (with tags such as [Laughter])",
                self.config.max_text_chars,
                warnings,
            )
        llm = self.llms.get(options.variant, options.backend)
        # a previous version edited again keeps its own tokens: no validation, hashing or encode
        chained = source is not None and (not audio_text or audio_text == source.text)
        transcribe = False
        if chained:
            report.prep_s = time.perf_counter() - t_start
            log.info(
                "edit prep: %.3f s (task %s/%s, continuing from a previous %s)",
                report.prep_s,
                task,
                subtask or "-",
                source.mode,
            )
            voices = self.voices.from_version(source, report)
        else:
            # denoise and vad instructions do not quote the text, so an empty one is fine there
            transcribe = task not in TEXTLESS_TASKS and self.voices.needs_transcription(
                audio_text, "audio to edit"
            )
            audio, sr = self.voices.validated_audio(request.audio, request.sample_rate)
            report.prep_s = time.perf_counter() - t_start
            log.info(
                "edit prep: %.3f s (task %s/%s, %.2f s of audio at %d Hz)",
                report.prep_s,
                task,
                subtask or "-",
                audio.shape[-1] / sr,
                sr,
            )
            voices = [self.voices.from_clip(audio, sr, audio_text, transcribe, report)]
        new_texts = paralinguistic_texts(para_text, voices, options.chunk_chars or self.config.chunk_chars)
        jobs = edit_jobs(llm, voices, new_texts, task, subtask)
        mode = f"edit {task}" + (f"/{subtask}" if subtask else "")
        prompt_text = " ".join(v.text for v in voices)
        text = " ".join(job.text for job in jobs)
        provenance = edit_record(
            text, task, subtask, prompt_text, para_text, transcribe, voices, source if chained else None
        )
        return Plan(mode, llm, jobs, text, prompt_text, transcribe, provenance, warnings)


def clone_jobs(
    llm: TokenStreamLLM, voice: VoicePrompt, chunks: list[TextChunk], language_tag: str | None
) -> list[ChunkJob]:
    """One job per text chunk in ``voice``; ``language_tag`` (the target text's) leads every prompt."""
    return [
        ChunkJob(
            c.text,
            partial(llm.clone_prompt, voice.text, voice.token_str, _with_tag(language_tag, c.text)),
            voice,
            c.pause_s,
        )
        for c in chunks
    ]


def edit_jobs(
    llm: TokenStreamLLM,
    voices: list[VoicePrompt],
    new_texts: list[str | None],
    task: str,
    subtask: str | None,
) -> list[ChunkJob]:
    """One job per voice prompt (segment), saying its new text when it has one, else its own."""
    return [
        ChunkJob(
            new if new is not None else voice.text,
            partial(llm.edit_prompt, voice.text, voice.token_str, task, subtask, new),
            voice,
            PAUSE_SENTENCE_S,
        )
        for voice, new in zip(voices, new_texts, strict=True)
    ]


def validated_task(task: str, subtask: str | None) -> tuple[str, str | None]:
    """The edit task and its sub-task (None for a task that takes none), or an OptionsError."""
    if task not in EDIT_TASKS:
        raise OptionsError(f"unknown edit task {task!r}; choose one of {', '.join(EDIT_TASKS)}")
    if task not in TASKS_WITH_OPTION:
        return task, None  # paralinguistic tags go into the new text; denoise and vad take none
    if subtask not in EDIT_TASKS[task]:
        raise OptionsError(
            f"the {task} edit needs a sub-task, one of {', '.join(EDIT_TASKS[task])}; got {subtask!r}"
        )
    return task, subtask


def paralinguistic_texts(
    para_text: str | None, voices: list[VoicePrompt], chunk_chars: int
) -> list[str | None]:
    """The new text of each segment: the whole text for one segment, else the text split like
    the segments (a paralinguistic edit of a long version needs as many sentences as it has)."""
    if para_text is None or len(voices) == 1:
        return [para_text] * len(voices)
    parts = [c.text for c in split_text(para_text, chunk_chars)]
    if len(parts) != len(voices):
        raise TextInputError(
            f"the version has {len(voices)} parts but the new text splits into "
            f"{len(parts)}; keep the same sentences and only add tags such as "
            "[Laughter]"
        )
    return parts


def _with_tag(tag: str | None, text: str) -> str:
    """``text`` led by the request's language tag (the first chunk already starts with it)."""
    return text if tag is None or split_language_tag(text)[0] is not None else f"{tag}{text}"
