"""The reference clip on the page: encode it at upload, never keep a text typed for another clip.

    panel = ReferencePanel(engine)
    panel.prepare_reference(path, text, owner)     # after an upload or a recording

Gradio's audio upload only takes files the browser calls audio/*, and browsers call a .webm or an
.mp4 "video/webm" / "video/mp4"; the "Upload any audio or video file" button takes those, decodes
them here (PyAV, as the engine does) and hands the player a WAV of the same samples.

The reference text has an owner (a gr.State): the clip it was typed or transcribed for. A new clip
keeps the text only when it was typed while no clip was loaded (so it was typed for this one);
otherwise the text came with an example, an earlier upload or a library voice, and is replaced by
the new clip's transcript, with a note saying so. The clip is encoded right away (tokens and vocoder
features land in the prompt cache), so Clone is a cache hit and the timing table can show the
upload-time encode as its own row. Problems with the clip are shown in the note under it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile as sf

from audio_prep import speech_seconds
from audio_read import read_audio
from engine import CloneEngine
from errors import InputError, public_message
from reports import StageReport

log = logging.getLogger(__name__)

NEW_VOICE = "(new)"  # Voice dropdown: a new voice from the uploaded clip (no library id has parentheses)
TYPED_FOR_NEXT_CLIP = "(typed)"  # reference text typed while no clip was loaded: it is for the next one
RECOMMENDED_REFERENCE_S = 3.0  # under this much speech the clone resembles the voice less


def reference_warning(audio: np.ndarray, sr: int) -> str | None:
    """A notice when a clip holds less speech than clones well (the engine refuses under its minimum)."""
    try:
        seconds = speech_seconds(audio, sr)
    except Exception:  # noqa: BLE001 - a damaged clip is refused by the engine with its own message
        return None
    if seconds >= RECOMMENDED_REFERENCE_S:
        return None
    return (
        f"the reference holds only {seconds:.1f} s of speech; 3 to 30 s clones better: with less, the "
        "model hears too little of the voice to copy its timbre and rhythm, so the clone sounds less "
        "like it"
    )


FILE_TYPES = ["audio", "video", ".webm", ".m4a", ".mp4", ".mov", ".mkv", ".opus"]  # the any-file button


class ReferencePanel:
    """Handlers of the reference clip and its text (``files``: where decoded uploads are written)."""

    def __init__(self, engine: CloneEngine, files: Path):
        self.engine = engine
        self.files = files / "uploads"
        self.files.mkdir(parents=True, exist_ok=True)

    def as_wav(self, path: str | None) -> str | None:
        """Any audio or video file -> a WAV of its sound (same samples and rate) for the audio players."""
        if path is None:
            return None
        audio, sr = read_audio(path, max_seconds=self.engine.config.max_reference_seconds)
        out = self.files / f"{Path(path).stem}.wav"
        sf.write(out, np.asarray(audio, dtype=np.float32).T, sr, subtype="FLOAT")
        return str(out)

    def take_file(self, path, reference_text, owner):
        """The any-file button: decode, then as after an upload. -> (clip, prepare_reference's outputs)."""
        try:
            wav = self.as_wav(path)
        except Exception as exc:  # a file that is no audio: say so under the clip
            message = public_message(exc) if isinstance(exc, InputError) else "This file could not be read."
            return gr.skip(), gr.skip(), "⛔ " + message.rstrip(".") + ".", owner, None, gr.skip()
        return (wav, *self.prepare_reference(wav, reference_text, owner))

    def clip_file(self, path):
        """The Edit tab's any-file button -> the clip to edit (a WAV)."""
        try:
            return self.as_wav(path)
        except InputError as exc:
            raise gr.Error(
                public_message(exc), title="Please check the input", print_exception=False
            ) from None

    def prepare_reference(self, reference_audio, reference_text, owner):
        """After an upload or a recording: encode the clip now (a cache hit when Clone is pressed).

        A reference text typed for another clip (an example, an earlier upload, a library voice) never
        carries over: it is replaced by this clip's transcript (or cleared when auto-transcription is
        off), and the note says so. Returns (reference text, note, owner, upload encode, voice).
        """
        if reference_audio is None:
            return gr.skip(), "", owner, None, gr.skip()
        typed = (reference_text or "").strip()
        stale = bool(typed) and owner != TYPED_FOR_NEXT_CLIP
        text = "" if stale else typed
        notes, upload = [], None
        try:
            audio, sr = read_audio(reference_audio, max_seconds=self.engine.config.max_reference_seconds)
            report = StageReport()
            new_text = self.engine.prepare_reference(audio, sr, text, report=report)
            upload = {
                "name": Path(str(reference_audio)).name,
                "tokenizer_s": report.tokenizer_s,
                "vocoder_prompt_s": report.vocoder_prompt_s,
                "tokens_from": report.tokens_from,
                "transcribed": report.transcribed,
            }
            warning = reference_warning(audio, sr)
            if warning:
                gr.Warning(public_message(warning))
                notes.append("⚠️ " + public_message(warning) + ".")
            how = "encoded" if report.tokens_from == "encoded" else "found in the prompt cache"
            took = report.tokenizer_s + report.vocoder_prompt_s
            notes.append(f"Clip ready: {audio.shape[-1] / sr:.1f} s, {how} in {took:.2f} s.")
        except Exception as exc:  # the clip cannot be used: say so here, at the clip, not over other fields
            if not isinstance(exc, InputError):
                log.error("reference prep failed", exc_info=exc)
            new_text = text
            notes.append(
                "⛔ "
                + (
                    public_message(exc)
                    if isinstance(exc, InputError)
                    else "This clip could not be prepared; the server log has the details."
                ).rstrip(".")
                + "."
            )
        if stale:
            notes.insert(
                0,
                "The reference text was typed for another clip, so it was replaced by a "
                "transcript of this one: check it."
                if new_text
                else "The reference text was typed for another clip and was cleared: type what this "
                "clip says.",
            )
        elif upload and upload["transcribed"]:
            notes.insert(
                0,
                "Transcribed automatically: check the reference text."
                if new_text
                else "The transcription found no words: type what the clip says.",
            )
        return (
            gr.update(value=new_text, interactive=True),
            "\n\n".join(notes),
            reference_audio,
            upload,
            NEW_VOICE,
        )

    @staticmethod
    def text_typed(reference_text, reference_audio) -> str:
        """Reference text edited by hand: it belongs to the loaded clip, or to the next one."""
        del reference_text
        return reference_audio if reference_audio is not None else TYPED_FOR_NEXT_CLIP

    @staticmethod
    def example_picked(reference_audio):
        """An example voice filled the form: its text belongs to its clip.
        -> (owner, voice, note, reference text, upload encode)."""
        return reference_audio, NEW_VOICE, "", gr.update(interactive=True), None
