"""The one adapter between Gradio values and the engine: UI inputs -> validated request -> audio or error.

ui/page.py lays out the components and wires each event to a method here; engine.py does
the work. Every method takes plain UI values (file paths, strings, numbers, the session's version
history) and returns plain UI values. Errors a person can fix become ``gr.Error`` with the
engine's message; anything else is logged with its traceback and shown as a short apology,
never as a traceback in the page.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import gradio as gr
import numpy as np

from audio_prep import read_audio
from engine import CloneEngine
from errors import EmptyGenerationError, GenerationCancelled, InputError, OptionsError, public_message
from synthesis import CloneRequest, EditRequest, Progress, SynthesisOptions, SynthesisResult

log = logging.getLogger(__name__)

T = TypeVar("T")
RANDOM_SEED = -1  # the page's "random seed" value (the API uses null)
MAX_HISTORY = 20  # versions kept per browser session (each holds its audio in memory)
EDIT_SOURCE_VERSION = "the selected version"
EDIT_SOURCE_UPLOAD = "my own clip"
TIMING_HEADERS = ["stage", "seconds", "detail"]
PCM16_MAX = 32767


@dataclass(frozen=True)
class Version:
    """One entry of a session's history: a stable label and the engine's result (audio + kept tokens)."""

    number: int
    result: SynthesisResult

    @property
    def label(self) -> str:
        text = self.result.text if len(self.result.text) <= 40 else self.result.text[:37] + "..."
        return f"v{self.number} · {self.result.mode} · {self.result.seconds:.1f} s · {text}"


def synthesis_options(variant: str | None, seed: float | None, temperature: float, top_p: float,
                      flow_steps: float) -> SynthesisOptions:
    """UI numbers (floats, maybe blank) -> validated ``SynthesisOptions``; a blank seed or -1 = random."""
    if seed is not None and (isinstance(seed, str) or not math.isfinite(float(seed))):
        raise OptionsError(f"the seed must be a whole number, got {seed!r}")
    if seed is not None and float(seed) != int(float(seed)):
        raise OptionsError(f"the seed must be a whole number, got {seed}")
    if seed is not None and seed < RANDOM_SEED:
        raise OptionsError(f"the seed must be -1 (random) or a whole number from 0, got {int(seed)}")
    random_seed = seed is None or seed == RANDOM_SEED
    return SynthesisOptions(variant=variant or None, seed=None if random_seed else int(seed),
                            temperature=float(temperature), top_p=float(top_p),
                            flow_steps=int(round(float(flow_steps)))).validated()


def to_pcm16(result: SynthesisResult) -> tuple[int, np.ndarray]:
    """Engine audio (float32, 24 kHz) -> Gradio's (rate, int16 samples) for playing and download."""
    pcm = np.clip(result.audio, -1.0, 1.0) * PCM16_MAX
    return result.sample_rate, np.round(pcm).astype(np.int16)


def cache_table(stats: dict) -> list[list[str]]:
    """Prompt-cache statistics as [name, value] rows for the cache panel (time saved: encodes + features)."""
    saved = float(stats.get("time_saved_s", 0.0)) + float(stats.get("vocoder_prompt_time_saved_s", 0.0))
    return [
        ["hits", str(stats.get("hits", 0))],
        ["misses", str(stats.get("misses", 0))],
        ["hit rate", f"{100 * float(stats.get('hit_rate', 0.0)):.0f} %"],
        ["entries", str(stats.get("entries", 0))],
        ["size on disk", f"{int(stats.get('bytes', 0)) / 1e6:.2f} MB"],
        ["time saved", f"{saved:.2f} s"],
        ["vocoder prompt hits", str(stats.get("vocoder_prompt_hits", 0))],
        ["folder", str(stats.get("directory") or "in memory only")],
    ]


class EngineAdapter:
    """Gradio event handlers over one ``CloneEngine``."""

    def __init__(self, engine: CloneEngine):
        self.engine = engine
        self._cancels: dict[str, threading.Event] = {}  # browser session -> its running request's stop flag
        self._cancels_lock = threading.Lock()

    # ---- events ----------------------------------------------------------------------------------

    # Gradio finds the progress bar through the ``gr.Progress()`` default; that is its documented idiom.
    def clone(self, reference_audio, reference_text, target_text, variant, seed, temperature, top_p,
              flow_steps, history, request: gr.Request = None, progress=gr.Progress()):  # noqa: B008
        """Clone button -> (audio, reference text, timing rows, history, version choices, cache rows)."""
        def run() -> SynthesisResult:
            options = synthesis_options(variant, seed, temperature, top_p, flow_steps)
            audio, sr = read_audio(reference_audio, max_seconds=self.engine.config.max_reference_seconds)
            clone_request = CloneRequest(audio, sr, reference_text or "", target_text or "", options)
            with self._cancel_flag(request) as cancel:
                return self.engine.clone(clone_request, progress=self._progress(progress, target_text or ""),
                                         cancel=cancel)

        result = self._guard("clone", run)
        history = self._append(history, result)
        return (to_pcm16(result), result.prompt_text, result.report.rows(), history,
                self._choices(history), self.cache_rows())

    def edit(self, source, version, own_audio, own_text, task, subtask, new_text, variant, seed, temperature,
             top_p, flow_steps, history, request: gr.Request = None, progress=gr.Progress()):  # noqa: B008
        """Edit button -> (edited audio, timing rows, history, version choices, cache rows)."""
        def run() -> SynthesisResult:
            options = synthesis_options(variant, seed, temperature, top_p, flow_steps)
            new = new_text or ""
            if source == EDIT_SOURCE_UPLOAD:
                edit_request = EditRequest.from_audio(own_audio, own_text or "", task, subtask, new, options)
            else:
                previous = self._find_version(history, version)
                edit_request = EditRequest.from_result(previous.result, task, subtask, new, options)
            with self._cancel_flag(request) as cancel:
                return self.engine.edit(edit_request, progress=self._progress(progress, new_text or "x" * 40),
                                        cancel=cancel)

        result = self._guard("edit", run)
        history = self._append(history, result)
        return to_pcm16(result), result.report.rows(), history, self._choices(history), self.cache_rows()

    def prepare_reference(self, reference_audio, reference_text):
        """After an upload or a recording: encode the clip now (a cache hit when Clone is pressed) and
        fill an empty reference text with the transcript. Returns the reference text."""
        if reference_audio is None:
            return reference_text
        text = reference_text or ""

        def run() -> str:
            audio, sr = read_audio(reference_audio, max_seconds=self.engine.config.max_reference_seconds)
            return self.engine.prepare_reference(audio, sr, text)

        return self._guard("reference", run)

    def stop(self, request: gr.Request = None) -> None:
        """Stop button: ask this browser session's running clone or edit to stop after the next token."""
        with self._cancels_lock:
            flag = self._cancels.get(_session(request))
        if flag is not None:
            flag.set()
            gr.Info("Stopping after the current token.")

    def show_version(self, version, history):
        """Version picked in the history -> (its audio, its text)."""
        if not version or not history:
            return None, ""
        try:
            result = self._find_version(history, version).result
        except OptionsError:
            return None, ""
        return to_pcm16(result), result.text

    def cache_rows(self) -> list[list[str]]:
        return cache_table(self.engine.cache_stats())

    def clear_cache(self) -> list[list[str]]:
        self.engine.clear_cache()
        gr.Info("Prompt cache cleared.")
        return self.cache_rows()

    # ---- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _guard(what: str, run: Callable[[], T]) -> T:
        """Run ``run``; turn engine errors into messages a person can act on (details in the log)."""
        try:
            result = run()
        except InputError as exc:
            log.warning("%s refused: %s", what, exc)
            raise gr.Error(public_message(exc), title="Please check the input",
                           print_exception=False) from None
        except EmptyGenerationError as exc:
            log.warning("%s produced no audio: %s", what, exc)
            raise gr.Error(public_message(exc), title="No audio was generated",
                           print_exception=False) from None
        except GenerationCancelled:
            raise gr.Error("Generation was cancelled.", title="Cancelled", print_exception=False) from None
        except Exception:
            log.exception("%s failed", what)
            raise gr.Error("Something went wrong inside the app; the server log has the details. "
                           "Try again, or try another clip.", title="Internal error",
                           print_exception=False) from None
        for note in getattr(result, "warnings", []) or []:
            gr.Warning(public_message(note))
        return result

    @contextmanager
    def _cancel_flag(self, request: gr.Request | None):
        """A fresh stop flag for this session's request, registered while it runs."""
        session, flag = _session(request), threading.Event()
        with self._cancels_lock:
            self._cancels[session] = flag
        try:
            yield flag
        finally:
            with self._cancels_lock:
                if self._cancels.get(session) is flag:
                    del self._cancels[session]

    @staticmethod
    def _progress(progress: gr.Progress, text: str) -> Callable[[Progress], None]:
        """Engine progress (text chunk k of n, audio seconds so far) -> the Gradio progress bar."""
        del text

        def update(event: Progress) -> None:
            progress((event.chunk - 1) / event.chunks,
                     desc=f"chunk {event.chunk} of {event.chunks}: {event.audio_s:.1f} s of audio")

        return update

    @staticmethod
    def _append(history: list[Version] | None, result: SynthesisResult) -> list[Version]:
        history = list(history or [])
        number = history[-1].number + 1 if history else 1
        return (history + [Version(number, result)])[-MAX_HISTORY:]

    @staticmethod
    def _choices(history: list[Version]):
        labels = [v.label for v in history]
        return gr.update(choices=labels[::-1], value=labels[-1] if labels else None)

    @staticmethod
    def _find_version(history: list[Version] | None, label: str | None) -> Version:
        if not history:
            raise OptionsError("there is no version to edit yet: clone something first, or choose "
                               f"'{EDIT_SOURCE_UPLOAD}' and upload a clip")
        if not label:
            return history[-1]
        for version in history:
            if version.label == label:
                return version
        raise OptionsError("that version is no longer in the history; pick another one")


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "no-session"

