"""The streaming side of the page: UI inputs -> validated request -> audio as it is made, or an error.

    adapter = EngineAdapter(engine, outputs, gate)
    for audio, details in adapter.clone(text, voice, reference_audio, reference_text, *options): ...

ui/page.py wires the Clone and Edit buttons (the API endpoints /clone and /edit) and Stop to the
methods here; engine.py does the work. Methods take plain UI values (file paths, strings, numbers)
and return plain UI values. ``clone`` and ``edit`` are generators: each audio piece is yielded as it
is made (the page plays it at once), then the whole file and a "details" JSON with the version id.
Errors a person can fix become ``gr.Error`` with the engine's public message (never a server path or
a traceback); anything else is logged with its traceback and shown as a short apology (ui/values.py).
Stop is a normal outcome: the audio made so far is kept as a version marked "stopped". What the page
shows afterwards is ui/outcomes.py's.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import gradio as gr

from audio_read import read_audio
from engine import CloneEngine
from errors import GenerationCancelled, public_message
from outputs import OutputStore
from provenance import manifest_json
from synthesis import AudioPiece, CloneRequest, EditRequest, Progress
from ui.access import AdminGate
from ui.outcomes import EDIT_SOURCE_UPLOAD
from ui.reference import NEW_VOICE, reference_warning
from ui.values import public_error, synthesis_options, to_pcm16
from ui.versions import result_details, running_details
from wav_info import write_wav

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5  # progress-only updates to the browser at most this often


class EngineAdapter:
    """The Clone / Edit run handlers and Stop over one ``CloneEngine``; it also holds what the page's
    other handlers share: the output store (shared with the REST API), the admin gate and a folder
    for the page's files."""

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

    # ---- Stop -----------------------------------------------------------------------------------

    def stop(self, request: gr.Request = None) -> None:
        """Stop button: end this browser session's running clone or edit at the next token."""
        with self._cancels_lock:
            flag = self._cancels.get(_session(request))
        if flag is None:
            gr.Info("Nothing is running.")
            return
        flag.set()
        gr.Info("Stopping: the audio made so far is kept.")

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
