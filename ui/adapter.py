"""The one adapter between Gradio values and the engine: UI inputs -> validated request -> audio or error.

ui/page.py lays out the components and wires each event to a method here; engine.py does the work.
Methods take plain UI values (file paths, strings, numbers, the session's history) and return plain
UI values. ``clone`` and ``edit`` are generators: each audio piece is yielded as it is made (the page
plays it at once), then the whole file and a "details" JSON with the version id. Errors a person can
fix become ``gr.Error`` with the engine's public message (never a server path or a traceback);
anything else is logged with its traceback and shown as a short apology. Stop is a normal outcome:
the audio made so far is kept as a version marked "stopped".
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import gradio as gr
import numpy as np

from audio_read import read_audio
from engine import CloneEngine
from errors import (
    AccessError,
    EditXError,
    EmptyGenerationError,
    GenerationCancelled,
    InputError,
    NotFoundError,
    OptionsError,
    public_message,
)
from outputs import OutputStore
from provenance import manifest_json
from reports import StageReport
from synthesis import AudioPiece, CloneRequest, EditRequest, Progress, SynthesisOptions
from ui.access import AdminGate
from ui.reference import NEW_VOICE, reference_warning
from ui.timing import UploadEncode, timing_html
from ui.versions import (
    add_version,
    find_version,
    result_details,
    running_details,
    version_choices,
    version_summary,
)
from wav_info import write_wav

log = logging.getLogger(__name__)

RANDOM_SEED = -1  # the page's "random seed" value (the API uses null)
PROGRESS_EVERY_S = 0.5  # progress-only updates to the browser at most this often
CANCELLED = "(cancelled)"  # what the page sends as the admin key when a person answers "No" to "Clear?"
EDIT_SOURCE_VERSION = "a version from the history"
EDIT_SOURCE_UPLOAD = "my own clip"
PCM16_MAX = 32767


def synthesis_options(
    variant: str | None,
    seed: float | None,
    temperature: float,
    top_p: float,
    flow_steps: float,
    max_new_tokens: float | None = None,
    stream: bool = False,
    best_of: float | None = 1,
) -> SynthesisOptions:
    """UI numbers (floats, maybe blank) -> validated ``SynthesisOptions``; a blank seed or -1 = random,
    a blank or 0 max-new-tokens = no cap, a blank best-of = 1 take."""
    if seed is not None and (isinstance(seed, str) or not math.isfinite(float(seed))):
        raise OptionsError(f"the seed must be a whole number, got {seed!r}")
    if seed is not None and float(seed) != int(float(seed)):
        raise OptionsError(f"the seed must be a whole number, got {seed}")
    if seed is not None and seed < RANDOM_SEED:
        raise OptionsError(f"the seed must be -1 (random) or a whole number from 0, got {int(seed)}")
    random_seed = seed is None or seed == RANDOM_SEED
    cap = None
    if max_new_tokens not in (None, "", 0):
        if not math.isfinite(float(max_new_tokens)) or float(max_new_tokens) != int(float(max_new_tokens)):
            raise OptionsError(f"max new tokens must be a whole number, got {max_new_tokens}")
        cap = int(float(max_new_tokens))
    return SynthesisOptions(
        variant=variant or None,
        seed=None if random_seed else int(seed),
        temperature=float(temperature),
        top_p=float(top_p),
        flow_steps=int(round(float(flow_steps))),
        max_new_tokens=cap,
        stream=stream,
        best_of=int(round(float(best_of or 1))),
    ).validated()


def to_pcm16(audio: np.ndarray, sample_rate: int) -> tuple[int, np.ndarray]:
    """Float audio in [-1, 1] -> Gradio's (rate, int16 samples)."""
    pcm = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * PCM16_MAX
    return sample_rate, np.round(pcm).astype(np.int16)


def cache_table(stats: dict) -> list[list[str]]:
    """Prompt-cache statistics as [name, value] rows (time saved: encodes + vocoder features). The
    store's location is the redacted one of ``Store.status`` (a folder name, never a server path)."""
    saved = float(stats.get("time_saved_s", 0.0)) + float(stats.get("vocoder_prompt_time_saved_s", 0.0))
    return [
        ["hits", str(stats.get("hits", 0))],
        ["misses", str(stats.get("misses", 0))],
        ["hit rate", f"{100 * float(stats.get('hit_rate', 0.0)):.0f} %"],
        ["entries", str(stats.get("entries", 0))],
        ["size on disk", f"{int(stats.get('bytes', 0)) / 1e6:.2f} MB"],
        ["time saved", f"{saved:.2f} s"],
        ["vocoder prompt hits", str(stats.get("vocoder_prompt_hits", 0))],
        ["stored in", str(stats.get("directory") or "memory only")],
    ]


def status_html(text: str, state: str = "idle") -> str:
    """The line under the Clone / Edit button (the page's one progress and outcome indicator)."""
    import html

    return (
        f'<div class="run-status" data-state="{state}" data-at="{time.time():.3f}">{html.escape(text)}</div>'
    )


def public_error(what: str, exc: BaseException) -> gr.Error:
    """An engine exception as the message a person sees (details stay in the log)."""
    if isinstance(exc, InputError):
        log.warning("%s refused: %s", what, exc)
        return gr.Error(public_message(exc), title="Please check the input", print_exception=False)
    if isinstance(exc, EmptyGenerationError):
        log.warning("%s produced no audio: %s", what, exc)
        return gr.Error(public_message(exc), title="No audio was generated", print_exception=False)
    if isinstance(exc, AccessError | NotFoundError | EditXError):
        log.warning("%s refused: %s", what, exc)
        return gr.Error(public_message(exc), title="Not done", print_exception=False)
    log.error("%s failed", what, exc_info=exc)
    return gr.Error(
        "Something went wrong inside the app; the server log has the details. Try again, or "
        "try another clip.",
        title="Internal error",
        print_exception=False,
    )


class EngineAdapter:
    """Gradio event handlers over one ``CloneEngine`` and the output store it shares with the API."""

    def __init__(
        self, engine: CloneEngine, outputs: OutputStore | None = None, gate: AdminGate | None = None
    ):
        self.engine = engine
        self.outputs = outputs if outputs is not None else OutputStore()
        self.gate = gate or AdminGate()
        # finished files before Gradio copies them, decoded uploads, voice clips; removed at exit
        self._files = tempfile.TemporaryDirectory(prefix="editx-page-")
        self.files = Path(self._files.name)
        self._cancels: dict[str, threading.Event] = {}  # browser session -> its running request's stop flag
        self._cancels_lock = threading.Lock()

    @property
    def streams(self) -> bool:
        """True when the vocoder streams (audio while the LLM samples); else audio comes per text chunk."""
        vocoder = getattr(self.engine, "vocoder", None)
        return callable(getattr(vocoder, "stream", None))

    # ---- validators: cheap checks shown at the field they concern -------------------------------

    def check_clone(self, text, voice, reference_audio, reference_text, *options):
        """Validator of /clone: one ``gr.validate`` per input (the message appears at that field)."""
        del reference_text
        max_chars = self.engine.config.max_text_chars
        words = (text or "").strip()
        text_ok = gr.validate(
            bool(words) and len(text or "") <= max_chars,
            "Type the text to speak."
            if not words
            else f"The text has {len(text)} characters; the limit is {max_chars}.",
        )
        library = bool(voice) and voice != NEW_VOICE
        audio_ok = gr.validate(
            library or reference_audio is not None,
            "Upload or record a reference clip (3 to 30 s of speech), or pick a library voice.",
        )
        return [text_ok, gr.validate(True, ""), audio_ok] + [gr.validate(True, "")] * (1 + len(options))

    def check_edit(self, version, clip, clip_text, task, subtask, new_text, *options):
        """Validator of /edit."""
        del clip_text, subtask
        source_ok = gr.validate(
            bool(version) or clip is not None,
            "Pick a version to edit (clone something first), or choose "
            f"'{EDIT_SOURCE_UPLOAD}' and upload a clip.",
        )
        text_ok = gr.validate(
            task != "paralinguistic" or bool((new_text or "").strip()),
            "Type the new text with tags such as [Laughter].",
        )
        return [
            source_ok,
            gr.validate(True, ""),
            gr.validate(True, ""),
            gr.validate(True, ""),
            gr.validate(True, ""),
            text_ok,
        ] + [gr.validate(True, "")] * len(options)

    # ---- clone and edit (the API endpoints /clone and /edit) ------------------------------------

    def clone(
        self,
        text,
        voice=None,
        reference_audio=None,
        reference_text=None,
        variant=None,
        seed=None,
        temperature=0.7,
        top_p=1.0,
        flow_steps=10,
        max_new_tokens=None,
        best_of=1,
        request: gr.Request = None,
    ):
        """Clone button -> yields (audio piece, progress) while running, then (whole file, details);
        ``best_of`` N > 1 makes up to N takes of each text chunk and keeps the best-scored one."""
        warnings: list[str] = []
        try:
            options = synthesis_options(
                variant, seed, temperature, top_p, flow_steps, max_new_tokens, self.streams, best_of
            )
            if voice and voice != NEW_VOICE:
                voice_name = self.engine.voices.voice_info(voice).name
                clone_request = CloneRequest.from_voice(voice, text or "", options)
            else:
                audio, sr = read_audio(reference_audio, max_seconds=self.engine.config.max_reference_seconds)
                voice_name = Path(str(reference_audio)).stem
                note = reference_warning(audio, sr) if audio.size else None
                warnings += [note] if note else []
                clone_request = CloneRequest(audio, sr, reference_text or "", text or "", options)
        except Exception as exc:
            raise public_error("clone", exc) from None
        yield from self._run(
            "clone",
            lambda cancel: self.engine.clone_stream(clone_request, cancel),
            voice_name,
            None,
            warnings,
            request,
        )

    def edit(
        self,
        version=None,
        clip=None,
        clip_text=None,
        task="emotion",
        subtask=None,
        new_text=None,
        variant=None,
        seed=None,
        temperature=0.7,
        top_p=1.0,
        flow_steps=10,
        max_new_tokens=None,
        best_of=1,
        request: gr.Request = None,
    ):
        """Edit button -> like ``clone``; ``version`` is an output id (from the page or the REST API)."""
        try:
            options = synthesis_options(
                variant, seed, temperature, top_p, flow_steps, max_new_tokens, self.streams, best_of
            )
            if version:
                source = self.outputs.get(version)
                edit_request = EditRequest.from_result(source, task, subtask, new_text or "", options)
                source_id, voice_name = version, ""
            else:
                audio, sr = read_audio(clip, max_seconds=self.engine.config.max_reference_seconds)
                edit_request = EditRequest(audio, sr, clip_text or "", task, subtask, new_text or "", options)
                source_id, voice_name = None, Path(str(clip)).stem
        except Exception as exc:
            raise public_error("edit", exc) from None
        yield from self._run(
            "edit",
            lambda cancel: self.engine.edit_stream(edit_request, cancel),
            voice_name,
            source_id,
            [],
            request,
        )

    def _run(
        self,
        what: str,
        start: Callable,
        voice: str,
        source_id: str | None,
        warnings: list[str],
        request: gr.Request | None,
    ) -> Iterator[tuple]:
        """Drive one engine stream: pieces and throttled progress out, then the finished version."""
        rate = self.engine.vocoder.sample_rate
        result, last = None, 0.0
        where = {"chunk": 0, "chunks": 0, "audio_s": 0.0, "stage": "llm", "pieces": 0, "played_s": 0.0}
        with self._cancel_flag(request) as cancel:
            try:
                with closing(start(cancel)) as events:
                    for event in events:
                        if isinstance(event, AudioPiece):
                            where["pieces"] += 1
                            where["played_s"] += event.audio.size / rate
                            yield to_pcm16(event.audio, rate), running_details(**where)
                        elif isinstance(event, Progress):
                            where.update(
                                chunk=event.chunk,
                                chunks=event.chunks,
                                audio_s=event.audio_s,
                                stage=event.stage,
                            )
                            now = time.monotonic()
                            if now - last >= PROGRESS_EVERY_S or event.stage != "llm":
                                last = now
                                yield gr.skip(), running_details(**where)
                        else:
                            result = event
            except GenerationCancelled:
                gr.Info("Stopped before any audio was made.")
                yield (
                    None,
                    {
                        "status": "stopped",
                        "version_id": None,
                        "message": "Stopped before any audio was made.",
                    },
                )
                return
            except Exception as exc:
                raise public_error(what, exc) from None
        warnings = warnings + list(result.warnings)
        for note in warnings:
            gr.Warning(public_message(note))
        version_id = self.outputs.add(result)
        details = result_details(result, version_id, voice, source_id, warnings)
        path = self.files / f"{version_id}.wav"
        # the WAV the page offers carries its provenance record, as the REST API's does
        path.write_bytes(write_wav(result.audio, result.sample_rate, manifest_json(result.manifest)))
        log.info(
            "%s: version %s (%.2f s of audio%s)",
            what,
            version_id,
            result.seconds,
            ", stopped" if result.stopped else "",
        )
        try:
            yield str(path), details
        finally:
            path.unlink(missing_ok=True)  # Gradio has copied it into its own cache by now

    # ---- after a run: the page's own view of it (not part of the API) ---------------------------

    def clone_finished(self, details, history, voice, reference_audio, upload, edit_source):
        """-> (status, timing table, history, version dropdown, cache rows, Edit button, Edit hint)."""
        if not details or not details.get("version_id"):
            text = (details or {}).get("message") or "Nothing was made."
            return (
                status_html(text, "stopped"),
                "",
                history,
                gr.skip(),
                self.cache_rows(),
                gr.skip(),
                gr.skip(),
            )
        history = add_version(history, details)
        record = history[-1]
        report = self._report(details["version_id"])
        # the clip prepared at upload is the one cloned (Gradio's cache copy keeps the file name)
        same_clip = (
            voice in (None, "", NEW_VOICE)
            and upload
            and reference_audio
            and upload.get("name") == Path(str(reference_audio)).name
        )
        encode = UploadEncode(**{k: v for k, v in upload.items() if k != "name"}) if same_clip else None
        value = record["id"] if edit_source != EDIT_SOURCE_UPLOAD else None
        return (
            self._outcome(record, details),
            timing_html(report, encode),
            history,
            gr.update(choices=version_choices(history), value=value),
            self.cache_rows(),
            gr.update(interactive=True),
            gr.update(visible=False),
        )

    def edit_finished(self, details, history, clip):
        """-> (status, timing table, history, version dropdown, A (before) audio, cache rows)."""
        if not details or not details.get("version_id"):
            text = (details or {}).get("message") or "Nothing was made."
            return status_html(text, "stopped"), "", history, gr.skip(), gr.skip(), self.cache_rows()
        source_id = details.get("source_version_id")
        source = find_version(history, source_id)
        if source is not None and not details.get("voice"):
            details = details | {"voice": source["voice"]}
        history = add_version(history, details)
        record = history[-1]
        before = self._audio_of(source_id) if source_id else clip
        label = f"Before (v{source['number']})" if source else "Before (your clip)"
        return (
            self._outcome(record, details),
            timing_html(self._report(details["version_id"])),
            history,
            gr.update(choices=version_choices(history), value=record["id"]),
            gr.update(value=before, label=label),
            self.cache_rows(),
        )

    def _outcome(self, record: dict, details: dict) -> str:
        audio_s, total = details.get("audio_s", 0.0), details.get("timings", {}).get("total_s", 0.0)
        if record["stopped"]:
            gr.Info(f"Stopped: the {audio_s:.1f} s made so far are kept as v{record['number']}.")
            return status_html(
                f"Stopped: kept {audio_s:.1f} s of audio as v{record['number']} (stopped).", "stopped"
            )
        return status_html(f"Done: v{record['number']}, {audio_s:.1f} s of audio in {total:.1f} s.", "done")

    def _report(self, version_id: str) -> StageReport | None:
        try:
            return self.outputs.get(version_id).report
        except NotFoundError:
            return None

    def _audio_of(self, version_id: str):
        try:
            result = self.outputs.get(version_id)
        except NotFoundError:
            return None
        return to_pcm16(result.audio, result.sample_rate)

    # ---- stop, versions, cache ------------------------------------------------------------------

    def stop(self, request: gr.Request = None) -> None:
        """Stop button: end this browser session's running clone or edit at the next token."""
        with self._cancels_lock:
            flag = self._cancels.get(_session(request))
        if flag is None:
            gr.Info("Nothing is running.")
            return
        flag.set()
        gr.Info("Stopping: the audio made so far is kept.")

    def show_version(self, version_id, history):
        """Version picked in the history -> (its audio, a summary line)."""
        if not version_id:
            return None, ""
        try:
            result = self.outputs.get(version_id)
        except NotFoundError:
            return None, "That version is no longer kept on the server (only the most recent ones are)."
        return to_pcm16(result.audio, result.sample_rate), version_summary(
            find_version(history, version_id), result.text
        )

    @staticmethod
    def edit_source_changed(source, history):
        """-> (version group, own clip group, version value, Edit button, hint)."""
        own = source == EDIT_SOURCE_UPLOAD
        newest = history[-1]["id"] if history else None
        ready = own or bool(history)
        return (
            gr.update(visible=not own),
            gr.update(visible=own),
            None if own else newest,
            gr.update(interactive=ready),
            gr.update(visible=not ready),
        )

    def cache_rows(self) -> list[list[str]]:
        return cache_table(self.engine.cache_stats())

    def clear_cache(self, admin_key, request: gr.Request = None) -> list[list[str]]:
        """Clear button (after the browser's confirmation): needs the admin key off loopback."""
        if admin_key == CANCELLED:
            gr.Info("The prompt cache was not cleared.")
            return gr.skip()
        try:
            self.gate.check(admin_key, request, "clear the prompt cache")
            removed = self.engine.clear_cache()
        except Exception as exc:
            raise public_error("clear cache", exc) from None
        counters = removed.get("counters") or {}
        hits, misses = int(counters.get("hits", 0)), int(counters.get("misses", 0))
        size = removed["bytes"] / 1e6
        gr.Info(
            f"Prompt cache cleared: removed {removed['entries']} entries ({size:.2f} MB) "
            f"and reset the counters (hits {hits}, misses {misses}). Library voices are kept."
        )
        return self.cache_rows()

    # ---- helpers --------------------------------------------------------------------------------

    @contextmanager
    def _cancel_flag(self, request: gr.Request | None):
        """A fresh stop flag for this session's request, registered while it runs."""
        session, flag = _session(request), threading.Event()
        with self._cancels_lock:
            self._cancels[session] = flag
        try:
            yield flag
        finally:
            flag.set()  # a run that ends early (closed page) stops the engine at its next token
            with self._cancels_lock:
                if self._cancels.get(session) is flag:
                    del self._cancels[session]


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "no-session"
