"""What the vocoder needs about a prompt clip, and its JSON form for the prompt cache.

    features = vocoder.prompt_features(audio, sample_rate)      # PromptFeatures
    value = encode_features(features, audio_digest(audio, sr), seconds)   # JSON-safe dict
    features = decode_features(value)

Arrays travel as base64 of their float32 bytes: compact, exact, and a hit parses in milliseconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from prompt_cache import decode_array, encode_array


@dataclass
class PromptFeatures:
    """What the vocoder needs about the reference clip.

    mel: (frames, 80) float32 log mel of the 24 kHz reference, 50 Hz.
    speaker_embedding: (192,) float32 CAM++ embedding.
    """

    mel: np.ndarray
    speaker_embedding: np.ndarray


def encode_features(features: PromptFeatures, audio_hash: str, seconds: float) -> dict:
    """JSON form of ``features`` for the prompt cache; ``audio_hash`` names the clip they belong to."""
    return {
        "audio_hash": audio_hash,
        "seconds": round(seconds, 6),
        "mel": encode_array(np.asarray(features.mel, dtype=np.float32)),
        "speaker_embedding": encode_array(np.asarray(features.speaker_embedding, dtype=np.float32)),
    }


def decode_features(value: dict) -> PromptFeatures:
    """Inverse of ``encode_features`` (raises KeyError/ValueError/TypeError on a damaged field)."""
    return PromptFeatures(
        mel=decode_array(value["mel"]).astype(np.float32),
        speaker_embedding=decode_array(value["speaker_embedding"]).astype(np.float32),
    )


def audio_digest(audio: np.ndarray, sample_rate: int) -> str:
    """Short hash of the vocoder's input clip: the cache key hashes the trimmed 16 kHz clip, and
    two clips can share it while differing outside the trimmed region or in their original rate."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(int(sample_rate)).encode())
    h.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    return h.hexdigest()
