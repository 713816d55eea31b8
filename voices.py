"""Voice library persistence: named voices kept beside the prompt cache, never evicted.

    library = VoiceLibrary(cache.store)              # the prompt cache's store (disk folder or Redis)
    voice = library.create("Calm narrator", text, flac_bytes, vq02, vq06, features, fingerprints)
    voice.id                                         # "calm-narrator" (then "calm-narrator-2", ...)
    library.list()                                   # [VoiceInfo], without audio, tokens or features
    library.stale({"tokenizer": tok.fingerprint, "vocoder": voc.fingerprint})   # to re-encode

A voice is two JSON records in kept namespaces of the store (outside the LRU and the byte budget):
``voices`` holds the light metadata that ``list`` reads, ``voice_data`` the reference audio (FLAC,
base64), its tokens and the vocoder's prompt features (``models.prompt_features.encode_features``
form, kept as an opaque dict). The id is claimed atomically in ``voice_data`` (add-if-absent), so two
replicas creating "Calm narrator" at once get two ids. This module stores and loads; making a voice
(encoding, features) is the engine's job.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

from errors import AudioInputError, TextInputError
from storage import Store

log = logging.getLogger(__name__)

META = "voices"  # store namespace: metadata records
DATA = "voice_data"  # store namespace: audio, tokens, features
MAX_NAME_CHARS = 100
MAX_SLUG_CHARS = 48
SLUG_ATTEMPTS = 100  # "name", "name-2", ... "name-100", then a random suffix
FLAC_MAGIC = b"fLaC"
RECORD_VERSION = 1
_META_FIELDS = ("name", "text", "fingerprints")
_DATA_FIELDS = ("audio_flac", "vq02", "vq06", "vocoder_features")


@dataclass(frozen=True)
class VoiceInfo:
    """What ``list`` shows: a voice without its audio, tokens or features."""

    id: str
    name: str
    text: str
    created: float  # epoch seconds
    fingerprints: dict[str, str] = field(default_factory=dict)  # e.g. {"tokenizer": ..., "vocoder": ...}
    audio_bytes: int = 0  # size of the FLAC reference


@dataclass
class Voice:
    """A complete voice: reference audio (FLAC bytes), its text, tokens and vocoder features."""

    id: str
    name: str
    text: str
    audio_flac: bytes
    vq02: list[int]
    vq06: list[int]
    vocoder_features: dict | None
    created: float
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def info(self) -> VoiceInfo:
        return VoiceInfo(
            self.id, self.name, self.text, self.created, dict(self.fingerprints), len(self.audio_flac)
        )


def slugify(name: str) -> str:
    """URL-safe id stem of a display name: "Calm Narrator (EN)" -> "calm-narrator-en"."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:MAX_SLUG_CHARS].rstrip("-") or "voice"


class VoiceLibrary:
    """Named voices in a ``Store`` (kept namespaces: never evicted, persistent with the store)."""

    def __init__(self, store: Store):
        self.store = store
        store.namespace(META)
        store.namespace(DATA)

    def create(
        self,
        name: str,
        text: str,
        audio_flac: bytes,
        vq02: list[int],
        vq06: list[int],
        vocoder_features: dict | None = None,
        fingerprints: Mapping[str, str] | None = None,
        created: float | None = None,
    ) -> Voice:
        """Store a new voice; its id is made from ``name`` and unique in the store."""
        voice = Voice(
            id="",
            name=_clean_name(name),
            text=_clean_text(text),
            audio_flac=_flac(audio_flac),
            vq02=_codes(vq02, "vq02"),
            vq06=_codes(vq06, "vq06"),
            vocoder_features=_features(vocoder_features),
            created=float(time.time() if created is None else created),
            fingerprints=_fingerprints(fingerprints),
        )
        data = _data_record(voice)
        stem = slugify(voice.name)
        for n in range(1, SLUG_ATTEMPTS + 2):
            candidate = stem if n == 1 else f"{stem}-{n}"
            if n == SLUG_ATTEMPTS + 1:
                candidate = f"{stem}-{secrets.token_hex(3)}"
            if self.store.add(DATA, candidate, data):  # claims the id across processes
                voice.id = candidate
                break
        else:
            raise RuntimeError(f"no free voice id for {voice.name!r}")
        self.store.put(META, voice.id, _meta_record(voice))
        log.info(
            "voice library: created %s (%r, %.0f kB audio, %d+%d codes)",
            voice.id,
            voice.name,
            len(voice.audio_flac) / 1e3,
            len(voice.vq02),
            len(voice.vq06),
        )
        return voice

    def get(self, voice_id: str) -> Voice | None:
        """The whole voice, or None when there is no complete voice under ``voice_id``."""
        meta = self.store.get(META, voice_id)
        data = self.store.get(DATA, voice_id) if meta is not None else None
        if meta is None or data is None:
            return None
        try:
            return Voice(
                id=voice_id,
                name=str(meta["name"]),
                text=str(meta["text"]),
                audio_flac=base64.b64decode(data["audio_flac_b64"], validate=True),
                vq02=[int(c) for c in data["vq02"]],
                vq06=[int(c) for c in data["vq06"]],
                vocoder_features=data.get("vocoder_features"),
                created=float(meta["created"]),
                fingerprints=dict(meta.get("fingerprints") or {}),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            log.warning("voice library: voice %s is damaged (%s); not loaded", voice_id, exc)
            return None

    def list(self) -> list[VoiceInfo]:
        """Every voice's metadata, oldest first."""
        records = self.store.get_many(META, self.store.keys(META))
        infos = [info for key, meta in records.items() if (info := _info(key, meta)) is not None]
        return sorted(infos, key=lambda i: (i.created, i.id))

    def info(self, voice_id: str) -> VoiceInfo | None:
        """One voice's metadata, or None."""
        meta = self.store.get(META, voice_id)
        return _info(voice_id, meta) if meta is not None else None

    def rename(self, voice_id: str, name: str) -> VoiceInfo | None:
        """Change the display name (the id stays, so links keep working); None if there is no such voice."""
        meta = self.store.update(META, voice_id, {"name": _clean_name(name)})
        return _info(voice_id, meta) if meta is not None else None

    def update(self, voice_id: str, **fields) -> Voice | None:
        """Replace fields of a voice (e.g. after re-encoding with new models): any of name, text,
        audio_flac, vq02, vq06, vocoder_features, fingerprints. None if there is no such voice."""
        unknown = set(fields) - set(_META_FIELDS) - set(_DATA_FIELDS)
        if unknown:
            raise TypeError(f"unknown voice fields: {', '.join(sorted(unknown))}")
        meta_fields: dict = {}
        data_fields: dict = {}
        if "name" in fields:
            meta_fields["name"] = _clean_name(fields["name"])
        if "text" in fields:
            meta_fields["text"] = _clean_text(fields["text"])
        if "fingerprints" in fields:
            meta_fields["fingerprints"] = _fingerprints(fields["fingerprints"])
        if "audio_flac" in fields:
            audio = _flac(fields["audio_flac"])
            data_fields["audio_flac_b64"] = base64.b64encode(audio).decode("ascii")
            meta_fields["audio_bytes"] = len(audio)
        for name in ("vq02", "vq06"):
            if name in fields:
                data_fields[name] = _codes(fields[name], name)
        if "vocoder_features" in fields:
            data_fields["vocoder_features"] = _features(fields["vocoder_features"])
        if self.store.get(META, voice_id) is None:
            return None
        if data_fields and self.store.update(DATA, voice_id, data_fields) is None:
            return None
        if meta_fields and self.store.update(META, voice_id, meta_fields) is None:
            return None
        return self.get(voice_id)

    def delete(self, voice_id: str) -> bool:
        """Remove a voice; True if it existed."""
        had_meta = self.store.delete(META, voice_id)
        had_data = self.store.delete(DATA, voice_id)
        if had_meta or had_data:
            log.info("voice library: deleted %s", voice_id)
        return had_meta or had_data

    def stale(self, fingerprints: Mapping[str, str]) -> list[VoiceInfo]:
        """Voices made with other models: any of ``fingerprints`` (e.g. tokenizer, vocoder) differs."""
        return [
            info
            for info in self.list()
            if any(info.fingerprints.get(k) != v for k, v in fingerprints.items())
        ]


# -- records and checks --------------------------------------------------------------------------


def _meta_record(voice: Voice) -> dict:
    return {
        "v": RECORD_VERSION,
        "name": voice.name,
        "text": voice.text,
        "created": voice.created,
        "fingerprints": voice.fingerprints,
        "audio_bytes": len(voice.audio_flac),
    }


def _data_record(voice: Voice) -> dict:
    return {
        "v": RECORD_VERSION,
        "audio_flac_b64": base64.b64encode(voice.audio_flac).decode("ascii"),
        "vq02": voice.vq02,
        "vq06": voice.vq06,
        "vocoder_features": voice.vocoder_features,
    }


def _info(voice_id: str, meta: dict) -> VoiceInfo | None:
    try:
        return VoiceInfo(
            id=voice_id,
            name=str(meta["name"]),
            text=str(meta["text"]),
            created=float(meta["created"]),
            fingerprints=dict(meta.get("fingerprints") or {}),
            audio_bytes=int(meta.get("audio_bytes") or 0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("voice library: metadata of %s is damaged (%s); skipped", voice_id, exc)
        return None


def _clean_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise TextInputError("a voice needs a name; type one")
    name = " ".join(name.split())
    if len(name) > MAX_NAME_CHARS:
        raise TextInputError(f"a voice name has at most {MAX_NAME_CHARS} characters, got {len(name)}")
    return name


def _clean_text(text: str) -> str:
    if not isinstance(text, str):
        raise TextInputError("the reference text of a voice must be text")
    return text.strip()


def _flac(audio: bytes) -> bytes:
    if not isinstance(audio, bytes | bytearray) or not bytes(audio[:4]) == FLAC_MAGIC:
        raise AudioInputError("the reference audio of a voice is stored as FLAC; encode it to FLAC first")
    return bytes(audio)


def _codes(codes, name: str) -> list[int]:
    try:
        return [int(c) for c in codes]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of integer codes") from None


def _features(features: dict | None) -> dict | None:
    if features is not None and not isinstance(features, dict):
        raise TypeError("vocoder_features is the dict of models.prompt_features.encode_features")
    return features


def _fingerprints(fingerprints: Mapping[str, str] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (fingerprints or {}).items()}
