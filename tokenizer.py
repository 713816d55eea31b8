"""StepAudioTokenizer: reference audio -> dual-codebook tokens (vq02 + vq06), with the prompt cache.

    audio (any rate, mono or multi-channel)
      -> prompt prelude, 16 kHz prep (audio_prep.py)
      -> vq02: FunASR WavFrontendOnline + streaming SANMEncoderChunkOpt (upstream's chunk loop),
               nearest of the 1024 centroids in linguistic_tokenizer.npy          (16.67 Hz)
      -> vq06: whisper-style 128-bin log-mel per 30 s chunk + speech_tokenizer_v1.onnx (25 Hz)
      -> interleave 2 + 3 into LLM ids and the ``<audio_N>`` text form

The FunASR parts are PyPI ``funasr`` building blocks, loaded from the local folder only (no hub, no
network). The frontend's dither is forced to 0: the real config has no dither key, so upstream uses
FunASR's default 1.0 and its vq02 codes are random per call; ours are deterministic and cacheable.

Auto-transcription reuses the same Paraformer: its CIF predictor and decoder run on the encoder
output computed for vq02 anyway (FunASR's own streaming ASR recipe), no second ASR model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from audio_prep import (
    TOKENIZER_SAMPLE_RATE,
    AudioInputError,
    check_samples,
    prepare_for_tokenizer,
    prompt_prelude,
)
from models.device import enable_tf32, pick_device
from models.prompts import AUDIO_ID_OFFSET, VQ02_CODES, VQ06_CODES  # noqa: F401 - VQ06_CODES re-exported
from patches import funasr_fbank
from prompt_cache import PromptCache, prompt_key

log = logging.getLogger(__name__)

# --- token layout (fixed by the LLM vocabulary: AUDIO_ID_OFFSET is the id of <audio_0>) ---
VQ02_OFFSET = AUDIO_ID_OFFSET
VQ06_OFFSET = AUDIO_ID_OFFSET + VQ02_CODES
GROUP_VQ02, GROUP_VQ06 = 2, 3  # one interleaved group: 2 vq02 then 3 vq06 (41.67 tokens/s)

# --- vq02 streaming schedule (upstream StepAudioTokenizer) ---
CHUNK_SIZE = [0, 4, 5]  # [left, chunk, right] in 60 ms LFR frames
ENCODER_LOOK_BACK = 4
DECODER_LOOK_BACK = 1
CHUNK_STRIDE_SAMPLES = CHUNK_SIZE[1] * 960  # 3840 samples = 240 ms at 16 kHz
FRAME_SAMPLES, HOP_SAMPLES = 400, 160  # Kaldi fbank 25 ms / 10 ms at 16 kHz
MIN_FINAL_SAMPLES = 480  # upstream skips a failing final chunk shorter than this

# --- vq06 features (whisper.log_mel_spectrogram) ---
MEL_N_FFT, MEL_HOP, MEL_BINS = 400, 160, 128
MEL_LOG_FLOOR = 1e-10
MEL_DYNAMIC_RANGE = 8.0  # log10 units kept below each chunk's maximum
VQ06_CHUNK_SAMPLES = 30 * TOKENIZER_SAMPLE_RATE
VQ06_MIN_CHUNK_SAMPLES = 480
VQ06_TOKENS_PER_SECOND = 25

PARAFORMER_SUBDIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
CENTROIDS_FILE = "linguistic_tokenizer.npy"
ONNX_FILE = "speech_tokenizer_v1.onnx"
PARAFORMER_FILES = ("config.yaml", "model.pt", "am.mvn", "tokens.json", "configuration.json")
# Part of the fingerprint: change it whenever the codes for a clip can change.
ALGORITHM_VERSION = "step-audio-vq0206/2 dither=0 fbank=torchaudio-exact"
SPECIAL_TOKENS = {"<blank>", "<s>", "</s>", "<unk>", "<OOV>"}
FINGERPRINT_FULL_HASH_MAX = 64 << 20  # files up to this size are hashed whole
FINGERPRINT_BLOCK = 1 << 20  # larger files: size + SHA-256 of 8 blocks spread over the file
FINGERPRINT_BLOCKS = 8
WARMUP_ROUNDS = 3  # timed runs per ORT execution mode at load
RAW_MEMO_ENTRIES = 16  # raw input -> prepared clip, so a repeated upload skips resample + trim


class TokenizerFilesError(RuntimeError):
    """A tokenizer file is missing, truncated or does not match the others; the message names it."""


@dataclass
class TokenizedAudio:
    """Result of ``StepAudioTokenizer.encode`` (see docs/INTERFACES.md)."""

    vq02: list[int]
    vq06: list[int]
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


@dataclass
class Vq02Result:
    """vq02 codes of one clip, with the stream's intermediate arrays for inspection and tests."""

    codes: list[int]
    enc_out: np.ndarray  # (T02, D) float32 encoder frames
    lfr_feats: np.ndarray  # (T02, 560) float32 frontend output fed to the encoder
    transcript: str | None


# --- pure functions ----------------------------------------------------------------------------------

def n_groups(vq02: list[int], vq06: list[int]) -> int:
    """Number of whole 2+3 groups: ``min(len(vq02) // 2, len(vq06) // 3)``."""
    return min(len(vq02) // GROUP_VQ02, len(vq06) // GROUP_VQ06)


def interleave_llm_ids(vq02: list[int], vq06: list[int]) -> list[int]:
    """LLM ids ``[a+65536, b+65536, x+66560, y+66560, z+66560, ...]`` for whole groups only."""
    ids: list[int] = []
    for g in range(n_groups(vq02, vq06)):
        ids += [c + VQ02_OFFSET for c in vq02[g * GROUP_VQ02:(g + 1) * GROUP_VQ02]]
        ids += [c + VQ06_OFFSET for c in vq06[g * GROUP_VQ06:(g + 1) * GROUP_VQ06]]
    return ids


def audio_token_str(vq02: list[int], vq06: list[int]) -> str:
    """Text form ``<audio_N>`` of the interleaved groups; N = vq02 or 1024 + vq06 (= LLM id - 65536)."""
    return "".join(f"<audio_{i - AUDIO_ID_OFFSET}>" for i in interleave_llm_ids(vq02, vq06))


_MEL_FILTERS: dict[str, torch.Tensor] = {}


def whisper_log_mel(audio_16k: np.ndarray) -> np.ndarray:
    """128-bin log-mel of a 16 kHz clip exactly as ``whisper.log_mel_spectrogram``: (128, frames) float32.

    Hann window 400, hop 160, |STFT|^2 without the last frame, Slaney mel filters (librosa), log10
    floored at 1e-10, clamped to max - 8 over this clip, then (x + 4) / 4. ``frames = len // 160``.
    """
    if "f" not in _MEL_FILTERS:
        import librosa

        _MEL_FILTERS["f"] = torch.from_numpy(
            librosa.filters.mel(sr=TOKENIZER_SAMPLE_RATE, n_fft=MEL_N_FFT, n_mels=MEL_BINS))
    x = torch.tensor(np.asarray(audio_16k, dtype=np.float32))  # a copy: inputs may be read-only
    with torch.inference_mode():
        stft = torch.stft(x, MEL_N_FFT, MEL_HOP, window=torch.hann_window(MEL_N_FFT), return_complex=True)
        power = stft[..., :-1].abs() ** 2
        log_spec = torch.clamp(_MEL_FILTERS["f"] @ power, min=MEL_LOG_FLOOR).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - MEL_DYNAMIC_RANGE)
        return ((log_spec + 4.0) / 4.0).numpy()


def vq06_chunks(audio_16k: np.ndarray) -> list[np.ndarray]:
    """The clip cut into 30 s chunks; a remainder under 480 samples is skipped (upstream split_audio)."""
    chunks = [audio_16k[s:s + VQ06_CHUNK_SAMPLES] for s in range(0, len(audio_16k), VQ06_CHUNK_SAMPLES)]
    return [c for c in chunks if len(c) >= VQ06_MIN_CHUNK_SAMPLES]


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads, affinity and cgroup quota considered)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = set()
    try:
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                cores.add((phys, core))
    except OSError:
        pass
    n = min(len(cores), usable) if cores else usable
    try:  # docker --cpus: cgroup v2 quota
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


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


def import_funasr() -> None:
    """Import the FunASR modules we use, undoing what ``import funasr`` does to the process.

    ``import funasr`` imports every submodule; one of them (funasr.bin.realtime_ws) calls
    ``logging.basicConfig(level=INFO)`` on the root logger, which would override the app's logging
    setup, and the package prints an ffmpeg notice on stdout. Both are undone here (the printed text
    goes to the debug log).
    """
    if "funasr.models.paraformer_streaming.model" in sys.modules:
        return
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            import funasr.models.paraformer_streaming.model  # noqa: F401 - registers the classes
            import funasr.utils.load_utils  # noqa: F401
            import funasr.utils.postprocess_utils  # noqa: F401
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    if printed.getvalue().strip():
        log.debug("funasr import said: %s", printed.getvalue().strip())


def join_asr_tokens(tokens: list[str]) -> str:
    """Readable text from Paraformer tokens: specials dropped, '@@' BPE pieces glued, CJK unspaced."""
    from funasr.utils.postprocess_utils import sentence_postprocess

    kept = [t for t in tokens if t not in SPECIAL_TOKENS]
    if not kept:
        return ""
    return " ".join(str(sentence_postprocess(kept)[0]).split())


# --- the tokenizer -----------------------------------------------------------------------------------

class StepAudioTokenizer:
    """Reference audio -> vq02/vq06 codes, LLM ids and ``<audio_N>`` string, through the prompt cache.

    ``tokenizer_dir`` is ``<model root>/Step-Audio-Tokenizer``. ``ort_threads`` defaults to the
    physical cores. ``ort_options``: "tuned" (default), or for comparisons "default" (ONNX Runtime's
    untouched SessionOptions) and "upstream" (the reference project's: all optimisations, 1 thread).
    Thread-safe: the streaming state lives in each call; the memo is locked.
    """

    def __init__(self, tokenizer_dir: Path, device: str = "auto", ort_threads: int | None = None,
                 cache: PromptCache | None = None, ort_options: str = "tuned"):
        t0 = time.perf_counter()
        self.tokenizer_dir = Path(tokenizer_dir)
        self.model_dir = self.tokenizer_dir / PARAFORMER_SUBDIR
        self.cache = cache
        self.device = pick_device(device)
        self.tf32 = enable_tf32() if self.device.type == "cuda" else False
        if not self.tf32:
            log.info("tokenizer: TF32 off (device %s)", self.device)
        files = self._check_files()
        self.fingerprint = tokenizer_fingerprint(files)
        self._load_paraformer()
        self._load_centroids()
        self.ort_threads = int(ort_threads) if ort_threads else physical_cores()
        self._ort_session, self.ort_info = self.make_onnx_session(ort_options)
        self._memo: OrderedDict[bytes, tuple[str, np.ndarray]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._warm_up()
        log.info("tokenizer: loaded %s on %s in %.2f s (fingerprint %s, torch threads %d)",
                 self.tokenizer_dir, self.device, time.perf_counter() - t0, self.fingerprint[:16],
                 torch.get_num_threads())

    # -- loading ------------------------------------------------------------------------------------

    def _check_files(self) -> list[Path]:
        if not self.tokenizer_dir.is_dir():
            raise TokenizerFilesError(
                f"tokenizer folder not found: {self.tokenizer_dir}; download stepfun-ai/Step-Audio-Tokenizer"
                " into <model root>/Step-Audio-Tokenizer (scripts/download_models.py) or use demo models")
        files = [self.model_dir / n for n in PARAFORMER_FILES]
        files += [self.tokenizer_dir / CENTROIDS_FILE, self.tokenizer_dir / ONNX_FILE]
        for path in files:
            if not path.is_file():
                raise TokenizerFilesError(f"tokenizer file missing: {path}; "
                                          "re-download Step-Audio-Tokenizer")
            if path.stat().st_size == 0:
                raise TokenizerFilesError(f"tokenizer file is empty: {path}; re-download it")
        seg_dict = self.model_dir / "seg_dict"
        return files + ([seg_dict] if seg_dict.is_file() else [])

    def _read_config(self) -> tuple[dict, dict]:
        import yaml

        path = self.model_dir / "config.yaml"
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
            metas = json.loads((self.model_dir / "configuration.json").read_text(encoding="utf-8"))
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TokenizerFilesError(f"cannot parse {path.name} / configuration.json in {self.model_dir}: "
                                      f"{exc}; the file is damaged, re-download it") from exc
        needed = ("model", "encoder", "encoder_conf", "frontend", "frontend_conf", "predictor", "decoder")
        missing = [k for k in needed if not isinstance(config, dict) or k not in config]
        if missing:
            raise TokenizerFilesError(f"{path} lacks {missing}; it is truncated or not a Paraformer config")
        return config, metas.get("file_path_metas", {})

    def _load_paraformer(self) -> None:
        """Build frontend, tokenizer and ParaformerStreaming from config.yaml and load model.pt."""
        t0 = time.perf_counter()
        import_funasr()
        funasr_fbank.apply()  # torchaudio's fbank numbers instead of kaldi-native-fbank's (see patches/)
        from funasr.register import tables

        config, metas = self._read_config()
        names = {"init_param": metas.get("init_param", "model.pt"),
                 "cmvn": metas.get("frontend_conf", {}).get("cmvn_file", "am.mvn"),
                 "tokens": metas.get("tokenizer_conf", {}).get("token_list", "tokens.json")}
        frontend_conf = dict(config["frontend_conf"])
        configured = frontend_conf.get("dither", "absent (FunASR default 1.0)")
        frontend_conf["dither"] = 0.0  # deterministic fbank: same clip -> same codes -> cacheable
        log.info("tokenizer: vq02 fbank dither forced to 0 (config: %s) so codes are deterministic",
                 configured)
        cmvn_path = self.model_dir / names["cmvn"]
        try:
            frontend_class = tables.frontend_classes.get(config["frontend"])
            frontend = frontend_class(cmvn_file=str(cmvn_path), **frontend_conf)
        except (ValueError, IndexError) as exc:
            raise TokenizerFilesError(f"cannot read CMVN file {cmvn_path}: {exc}; re-download it") from exc
        dims = frontend.output_size()
        if frontend.cmvn is None or tuple(frontend.cmvn.shape) != (2, dims):
            shape = None if frontend.cmvn is None else tuple(frontend.cmvn.shape)
            raise TokenizerFilesError(f"{cmvn_path} holds CMVN of shape {shape}, expected (2, {dims}); "
                                      "the file is truncated or belongs to another model")
        tokens_path = self.model_dir / names["tokens"]
        try:
            self.token_list = json.loads(tokens_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TokenizerFilesError(f"cannot parse {tokens_path}: {exc}; re-download it") from exc
        model_conf = {**config.get("model_conf", {}), **config}
        model = tables.model_classes.get(config["model"])(
            **model_conf, input_size=dims, vocab_size=len(self.token_list))
        weights = self.model_dir / names["init_param"]
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing here
            raise TokenizerFilesError(f"cannot load {weights}: {exc}; the file is truncated or damaged, "
                                      "re-download it") from exc
        if not isinstance(state, dict):
            raise TokenizerFilesError(f"{weights} is not a state dict")
        state = state.get("state_dict", state)  # some exports nest the weights one level down
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise TokenizerFilesError(f"{weights} does not match {self.model_dir / 'config.yaml'}: "
                                      f"{str(exc)[:500]}") from exc
        parts = ("encoder", "predictor", "decoder")
        needed_missing = [k for k in result.missing_keys if k.split(".")[0] in parts]
        if needed_missing:
            raise TokenizerFilesError(f"{weights} lacks {len(needed_missing)} encoder/predictor/decoder "
                                      f"weights (e.g. {needed_missing[:3]}); wrong or damaged file")
        if result.unexpected_keys:
            log.info("tokenizer: %d unused weights in %s (e.g. %s)", len(result.unexpected_keys),
                     weights.name, result.unexpected_keys[:2])
        self.model = model.to(self.device).eval()
        self.frontend = frontend
        self.config = config
        self.lfr_m = int(frontend_conf.get("lfr_m", 1))
        self.enc_dim = int(config["encoder_conf"]["output_size"])
        log.info("tokenizer: Paraformer %s (%d encoder blocks, dim %d, vocab %d) loaded in %.2f s",
                 config["encoder"], int(config["encoder_conf"].get("num_blocks", 0)), self.enc_dim,
                 len(self.token_list), time.perf_counter() - t0)

    def _load_centroids(self) -> None:
        path = self.tokenizer_dir / CENTROIDS_FILE
        try:
            centroids = np.load(path)
        except (ValueError, OSError, EOFError) as exc:
            raise TokenizerFilesError(f"cannot load {path}: {exc}; re-download it") from exc
        if centroids.ndim != 2 or centroids.shape[1] != self.enc_dim:
            raise TokenizerFilesError(f"{path} has shape {centroids.shape}, expected (codes, {self.enc_dim}) "
                                      "to match the encoder")
        self.centroids = torch.from_numpy(centroids.astype(np.float32)).to(self.device)

    @property
    def vq06_session(self):
        """The ONNX Runtime session ``encode_vq06`` uses (described by ``ort_info``)."""
        return self._ort_session

    def make_onnx_session(self, options: str = "tuned"):
        """A vq06 ONNX Runtime session and a dict describing it (benchmarks compare the options).

        "tuned": ORT_ENABLE_ALL, ``ort_threads`` intra-op threads, and the faster of the sequential and
        parallel execution modes timed on a 2 s warm-up input. CUDA EP first when the device is CUDA.
        """
        if options not in ("tuned", "default", "upstream"):
            raise ValueError(f"ort_options must be tuned, default or upstream, got {options!r}")
        import onnxruntime as ort

        path = self.tokenizer_dir / ONNX_FILE
        cuda = self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        if cuda and hasattr(ort, "preload_dlls"):
            # load the CUDA/cuDNN libraries torch's wheels installed, so the CUDA EP finds them
            ort.preload_dlls()

        def make(mode) -> ort.InferenceSession:
            opts = ort.SessionOptions()
            if options != "default":
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                opts.intra_op_num_threads = self.ort_threads if options == "tuned" else 1
            if mode is not None:
                opts.execution_mode = mode
            try:
                return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad model file
                raise TokenizerFilesError(f"cannot load {path}: {exc}; the file is truncated or damaged, "
                                          "re-download it") from exc

        if options != "tuned":
            session = make(None)
            log.info("tokenizer: ONNX Runtime %s session options, providers %s", options,
                     session.get_providers())
            return session, {"options": options, "providers": session.get_providers()}
        warm = np.zeros(TOKENIZER_SAMPLE_RATE * 2, np.float32)
        warm[::7] = 0.1  # 2 s of a buzz: a short, non-degenerate warm-up input
        mel = whisper_log_mel(warm)[None]
        sessions = {"sequential": make(ort.ExecutionMode.ORT_SEQUENTIAL),
                    "parallel": make(ort.ExecutionMode.ORT_PARALLEL)}
        runs: dict[str, list[float]] = {name: [] for name in sessions}
        for round_ in range(WARMUP_ROUNDS + 1):  # alternate, so a noisy moment hurts both; round 0 is warm-up
            for name, candidate in sessions.items():
                elapsed = self._time_vq06_run(candidate, mel)
                if round_:
                    runs[name].append(elapsed)
        timings = {name: min(values) for name, values in runs.items()}
        best = min(timings, key=timings.get)
        session = sessions[best]
        info = {"options": "tuned", "execution_mode": best, "intra_op_threads": self.ort_threads,
                "graph_optimization": "ORT_ENABLE_ALL", "providers": session.get_providers(),
                "warmup_ms": {k: round(v * 1e3, 3) for k, v in timings.items()}}
        log.info("tokenizer: ONNX Runtime ORT_ENABLE_ALL, %d intra-op threads, providers %s; execution mode "
                 "%s (warm-up on 2 s: sequential %.1f ms, parallel %.1f ms)", self.ort_threads,
                 session.get_providers(), best, timings["sequential"] * 1e3, timings["parallel"] * 1e3)
        return session, info

    def _warm_up(self) -> None:
        """One short pass through prep and vq02 so the first real request does not pay lazy imports."""
        t = time.perf_counter()
        buzz = (0.3 * np.sin(np.arange(TOKENIZER_SAMPLE_RATE // 4) * 0.05)).astype(np.float32)
        self.encode_vq02(prepare_for_tokenizer(buzz, TOKENIZER_SAMPLE_RATE))
        log.info("tokenizer: warm-up in %.2f s", time.perf_counter() - t)

    @staticmethod
    def _run_vq06(session, mel: np.ndarray) -> np.ndarray:
        """The ONNX tokenizer on one (1, 128, frames) log-mel: its codes, flattened."""
        inputs = session.get_inputs()
        out = session.run(None, {inputs[0].name: mel, inputs[1].name: np.array([mel.shape[2]], np.int32)})
        return np.asarray(out[0]).reshape(-1)

    @classmethod
    def _time_vq06_run(cls, session, mel: np.ndarray) -> float:
        t = time.perf_counter()
        cls._run_vq06(session, mel)
        return time.perf_counter() - t

    # -- public API -----------------------------------------------------------------------------------

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
            transcript = self.encode_vq02(audio_16k, transcribe=True).transcript
            entry["transcript"] = transcript
            self.cache.update(key, {"transcript": transcript})
            log.info("tokenizer: transcript added to cached entry in %.3f s", time.perf_counter() - t)
        if entry is None:
            t = time.perf_counter()
            vq02 = self.encode_vq02(audio_16k, transcribe=transcribe)
            t02 = time.perf_counter() - t
            vq06 = self.encode_vq06(audio_16k)
            encode_s = time.perf_counter() - t
            entry = {"vq02": vq02.codes, "vq06": vq06, "encode_seconds": round(encode_s, 6),
                     "created": time.time(), "transcript": vq02.transcript}
            if self.cache is not None:
                self.cache.put(key, entry)
            log.info("tokenizer: encoded %.2f s clip: prep %.1f ms, vq02 %.3f s (%d), vq06 %.3f s (%d)%s",
                     len(audio_16k) / TOKENIZER_SAMPLE_RATE, t_prep * 1e3, t02, len(vq02.codes),
                     encode_s - t02, len(vq06), ", with transcript" if transcribe else "")
        vq02_codes, vq06_codes = [int(c) for c in entry["vq02"]], [int(c) for c in entry["vq06"]]
        llm_ids = interleave_llm_ids(vq02_codes, vq06_codes)
        elapsed = time.perf_counter() - t0
        if from_cache:
            log.info("tokenizer: cache hit in %.2f ms (saved %.3f s)", elapsed * 1e3,
                     entry.get("encode_seconds", 0))
        return TokenizedAudio(
            vq02=vq02_codes, vq06=vq06_codes, llm_ids=llm_ids,
            token_str="".join(f"<audio_{i - AUDIO_ID_OFFSET}>" for i in llm_ids),
            cache_key=key, from_cache=from_cache, encode_seconds=float(entry.get("encode_seconds", 0.0)),
            elapsed_seconds=elapsed, transcript=entry.get("transcript"), _audio_16k=audio_16k,
            cache_entry=entry, _prepare=lambda: self._prepare(audio, sample_rate, use_alias=False)[1])

    def prepare(self, audio: np.ndarray, sample_rate: int) -> tuple[str, np.ndarray]:
        """(cache key, prepared 16 kHz clip) of an input, as ``encode`` computes them."""
        return self._prepare(audio, sample_rate, use_alias=False)

    def encode_vq02(self, audio_16k: np.ndarray, transcribe: bool = False,
                    batched: bool = True) -> Vq02Result:
        """vq02 codes of a prepared 16 kHz clip with upstream's streaming schedule (and the transcript).

        ``batched`` runs the streaming encoder layer by layer over all chunks at once (same math, one
        pass over the weights per layer instead of per 240 ms chunk); False runs FunASR's per-chunk
        ``encode_chunk`` loop as upstream does. Both give the same frames to float rounding.
        """
        x = torch.tensor(np.asarray(audio_16k, dtype=np.float32))  # a copy: inputs may be read-only
        with torch.inference_mode():
            cache: dict = {}
            self.model.init_cache(cache, chunk_size=CHUNK_SIZE, encoder_chunk_look_back=ENCODER_LOOK_BACK,
                                  decoder_chunk_look_back=DECODER_LOOK_BACK,
                                  encoder_conf=self.config["encoder_conf"],
                                  frontend_conf=self.config["frontend_conf"])
            chunks = self._frontend_chunks(x, cache["frontend"])
            feats = [speech[0].clone() for speech, _, _ in chunks]  # the encoder scales its input in place
            if batched and self._can_batch(chunks):
                encs = self._encode_batched([speech for speech, _, _ in chunks], cache["encoder"])
            else:
                encs = [self.model.encode_chunk(speech.to(self.device), lens, cache=cache, is_final=final)[0]
                        for speech, lens, final in chunks]
            outs = [enc[:, -int(lens[0]):] for enc, (_, lens, _) in zip(encs, chunks, strict=True)]
            token_ids: list[int] = []
            if transcribe:  # the CIF predictor and decoder keep their own stream state: run them after
                for enc, (_, _, final) in zip(encs, chunks, strict=True):
                    token_ids += self._decode_chunk(enc, cache, final)
                if not (chunks and chunks[-1][2]):
                    token_ids += self._decode_tail(cache)
            if outs:
                enc_out = torch.cat(outs, dim=1)[0]
                codes = torch.cdist(enc_out, self.centroids).argmin(dim=1).cpu().tolist()
                enc_np = enc_out.float().cpu().numpy()
                feats_np = torch.cat(feats, dim=0).numpy()
            else:
                codes, enc_np = [], np.zeros((0, self.enc_dim), np.float32)
                feats_np = np.zeros((0, self.frontend.output_size()), np.float32)
        transcript = None
        if transcribe:
            pieces = [self.token_list[t] for t in token_ids if 0 <= t < len(self.token_list)]
            transcript = join_asr_tokens(pieces)
        return Vq02Result(codes=codes, enc_out=enc_np, lfr_feats=feats_np, transcript=transcript)

    def _frontend_chunks(self, x: torch.Tensor, frontend_cache: dict) -> list[tuple]:
        """Upstream's chunk loop over the fbank frontend: [(speech (1, n, 560), lens, is_final)]."""
        from funasr.utils.load_utils import extract_fbank

        chunks = []
        n = len(x) // CHUNK_STRIDE_SAMPLES + 1
        for i in range(n):
            is_final = i == n - 1
            xi = x[i * CHUNK_STRIDE_SAMPLES:(i + 1) * CHUNK_STRIDE_SAMPLES]
            # upstream's two end-of-audio rules: no flush on an exact multiple of the stride, and a
            # final chunk whose fbank frames cannot fill one LFR window emits nothing
            if is_final and (len(xi) == 0 or self._final_chunk_too_short(len(xi), frontend_cache)):
                break
            try:
                speech, lens = extract_fbank([xi], data_type="sound", frontend=self.frontend,
                                             cache=frontend_cache, is_final=is_final)
            except Exception:
                if is_final and len(xi) < MIN_FINAL_SAMPLES:
                    break
                raise
            if len(speech) == 0 and is_final:
                break
            chunks.append((speech, lens, is_final))
        return chunks

    @staticmethod
    def _can_batch(chunks: list[tuple]) -> bool:
        """Batching needs equal non-final chunks (always so: 3840 samples give 4 LFR frames)."""
        if len(chunks) < 2 or ENCODER_LOOK_BACK <= 0:
            return False
        sizes = {speech.shape[1] for speech, _, _ in chunks[:-1]}
        return len(sizes) == 1

    def _encode_batched(self, speech_chunks: list[torch.Tensor], stream: dict) -> list[torch.Tensor]:
        """SANMEncoderChunkOpt over all chunks at once, layer by layer; per-chunk outputs (1, T, D).

        Chunk j at layer l attends to its own frames and to the look-back cache: the first
        ``T - chunk_size[2]`` keys/values of the previous chunks at the same layer (last
        ``look_back * chunk_size[1]`` frames). That cache only depends on layer l's input, so every
        chunk of a layer can run in one batch with a mask for the chunks that have less history. A
        final chunk of another length runs after the batch with the cache the batch leaves. ``stream``
        (the encoder stream cache) ends as FunASR's own loop leaves it, for the ASR tail step.
        """
        enc = self.model.encoder
        scale = enc.output_size() ** 0.5
        xs = []
        for speech in speech_chunks:  # positions and overlap frames: cheap, sequential, FunASR's code
            x = speech.to(self.device) * scale
            x = enc.embed(x, stream) if enc.embed is not None else x
            xs.append(enc._add_overlap_chunk(x, stream))
        n_body = len(xs) if xs[-1].shape[1] == xs[0].shape[1] else len(xs) - 1
        body = torch.cat(xs[:n_body], dim=0)
        last = xs[-1] if n_body < len(xs) else None
        look = stream["encoder_chunk_look_back"] * stream["chunk_size"][1]
        right = stream["chunk_size"][2]
        layer_caches = []
        for layer in list(enc.encoders0) + list(enc.encoders):
            body, layer_cache = _batched_sanm_layer(layer, body, look, right)
            if last is not None:
                last, layer_cache = layer.forward_chunk(last, layer_cache, stream["chunk_size"],
                                                        stream["encoder_chunk_look_back"])
            layer_caches.append(layer_cache)
        stream["opt"] = layer_caches
        if enc.normalize_before:
            body = enc.after_norm(body)
            last = enc.after_norm(last) if last is not None else None
        outs = list(body.split(1, dim=0))
        return outs + ([last] if last is not None else [])

    def log_mel_chunks(self, audio_16k: np.ndarray) -> list[np.ndarray]:
        """The (128, frames) vq06 features of each 30 s chunk of a prepared clip."""
        return [whisper_log_mel(c) for c in vq06_chunks(audio_16k)]

    def encode_vq06(self, audio_16k: np.ndarray, session=None) -> list[int]:
        """vq06 codes of a prepared 16 kHz clip: ONNX tokenizer per 30 s chunk, flattened (~25 per s).

        ``session`` overrides the tokenizer's own (from ``make_onnx_session``; for comparisons).
        """
        session = session or self._ort_session
        codes: list[int] = []
        for chunk in vq06_chunks(audio_16k):
            chunk_codes = self._run_vq06(session, whisper_log_mel(chunk)[None]).tolist()
            expected = len(chunk) / TOKENIZER_SAMPLE_RATE * VQ06_TOKENS_PER_SECOND
            if abs(len(chunk_codes) - expected) > 2:  # upstream asserts this; a warning is enough here
                log.warning("tokenizer: vq06 gave %d codes for %.2f s (expected about %.0f)",
                            len(chunk_codes), len(chunk) / TOKENIZER_SAMPLE_RATE, expected)
            codes += [int(c) for c in chunk_codes]
        return codes

    # -- internals ------------------------------------------------------------------------------------

    def _prepare(self, audio: np.ndarray, sample_rate: int,
                 use_alias: bool = True) -> tuple[str, np.ndarray | None]:
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
        with self._memo_lock:
            hit = self._memo.get(raw_id)
            if hit is not None and (use_alias or hit[1] is not None):
                self._memo.move_to_end(raw_id)
                return hit
        alias = hashlib.sha256(raw_id + self.fingerprint.encode()).hexdigest()
        if use_alias and self.cache is not None:
            key = self.cache.alias_get(alias)
            if key is not None:
                with self._memo_lock:
                    self._memo[raw_id] = (key, None)
                return key, None
        check_samples(raw, sample_rate)
        audio_16k = prepare_for_tokenizer(prompt_prelude(raw, int(sample_rate)), int(sample_rate))
        if not np.any(audio_16k):
            raise AudioInputError("the reference audio is silent after preparation; "
                                  "upload a clip with speech")
        audio_16k.setflags(write=False)  # shared with the memo and every result
        key = prompt_key(audio_16k, self.fingerprint)
        with self._memo_lock:
            self._memo[raw_id] = (key, audio_16k)
            while len(self._memo) > RAW_MEMO_ENTRIES:
                self._memo.popitem(last=False)
        if self.cache is not None:
            self.cache.alias_put(alias, key)
        return key, audio_16k

    def _final_chunk_too_short(self, n_samples: int, frontend_cache: dict) -> bool:
        """Upstream's frontend emits nothing for a final chunk with 0 < frames and frames + splice < lfr_m."""
        pending = frontend_cache.get("input_cache")
        total = n_samples + (pending.shape[-1] if pending is not None else 0)
        frames = (total - FRAME_SAMPLES) // HOP_SAMPLES + 1 if total >= FRAME_SAMPLES else 0
        splice = frontend_cache.get("lfr_splice_cache")
        splice_len = len(splice[0]) if splice else (self.lfr_m - 1) // 2
        return 0 < frames and frames + splice_len < self.lfr_m

    def _decode_chunk(self, enc: torch.Tensor, cache: dict, is_final: bool) -> list[int]:
        """Greedy Paraformer ASR on one encoder chunk (CIF predictor + SANM decoder, streaming caches)."""
        enc_lens = torch.tensor([enc.shape[1]])
        pred = self.model.calc_predictor_chunk(enc, enc_lens, cache=cache, is_final=is_final)
        acoustic, n_tokens = pred[0], pred[1].round().long()
        if int(n_tokens.max()) < 1:
            return []
        dec, _ = self.model.cal_decoder_with_predictor_chunk(enc, enc_lens, acoustic, n_tokens, cache=cache)
        ids = dec[0, :int(n_tokens[0])].argmax(dim=-1).tolist()
        model = self.model
        return [t for t in ids if t not in (model.blank_id, model.sos, model.eos)]

    def _decode_tail(self, cache: dict) -> list[int]:
        """Flush the ASR when upstream's schedule dropped the final chunk: FunASR's tail-chunk step."""
        cache["encoder"]["tail_chunk"] = True
        speech = cache["encoder"]["feats"]
        enc, _ = self.model.encode_chunk(speech.to(self.device), torch.tensor([speech.shape[1]]), cache=cache,
                                         is_final=True)
        return self._decode_chunk(enc, cache, True)


def _batched_sanm_layer(layer: torch.nn.Module, x: torch.Tensor, look: int,
                        right: int) -> tuple[torch.Tensor, dict]:
    """One EncoderLayerSANM of the streaming encoder for N equal chunks at once.

    ``x`` is (N, T, in) for chunks 0..N-1 in order. Returns the (N, T, D) output and the layer's
    look-back cache after chunk N-1 ({"k", "v"}: (1, heads, frames, d_k)), as FunASR's
    ``MultiHeadedAttentionSANM.forward_chunk`` would hold it.
    """
    attn = layer.self_attn
    residual = x
    h = layer.norm1(x) if layer.normalize_before else x
    q_h, k_h, v_h, v = attn.forward_qkv(h)  # (N, heads, T, d_k) and v (N, T, D)
    n, heads, t, d_k = k_h.shape
    stride = t - right  # frames each chunk adds to the cache
    reach = math.ceil(look / stride)  # previous chunks inside the look-back window

    def history(s: torch.Tensor) -> torch.Tensor:
        """(N, heads, look, d_k): for chunk j, the last `look` cached frames of chunks j-reach..j-1."""
        padded = torch.cat([s.new_zeros((reach,) + tuple(s.shape[1:])), s], dim=0)
        windows = torch.stack([padded[i:i + n] for i in range(reach)], dim=2)  # (N, heads, reach, S, d_k)
        return windows.reshape(n, heads, reach * stride, d_k)[:, :, -look:]

    k_stride, v_stride = k_h[:, :, :stride], v_h[:, :, :stride]
    keys = torch.cat([history(k_stride), k_h], dim=2)
    values = torch.cat([history(v_stride), v_h], dim=2)
    have = torch.clamp(torch.arange(n, device=x.device) * stride, max=look)  # cached frames per chunk
    cached_ok = torch.arange(look, device=x.device)[None, :] >= (look - have)[:, None]
    mask = torch.cat([cached_ok, torch.ones(n, t, dtype=torch.bool, device=x.device)], dim=1)[:, None, :]
    scores = torch.matmul(q_h * attn.d_k ** (-0.5), keys.transpose(-2, -1))
    out = attn.forward_attention(values, scores, mask) + attn.forward_fsmn(v, None)
    x = residual + out if layer.in_size == layer.size else out
    if not layer.normalize_before:
        x = layer.norm1(x)
    residual = x
    x = residual + layer.feed_forward(layer.norm2(x) if layer.normalize_before else x)
    if not layer.normalize_before:
        x = layer.norm2(x)
    tail = slice(max(0, n - reach), n)
    cache = {"k": k_stride[tail].permute(1, 0, 2, 3).reshape(1, heads, -1, d_k)[:, :, -look:],
             "v": v_stride[tail].permute(1, 0, 2, 3).reshape(1, heads, -1, d_k)[:, :, -look:]}
    return x, cache
