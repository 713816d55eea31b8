"""The provenance file next to an output on the page: the manifest of the version shown, as JSON.

    files = ManifestFiles(outputs, files_dir)
    files.for_details(details)           # -> path of "<version id>.manifest.json" for a gr.File

The file holds ``provenance.manifest_json(result.manifest)``, the very text the page's WAV carries
in its LIST/INFO ICMT comment (ui/adapter.py) and the REST API serves at
``/v1/outputs/{id}/manifest``. Gradio copies a returned file into its own cache, so only the last
few are kept here.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from errors import NotFoundError
from outputs import OutputStore
from provenance import manifest_json

KEEP_FILES = 32  # manifest files kept on disk (Gradio serves its own copy)


class ManifestFiles:
    """Manifest JSON files of the versions in ``outputs``, written under ``files``/manifests (the
    oldest removed past ``KEEP_FILES``)."""

    def __init__(self, outputs: OutputStore, files: Path):
        self.outputs = outputs
        self.files = files / "manifests"
        self.files.mkdir(parents=True, exist_ok=True)
        self._written: deque[Path] = deque()

    def for_details(self, details: dict | None) -> str | None:
        """The manifest file of the version a clone's or edit's details name; None when there is none
        (stopped before any audio, or no longer kept)."""
        version_id = (details or {}).get("version_id")
        if not version_id:
            return None
        try:
            manifest = self.outputs.get(version_id).manifest
        except NotFoundError:
            return None
        if not manifest:
            return None
        path = self.files / f"{version_id}.manifest.json"
        path.write_text(manifest_json(manifest), encoding="utf-8")
        self._written.append(path)
        while len(self._written) > KEEP_FILES:
            self._written.popleft().unlink(missing_ok=True)
        return str(path)
