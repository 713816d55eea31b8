"""The voice library on the page: the Voice dropdown, "Save voice", and play / rename / delete.

    panel = VoicePanel(engine, gate, files_dir)
    panel.choices()                      # gr.update for the Voice dropdown: "new from a clip" + the library

A library voice keeps its clip, text, tokens and vocoder features on the server (voices.py), so a
clone with it skips all reference work. Picking one shows its clip in the reference player and its
text (read-only) in the reference-text box; uploading a clip switches back to a new voice. The
library is shared by every visitor and the REST API (``/v1/voices``); deleting needs the admin key
on a server open to the network (ui/access.py).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from audio_read import read_audio
from engine import CloneEngine
from errors import OptionsError
from ui.access import CANCELLED, AdminGate
from ui.reference import NEW_VOICE
from ui.values import public_error

NEW_VOICE_LABEL = "New voice from the clip below"


class VoicePanel:
    """Handlers of the voice-library controls (every one returns plain UI values or updates)."""

    def __init__(self, engine: CloneEngine, gate: AdminGate, files: Path):
        self.engine, self.gate = engine, gate
        self.files = files / "voices"
        self.files.mkdir(parents=True, exist_ok=True)

    def choices(self, value: str | None = None):
        """The Voice dropdown's choices: a new voice from a clip, then every library voice by name."""
        voices = [(f"{v.name} (library)", v.id) for v in self.engine.voices.list_voices()]
        choices = [(NEW_VOICE_LABEL, NEW_VOICE)] + voices
        if value in {v for _, v in choices}:
            return gr.update(choices=choices, value=value)
        return gr.update(choices=choices)

    def library_rows(self) -> list[list[str]]:
        """[name, id, text] rows of the library panel."""
        return [
            [v.name, v.id, v.text if len(v.text) <= 60 else v.text[:57] + "..."]
            for v in self.engine.voices.list_voices()
        ]

    def picked(self, voice_id):
        """Voice dropdown changed -> (reference clip, reference text, text owner, name field, note)."""
        if not voice_id or voice_id == NEW_VOICE:
            return gr.skip(), gr.update(interactive=True), gr.skip(), "", ""
        try:
            info = self.engine.voices.voice_info(voice_id)
            path = self.files / f"{voice_id}.flac"
            path.write_bytes(self.engine.voices.voice_audio(voice_id))
        except Exception as exc:
            raise public_error("voice", exc) from None
        owner = f"voice:{voice_id}"
        note = (
            f"Library voice **{info.name}**: its own clip and text are used (upload a clip for a new voice)."
        )
        return str(path), gr.update(value=info.text, interactive=False), owner, info.name, note

    def save(self, name, reference_audio, reference_text, voice):
        """Save voice -> (Voice dropdown, library rows, reference text, text owner, note)."""
        try:
            if voice and voice != NEW_VOICE:
                raise_input("this voice is already in the library; upload a clip to save a new one")
            if reference_audio is None:
                raise_input("upload or record a clip first, then save it as a voice")
            audio, sr = read_audio(reference_audio, max_seconds=self.engine.config.max_reference_seconds)
            label = (name or "").strip() or Path(str(reference_audio)).stem
            info = self.engine.voices.create_voice(label, audio, sr, reference_text or "")
        except Exception as exc:
            raise public_error("save voice", exc) from None
        gr.Info(f"Saved the voice '{info.name}' in the library.")
        note = f"Saved as library voice **{info.name}** (id `{info.id}`)."
        return (
            self.choices(info.id),
            self.library_rows(),
            gr.update(value=info.text, interactive=False),
            f"voice:{info.id}",
            note,
        )

    def rename(self, voice_id, name):
        """Rename -> (Voice dropdown, library rows)."""
        try:
            if not voice_id or voice_id == NEW_VOICE:
                raise_input("pick a library voice in the Voice list first")
            info = self.engine.voices.rename_voice(voice_id, (name or "").strip())
        except Exception as exc:
            raise public_error("rename voice", exc) from None
        gr.Info(f"Renamed to '{info.name}'.")
        return self.choices(voice_id), self.library_rows()

    def delete(self, voice_id, admin_key, request: gr.Request = None):
        """Delete (after the browser's confirmation) -> (Voice dropdown, library rows, text, note)."""
        if admin_key == CANCELLED:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            if not voice_id or voice_id == NEW_VOICE:
                raise_input("pick a library voice in the Voice list first")
            self.gate.check(admin_key, request, "delete a library voice")
            name = self.engine.voices.voice_info(voice_id).name
            self.engine.voices.delete_voice(voice_id)
        except Exception as exc:
            raise public_error("delete voice", exc) from None
        (self.files / f"{voice_id}.flac").unlink(missing_ok=True)
        gr.Info(f"Deleted the voice '{name}' from the library.")
        return self.choices(NEW_VOICE), self.library_rows(), gr.update(interactive=True), ""


def raise_input(message: str) -> None:
    raise OptionsError(message)
