"""What the page shows after a run, and the Edit tab's version picker (handlers, not API endpoints).

    outcomes = Outcomes(outputs, cache.cache_rows)
    outcomes.clone_finished(details, history, ...)   # -> status line, timing table, history, picker...
    outcomes.show_version(version_id, history)       # -> the picked version's audio and summary

The run itself (ui/adapter.py) returns only what the API returns (audio and details); these turn its
details into the session's history (ui/versions.py), the status line and the timing table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr

from errors import NotFoundError
from outputs import OutputStore
from reports import StageReport
from ui.reference import NEW_VOICE
from ui.timing import UploadEncode, timing_html
from ui.values import status_html, to_pcm16
from ui.versions import add_version, find_version, version_choices, version_summary

EDIT_SOURCE_VERSION = "a version from the history"
EDIT_SOURCE_UPLOAD = "my own clip"


class Outcomes:
    """Gradio event handlers of a finished clone or edit and of the version picker, over the output
    store the runs fill; ``cache_rows`` refreshes the prompt cache panel with each outcome."""

    def __init__(self, outputs: OutputStore, cache_rows: Callable[[], list[list[str]]]):
        self.outputs = outputs
        self.cache_rows = cache_rows

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
