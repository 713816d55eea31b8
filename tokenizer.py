"""StepAudioTokenizer: reference audio -> dual-codebook tokens (vq02 + vq06), through the prompt cache.

    tokenizer = StepAudioTokenizer(root / "Step-Audio-Tokenizer", cache=prompt_cache)
    tokens = tokenizer.encode(audio, sample_rate, transcribe=True)
    tokens.token_str     # "<audio_N>..." for the LLM prompt;  tokens.transcript

    audio (any rate, mono or multi-channel)
      -> prompt prelude, 16 kHz prep (audio_prep.py)
      -> vq02: the streaming Paraformer encoder + nearest centroid   (models/vq02.py, 16.67 Hz)
      -> vq06: whisper-style 128-bin log-mel + ONNX tokenizer        (models/vq06.py, 25 Hz)
      -> interleave 2 + 3 into LLM ids and the ``<audio_N>`` text form (models/audio_tokens.py)

This module is the facade: it checks and fingerprints the tokenizer files, owns the device and
ONNX Runtime settings (TF32 on CUDA, tuned sessions), keys the prompt cache by the prepared clip,
and remembers recent raw inputs so a repeated upload skips resampling and trimming.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from audio_prep import TOKENIZER_SAMPLE_RATE, check_samples, prepare_for_tokenizer, prompt_prelude
from errors import AudioInputError, ModelFilesError
from lru import LRU
from model_files import file_problem
from model_layout import (
    CENTROIDS_FILE,
    PARAFORMER_FILES,
    PARAFORMER_SEG_DICT,
    PARAFORMER_SUBDIR,
    VQ06_ONNX_FILE,
)
from models.audio_tokens import interleave, to_llm_ids, token_str
from models.device import enable_tf32, physical_cores, pick_device
from models.vq02 import Vq02Tokenizer
from models.vq06 import Vq06Tokenizer
from prompt_cache import PromptCache, prompt_key

log = logging.getLogger(__name__)

# Part of the fingerprint: change it whenever the codes for a clip can change.
ALGORITHM_VERSION = "step-audio-vq0206/2 dither=0 fbank=torchaudio-exact"
FINGERPRINT_FULL_HASH_MAX = 64 << 20  # files up to this size are hashed whole
FINGERPRINT_BLOCK = 1 << 20  # larger files: size + SHA-256 of 8 blocks spread over the file
FINGERPRINT_BLOCKS = 8
RAW_MEMO_ENTRIES = 16  # raw input -> prepared clip, so a repeated upload skips resample + trim


@dataclass
class TokenizedAudio:
    """Result of ``StepAudioTokenizer.encode`` (see docs/INTERFACES.md)."""

    vq02: list[int]
    vq06: list[int]
    mixed: list[int]  # the interleaved whole groups, mixed-stream codes in [0, 5120)
    llm_ids: list[int]
    token_str: str
    cache_key: str
    from_cache: bool
    encode_seconds: float  # time of the real encode (recorded in the cache entry)
    elapsed_seconds: float  # time of this call, hashing and prep included
    transcript: str | None
    _audio_16k: np.ndarray | None = field(repr=False)
    cache_entry: dict = field(repr=False)
    _prepare: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def audio_16k(self) -> np.ndarray:
        """The prepared 16 kHz clip the codes were computed from (rebuilt on first use after an alias hit)."""
        if self._audio_16k is None and self._prepare is not None:
            self._audio_16k = self._prepare()
        return self._audio_16k


def tokenizer_fingerprint(files: list[Path]) -> str:
    """SHA-256 over the tokenizer files' contents (name, size, bytes) and ALGORITHM_VERSION.

    Files up to 64 MiB (configs, CMVN, vocabulary, centroids) are hashed whole. The two large weight
    files (model.pt ~880 MB, ONNX ~520 MB) are hashed by size plus 8 one-MiB blocks spread from head
    to tail: other weights change bytes everywhere, so this separates models while costing
    milliseconds instead of reading 1.4 GB at every start. Mtimes are not used, so copies of the same
    files share cache entries.
    """
    h = hashlib.sha256(ALGORITHM_VERSION.encode())
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}:".encode())
        with open(path, "rb") as f:
            if size <= FINGERPRINT_FULL_HASH_MAX:
                for block in iter(lambda: f.read(FINGERPRINT_BLOCK), b""):
                    h.update(block)
            else:
                for i in range(FINGERPRINT_BLOCKS):
                    f.seek((size - FINGERPRINT_BLOCK) * i // (FINGERPRINT_BLOCKS - 1))
                    h.update(f.read(FINGERPRINT_BLOCK))
    return h.hexdigest()


class StepAudioTokenizer:
    """Reference audio -> vq02/vq06 codes, LLM ids and ``<audio_N>`` string, through the prompt cache.

    ``tokenizer_dir`` is ``<model root>/Step-Audio-Tokenizer``. ``ort_threads`` defaults to the
    physical cores; ``ort_options`` is passed to ``Vq06Tokenizer``. The two streams are the
    ``vq02`` and ``vq06`` attributes. Thread-safe: the streaming state lives in each call.
    """

    def __init__(
        self,
        tokenizer_dir: Path,
        device: str = "auto",
        ort_threads: int | None = None,
        cache: PromptCache | None = None,
        ort_options: str = "tuned",
    ):
        t0 = time.perf_counter()
        self.tokenizer_dir = Path(tokenizer_dir)
        self.cache = cache
        self.device = pick_device(device)
        self.tf32 = enable_tf32() if self.device.type == "cuda" else False
        files = self._check_files()
        self.fingerprint = tokenizer_fingerprint(files)
        self.vq02 = Vq02Tokenizer(
            self.tokenizer_dir / PARAFORMER_SUBDIR, self.tokenizer_dir / CENTROIDS_FILE, self.device
        )
        self.vq06 = Vq06Tokenizer(
            self.tokenizer_dir / VQ06_ONNX_FILE,
            self.device,
            int(ort_threads) if ort_threads else physical_cores(),
            ort_options,
        )
        self._memo: LRU[bytes, tuple[str, np.ndarray | None]] = LRU(RAW_MEMO_ENTRIES)
        self._warm_up()
        log.debug(
            "tokenizer: loaded %s on %s in %.2f s (fingerprint %s, TF32 %s, torch threads %d)",
            self.tokenizer_dir.name,
            self.device,
            time.perf_counter() - t0,
            self.fingerprint[:16],
            self.tf32,
            torch.get_num_threads(),
        )

    def _check_files(self) -> list[Path]:
        """The files the fingerprint covers; a ModelFilesError names the first unusable one."""
        if not self.tokenizer_dir.is_dir():
            raise ModelFilesError(
                f"tokenizer folder {self.tokenizer_dir.name}/ not found; download "
                "stepfun-ai/Step-Audio-Tokenizer into <model root>/Step-Audio-Tokenizer "
                "(scripts/download_models.py) or use the demo models"
            )
        paraformer = self.tokenizer_dir / PARAFORMER_SUBDIR
        files = [paraformer / n for n in PARAFORMER_FILES]
        files += [self.tokenizer_dir / CENTROIDS_FILE, self.tokenizer_dir / VQ06_ONNX_FILE]
        for path in files:
            problem = file_problem(path, "bytes")
            if problem:
                raise ModelFilesError(
                    f"tokenizer file {path.relative_to(self.tokenizer_dir)} {problem}; "
                    "download Step-Audio-Tokenizer again"
                )
        seg_dict = paraformer / PARAFORMER_SEG_DICT
        return files + ([seg_dict] if seg_dict.is_file() else [])

    def _warm_up(self) -> None:
        """One short pass through prep and vq02 so the first real request does not pay lazy imports."""
        t = time.perf_counter()
        buzz = (0.3 * np.sin(np.arange(TOKENIZER_SAMPLE_RATE // 4) * 0.05)).astype(np.float32)
        self.vq02.encode(prepare_for_tokenizer(buzz, TOKENIZER_SAMPLE_RATE))
        log.debug("tokenizer: warm-up in %.2f s", time.perf_counter() - t)

    def encode(self, audio: np.ndarray, sample_rate: int, transcribe: bool = False) -> TokenizedAudio:
        """Tokens of a reference clip ((samples,) or (channels, samples), any rate), via the cache.

        Raises AudioInputError for empty, NaN/inf or silent audio. With ``transcribe`` the entry
        also carries the Paraformer transcript (computed once, then cached with the codes).
        """
        t0 = time.perf_counter()
        key, audio_16k = self._prepare(audio, sample_rate)
        t_prep = time.perf_counter() - t0
        entry = self.cache.get(key) if self.cache is not None else None
        from_cache = entry is not None
        if audio_16k is None and (entry is None or (transcribe and entry.get("transcript") is None)):
            # the key came from a persistent alias but the clip itself is needed: prepare it now
            key, audio_16k = self._prepare(audio, sample_rate, use_alias=False)
        if entry is not None and transcribe and entry.get("transcript") is None:
            t = time.perf_counter()
            transcript = self.vq02.encode(audio_16k, transcribe=True).transcript
            entry["transcript"] = transcript
            self.cache.update(key, {"transcript": transcript})
            log.debug("tokenizer: transcript added to cached entry in %.3f s", time.perf_counter() - t)
        if entry is None:
            t = time.perf_counter()
            vq02 = self.vq02.encode(audio_16k, transcribe=transcribe)
            t02 = time.perf_counter() - t
            vq06 = self.vq06.encode(audio_16k)
            encode_s = time.perf_counter() - t
            entry = {
                "vq02": vq02.codes,
                "vq06": vq06,
                "encode_seconds": round(encode_s, 6),
                "created": time.time(),
                "transcript": vq02.transcript,
            }
            if self.cache is not None:
                self.cache.put(key, entry)
            log.debug(
                "tokenizer: encoded %.2f s clip: prep %.1f ms, vq02 %.3f s (%d), vq06 %.3f s (%d)%s",
                len(audio_16k) / TOKENIZER_SAMPLE_RATE,
                t_prep * 1e3,
                t02,
                len(vq02.codes),
                encode_s - t02,
                len(vq06),
                ", with transcript" if transcribe else "",
            )
        vq02_codes, vq06_codes = [int(c) for c in entry["vq02"]], [int(c) for c in entry["vq06"]]
        mixed = interleave(vq02_codes, vq06_codes)
        elapsed = time.perf_counter() - t0
        if from_cache:
            log.debug(
                "tokenizer: cache hit in %.2f ms (saved %.3f s)",
                elapsed * 1e3,
                entry.get("encode_seconds", 0),
            )
        return TokenizedAudio(
            vq02=vq02_codes,
            vq06=vq06_codes,
            mixed=mixed,
            llm_ids=to_llm_ids(mixed),
            token_str=token_str(mixed),
            cache_key=key,
            from_cache=from_cache,
            encode_seconds=float(entry.get("encode_seconds", 0.0)),
            elapsed_seconds=elapsed,
            transcript=entry.get("transcript"),
            _audio_16k=audio_16k,
            cache_entry=entry,
            _prepare=lambda: self._prepare(audio, sample_rate, use_alias=False)[1],
        )

    def prepare(self, audio: np.ndarray, sample_rate: int) -> tuple[str, np.ndarray]:
        """(cache key, prepared 16 kHz clip) of an input, as ``encode`` computes them."""
        return self._prepare(audio, sample_rate, use_alias=False)

    def _prepare(
        self, audio: np.ndarray, sample_rate: int, use_alias: bool = True
    ) -> tuple[str, np.ndarray | None]:
        """Key and prepared clip, through a memo of raw inputs (hash of samples, shape, dtype, rate).

        The in-process memo holds recent inputs; the cache's persistent aliases (raw hash + model
        fingerprint -> key) give the key after a restart without resampling or trimming, and then
        the clip is None (``encode`` prepares it only when it needs it). The key itself is always
        the hash of the prepared PCM.
        """
        raw = np.ascontiguousarray(audio)
        if raw.dtype.kind not in "fiu":
            check_samples(raw, sample_rate)  # raises with a message about the dtype
        h = hashlib.sha256(f"{raw.dtype.str}:{raw.shape}:{sample_rate}:".encode())
        h.update(memoryview(raw).cast("B") if raw.size else b"")
        raw_id = h.digest()
        hit = self._memo.get(raw_id)
        if hit is not None and (use_alias or hit[1] is not None):
            return hit
        alias = hashlib.sha256(raw_id + self.fingerprint.encode()).hexdigest()
        if use_alias and self.cache is not None:
            key = self.cache.alias_get(alias)
            if key is not None:
                self._memo.put(raw_id, (key, None))
                return key, None
        check_samples(raw, sample_rate)
        audio_16k = prepare_for_tokenizer(prompt_prelude(raw, int(sample_rate)), int(sample_rate))
        if not np.any(audio_16k):
            raise AudioInputError(
                "the reference audio is silent after preparation; upload a clip with speech"
            )
        audio_16k.setflags(write=False)  # shared with the memo and every result
        key = prompt_key(audio_16k, self.fingerprint)
        self._memo.put(raw_id, (key, audio_16k))
        if self.cache is not None:
            self.cache.alias_put(alias, key)
        return key, audio_16k
