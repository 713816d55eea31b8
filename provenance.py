"""Provenance: a small JSON record of how an output was made, and the request that makes it again.

    result.manifest                          # built by the engine for every clone and edit
    json.dumps(result.manifest)              # JSON-safe: str, int, float, bool, None, lists, dicts
    request = replay_request(manifest, audio, sample_rate, source)   # CloneRequest or EditRequest
    note_replay(manifest, result)            # after the replay: other model files are a warning

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
from synthesis import CloneRequest, EditRequest, SynthesisOptions, SynthesisResult, VoicePrompt

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
APP_NAME = "editx-studio"
PYPROJECT = Path(__file__).resolve().parent / "pyproject.toml"
FINGERPRINT_BLOCK = 1 << 20  # large model files: size + SHA-256 of their first and last MiB
FINGERPRINT_FULL_MAX = 16 << 20  # files up to this size are hashed whole
# The options a replay takes from the record (the rest of SynthesisOptions is not recorded).
REPLAYED_OPTIONS = (
    "variant",
    "seed",
    "temperature",
    "top_p",
    "flow_steps",
    "max_length",
    "max_new_tokens",
    "stream",
    "chunk_chars",
    "best_of",
)


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
        out.append(
            {
                "text": chunk.text,
                "seed": chunk.seed,
                "attempts": chunk.attempts,
                "start": segment.start if segment else None,
                "end": segment.end if segment else None,
                "audio_tokens": chunk.audio_tokens,
                "similarity": _round(chunk.similarity),
                "error_rate": _round(chunk.error_rate),
                "metric": chunk.metric,
                "transcript": chunk.transcript,
                "score_note": chunk.score_note,
                "takes": [
                    {"seed": t.seed, "similarity": _round(t.similarity), "error_rate": _round(t.error_rate)}
                    for t in chunk.takes
                ],
            }
        )
    return out


def clone_record(text: str, voice_id: str | None, voice: VoicePrompt, transcribed: bool) -> dict:
    """What went into a clone (``build_manifest``'s kind, text, voice and edit)."""
    return {
        "kind": "clone",
        "text": text,
        "edit": None,
        "voice": {
            "voice_id": voice_id,
            "reference_hash": voice.cache_key or None,
            "reference_text": voice.text,
            "transcribed": transcribed,
        },
    }


def edit_record(
    text: str,
    task: str,
    subtask: str | None,
    audio_text: str,
    new_text: str | None,
    transcribed: bool,
    voices: list[VoicePrompt],
    source: SynthesisResult | None,
) -> dict:
    """What went into an edit (``build_manifest``'s kind, text, voice and edit): the version it
    continued from (``source``, its record nested) or the clip's prompt-cache key."""
    source_record = (
        {"kind": "output", "manifest": source.manifest or None}
        if source is not None
        else {"kind": "clip", "reference_hash": voices[0].cache_key or None}
    )
    return {
        "kind": "edit",
        "text": text,
        "voice": None,
        "edit": {
            "task": task,
            "subtask": subtask,
            "audio_text": audio_text,
            "new_text": new_text,
            "transcribed": transcribed,
            "source": source_record,
        },
    }


def build_manifest(
    result: SynthesisResult,
    *,
    kind: str,
    text: str,
    voice: dict,
    edit: dict | None,
    model: dict,
    options: SynthesisOptions,
    accept_error_rate: float,
) -> dict:
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
        "scores": {
            "scored": report.scored,
            "similarity": _round(report.similarity),
            "error_rate": _round(report.error_rate),
            "metric": report.metric,
            "seconds": _round(report.score_s, 4),
        },
        "audio": {
            "sample_rate": result.sample_rate,
            "samples": int(len(result.audio)),
            "sha256": audio_sha256(result.audio),
        },
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
        raise OptionsError(
            f"manifest version {version!r} is not supported (this app reads version {MANIFEST_VERSION})"
        )
    if manifest.get("kind") not in ("clone", "edit"):
        raise OptionsError(f"the manifest's kind must be 'clone' or 'edit', got {manifest.get('kind')!r}")
    return manifest


def replay_request(
    manifest: dict, audio: np.ndarray | None, sample_rate: int | None, source: SynthesisResult | None = None
) -> CloneRequest | EditRequest:
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
        return CloneRequest(
            audio, int(sample_rate or 0), voice.get("reference_text", ""), manifest.get("text", ""), options
        )
    edit = manifest.get("edit") or {}
    if (edit.get("source") or {}).get("kind") == "output":
        if source is None:
            raise OptionsError("this edit was made on a previous output: replay that output first")
        return EditRequest.from_result(
            source, edit.get("task", ""), edit.get("subtask"), edit.get("new_text") or "", options
        )
    if audio is None:
        raise OptionsError("this edit was made on an uploaded clip: send the same clip to replay it")
    return EditRequest(
        audio,
        int(sample_rate or 0),
        edit.get("audio_text", ""),
        edit.get("task", ""),
        edit.get("subtask"),
        edit.get("new_text") or "",
        options,
    )


def edited_version_record(manifest: dict) -> dict | None:
    """The nested record of the output an edit was made on (replayed first), None for a clone or an
    edit of a clip; an OptionsError when the edit of an output lacks it."""
    source_record = (manifest.get("edit") or {}).get("source") or {}
    if manifest["kind"] != "edit" or source_record.get("kind") != "output":
        return None
    if not isinstance(source_record.get("manifest"), dict):
        raise OptionsError("this edit's record has no record of the version it edited; it cannot be replayed")
    return source_record["manifest"]


def recorded_reference_hash(manifest: dict) -> str | None:
    """The prompt-cache key of the clip a record was made from (the clone's reference or the edited
    clip), which a replay's clip must match; None when none was recorded."""
    recorded = (
        ((manifest.get("edit") or {}).get("source") or {})
        if manifest["kind"] == "edit"
        else manifest.get("voice") or {}
    )
    return recorded.get("reference_hash")


def note_replay(manifest: dict, result: SynthesisResult) -> None:
    """After a replay: a warning in ``result.warnings`` when other model files made it (the audio
    differs then), and a log line comparing its audio hash with the recorded one."""
    recorded = (manifest.get("model") or {}).get("fingerprints") or {}
    current = result.manifest["model"]["fingerprints"]
    changed = sorted(name for name, value in recorded.items() if value and current.get(name) != value)
    if changed:
        note = (
            f"replayed with other model files ({', '.join(changed)}) than the record's; the audio "
            "differs from the original"
        )
        log.warning("%s", note)
        result.warnings.append(note)
    log.info(
        "replayed a %s record: %d samples, sha256 %s (recorded %s)",
        manifest["kind"],
        len(result.audio),
        result.manifest["audio"]["sha256"][:12],
        str((manifest.get("audio") or {}).get("sha256", "-"))[:12],
    )
