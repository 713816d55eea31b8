"""Provenance: a small JSON record of how an output was made, and the request that makes it again.

    result.manifest                          # built by the engine for every clone and edit
    json.dumps(result.manifest)              # JSON-safe: str, int, float, bool, None, lists, dicts
    request = replay_request(manifest, audio, sample_rate, source)   # CloneRequest or EditRequest

The record (``MANIFEST_VERSION`` 1) names what went in (text, voice id or the reference's prompt-cache
key, the edit and the version it edited), the models (variant, backend, fingerprints of the tokenizer,
vocoder and LLM files), every seed (the request's, each chunk's kept take and every take tried), the
sampling options, flow steps, the scores, the chunk boundaries in samples and the app version, plus
the SHA-256 of the float32 samples. With the same models, the request rebuilt from it gives the same
samples (``CloneEngine.replay``). The format is described in docs/SCORES.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import tomllib
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from errors import OptionsError
from synthesis import CloneRequest, EditRequest, SynthesisOptions, SynthesisResult

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
APP_NAME = "editx-studio"
PYPROJECT = Path(__file__).resolve().parent / "pyproject.toml"
FINGERPRINT_BLOCK = 1 << 20  # large model files: size + SHA-256 of their first and last MiB
FINGERPRINT_FULL_MAX = 16 << 20  # files up to this size are hashed whole
# The options a replay takes from the record (the rest of SynthesisOptions is not recorded).
REPLAYED_OPTIONS = ("variant", "seed", "temperature", "top_p", "flow_steps", "max_length", "max_new_tokens",
                    "stream", "chunk_chars", "best_of")


@lru_cache(maxsize=1)
def app_version() -> str:
    """The installed package's version, else pyproject.toml's, else "unknown"."""
    try:
        return importlib.metadata.version(APP_NAME)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def folder_fingerprint(folder: Path | None) -> str | None:
    """Short SHA-256 over the names, sizes and contents of the files directly in ``folder`` (big
    files by their first and last MiB); None when there is no folder."""
    if folder is None or not Path(folder).is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}:".encode())
        with open(path, "rb") as f:
            if size <= FINGERPRINT_FULL_MAX:
                h.update(f.read())
            else:
                h.update(f.read(FINGERPRINT_BLOCK))
                f.seek(size - FINGERPRINT_BLOCK)
                h.update(f.read(FINGERPRINT_BLOCK))
    return h.hexdigest()[:16]


def audio_sha256(audio: np.ndarray) -> str:
    """SHA-256 of (samples,) audio as little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype="<f4").tobytes()).hexdigest()


def manifest_json(manifest: dict) -> str:
    """The compact ASCII JSON form of a record (what the WAV chunk and the API header carry)."""
    return json.dumps(manifest, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def chunk_records(result: SynthesisResult) -> list[dict]:
    """One record per text chunk: text, seeds, takes, scores and its samples [start, end) in the
    output (None for a chunk that made no audio)."""
    segments = iter(result.segments)
    out = []
    for chunk in result.report.chunks:
        segment = next(segments) if chunk.audio_tokens else None
        out.append({
            "text": chunk.text, "seed": chunk.seed, "attempts": chunk.attempts,
            "start": segment.start if segment else None, "end": segment.end if segment else None,
            "audio_tokens": chunk.audio_tokens, "similarity": _round(chunk.similarity),
            "error_rate": _round(chunk.error_rate), "metric": chunk.metric, "transcript": chunk.transcript,
            "score_note": chunk.score_note,
            "takes": [{"seed": t.seed, "similarity": _round(t.similarity), "error_rate": _round(t.error_rate)}
                      for t in chunk.takes],
        })
    return out


def build_manifest(result: SynthesisResult, *, kind: str, text: str, voice: dict, edit: dict | None,
                   model: dict, options: SynthesisOptions, accept_error_rate: float) -> dict:
    """The provenance record of ``result`` (see the module docstring); ``options`` are the resolved
    ones (the request's seed, the variant and chunk size actually used)."""
    report = result.report
    recorded = {name: value for name, value in asdict(options).items() if name in REPLAYED_OPTIONS}
    recorded["accept_error_rate"] = accept_error_rate
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "app": {"name": APP_NAME, "version": app_version()},
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "kind": kind,
        "mode": result.mode,
        "text": text,
        "spoken_text": result.text,
        "voice": voice,
        "model": model,
        "options": recorded,
        "chunks": chunk_records(result),
        "scores": {"scored": report.scored, "similarity": _round(report.similarity),
                   "error_rate": _round(report.error_rate), "metric": report.metric,
                   "seconds": _round(report.score_s, 4)},
        "audio": {"sample_rate": result.sample_rate, "samples": int(len(result.audio)),
                  "sha256": audio_sha256(result.audio)},
        "stopped": result.stopped,
        "warnings": list(result.warnings),
    }
    if edit is not None:
        manifest["edit"] = edit
    return manifest


def replay_options(manifest: dict) -> SynthesisOptions:
    """The recorded sampling options as ``SynthesisOptions`` (validated)."""
    recorded = manifest.get("options")
    if not isinstance(recorded, dict):
        raise OptionsError("the manifest has no options record; it cannot be replayed")
    values = {name: recorded[name] for name in REPLAYED_OPTIONS if name in recorded}
    try:
        return SynthesisOptions(**values).validated()
    except TypeError as exc:
        raise OptionsError(f"the manifest's options are not usable ({exc})") from None


def check_manifest(manifest: object) -> dict:
    """``manifest`` if it is a record this version can replay, else an OptionsError saying why."""
    if not isinstance(manifest, dict):
        raise OptionsError("a manifest is a JSON object; got " + type(manifest).__name__)
    version = manifest.get("manifest_version")
    if version != MANIFEST_VERSION:
        raise OptionsError(f"manifest version {version!r} is not supported (this app reads version "
                           f"{MANIFEST_VERSION})")
    if manifest.get("kind") not in ("clone", "edit"):
        raise OptionsError(f"the manifest's kind must be 'clone' or 'edit', got {manifest.get('kind')!r}")
    return manifest


def replay_request(manifest: dict, audio: np.ndarray | None, sample_rate: int | None,
                   source: SynthesisResult | None = None) -> CloneRequest | EditRequest:
    """The request that makes the recorded output again.

    A clone from a library voice needs nothing else; a clone from a clip needs that clip (``audio``
    at ``sample_rate`` Hz); an edit of a clip needs the clip; an edit of a previous output needs
    that output as ``source`` (replayed from the nested manifest first, see ``CloneEngine.replay``).
    """
    check_manifest(manifest)
    options = replay_options(manifest)
    voice = manifest.get("voice") or {}
    if manifest["kind"] == "clone":
        if voice.get("voice_id"):
            return CloneRequest.from_voice(voice["voice_id"], manifest.get("text", ""), options)
        if audio is None:
            raise OptionsError("this clone was made from a reference clip: send the same clip to replay it")
        return CloneRequest(audio, int(sample_rate or 0), voice.get("reference_text", ""),
                            manifest.get("text", ""), options)
    edit = manifest.get("edit") or {}
    if (edit.get("source") or {}).get("kind") == "output":
        if source is None:
            raise OptionsError("this edit was made on a previous output: replay that output first")
        return EditRequest.from_result(source, edit.get("task", ""), edit.get("subtask"),
                                       edit.get("new_text") or "", options)
    if audio is None:
        raise OptionsError("this edit was made on an uploaded clip: send the same clip to replay it")
    return EditRequest(audio, int(sample_rate or 0), edit.get("audio_text", ""), edit.get("task", ""),
                       edit.get("subtask"), edit.get("new_text") or "", options)
