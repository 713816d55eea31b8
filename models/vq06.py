"""vq06, the semantic token stream (25 Hz, 4096 codes): whisper-style log-mel + the ONNX tokenizer.

    vq06 = Vq06Tokenizer(onnx_path, device, ort_threads)
    codes = vq06.encode(audio_16k)           # about 25 codes per second

The prepared 16 kHz clip is cut into chunks of at most 30 s (a remainder under 480 samples is
skipped, as upstream), each turned into the 128-bin log-mel of ``whisper.log_mel_spectrogram`` and
fed to ``speech_tokenizer_v1.onnx`` (inputs: float32 feats (1, 128, T) and int32 lengths (1,)).
ONNX Runtime is tuned here: all graph optimisations, one intra-op thread per physical core, the
faster execution mode timed at load, and the CUDA execution provider first when on a GPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from audio_prep import TOKENIZER_SAMPLE_RATE
from errors import ModelFilesError
from models.audio_tokens import VQ06_RATE_HZ

log = logging.getLogger(__name__)

MEL_N_FFT, MEL_HOP, MEL_BINS = 400, 160, 128
MEL_LOG_FLOOR = 1e-10
MEL_DYNAMIC_RANGE = 8.0  # log10 units kept below each chunk's maximum
VQ06_CHUNK_SECONDS = 30
VQ06_CHUNK_SAMPLES = VQ06_CHUNK_SECONDS * TOKENIZER_SAMPLE_RATE
VQ06_MIN_CHUNK_SAMPLES = 480
WARMUP_ROUNDS = 3  # timed runs per ORT execution mode at load
ORT_OPTIONS = ("tuned", "default", "upstream")


_MEL_FILTERS: dict[str, torch.Tensor] = {}


def whisper_log_mel(audio_16k: np.ndarray) -> np.ndarray:
    """128-bin log-mel of a 16 kHz clip exactly as ``whisper.log_mel_spectrogram``: (128, frames) float32.

    Hann window 400, hop 160, |STFT|^2 without the last frame, Slaney mel filters (librosa), log10
    floored at 1e-10, clamped to max - 8 over this clip, then (x + 4) / 4. ``frames = len // 160``.
    """
    if "f" not in _MEL_FILTERS:
        import librosa

        _MEL_FILTERS["f"] = torch.from_numpy(
            librosa.filters.mel(sr=TOKENIZER_SAMPLE_RATE, n_fft=MEL_N_FFT, n_mels=MEL_BINS)
        )
    x = torch.tensor(np.asarray(audio_16k, dtype=np.float32))  # a copy: inputs may be read-only
    with torch.inference_mode():
        stft = torch.stft(x, MEL_N_FFT, MEL_HOP, window=torch.hann_window(MEL_N_FFT), return_complex=True)
        power = stft[..., :-1].abs() ** 2
        log_spec = torch.clamp(_MEL_FILTERS["f"] @ power, min=MEL_LOG_FLOOR).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - MEL_DYNAMIC_RANGE)
        return ((log_spec + 4.0) / 4.0).numpy()


def vq06_chunks(audio_16k: np.ndarray) -> list[np.ndarray]:
    """The clip cut into 30 s chunks; a remainder under 480 samples is skipped (upstream split_audio)."""
    chunks = [audio_16k[s : s + VQ06_CHUNK_SAMPLES] for s in range(0, len(audio_16k), VQ06_CHUNK_SAMPLES)]
    return [c for c in chunks if len(c) >= VQ06_MIN_CHUNK_SAMPLES]


class Vq06Tokenizer:
    """``speech_tokenizer_v1.onnx`` in a tuned ONNX Runtime session (``info`` describes it).

    ``ort_options``: "tuned" (default), or for comparisons "default" (ONNX Runtime's untouched
    SessionOptions) and "upstream" (the reference project's: all optimisations, 1 thread).
    """

    def __init__(self, onnx_path: Path, device: torch.device, ort_threads: int, ort_options: str = "tuned"):
        self.path = Path(onnx_path)
        self.device = device
        self.ort_threads = int(ort_threads)
        self.session, self.info = self.make_session(ort_options)

    def make_session(self, options: str = "tuned"):
        """A vq06 ONNX Runtime session and a dict describing it (benchmarks compare the options).

        "tuned": ORT_ENABLE_ALL, ``ort_threads`` intra-op threads, and the faster of the sequential and
        parallel execution modes timed on a 2 s warm-up input. CUDA EP first when the device is CUDA.
        """
        if options not in ("tuned", "default", "upstream"):
            raise ValueError(f"ort_options must be tuned, default or upstream, got {options!r}")
        import onnxruntime as ort

        path = self.path
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
                raise ModelFilesError(
                    f"cannot load {path}: {exc}; the file is truncated or damaged, re-download it"
                ) from exc

        if options != "tuned":
            session = make(None)
            log.debug(
                "tokenizer: ONNX Runtime %s session options, providers %s", options, session.get_providers()
            )
            return session, {"options": options, "providers": session.get_providers()}
        warm = np.zeros(TOKENIZER_SAMPLE_RATE * 2, np.float32)
        warm[::7] = 0.1  # 2 s of a buzz: a short, non-degenerate warm-up input
        mel = whisper_log_mel(warm)[None]
        sessions = {
            "sequential": make(ort.ExecutionMode.ORT_SEQUENTIAL),
            "parallel": make(ort.ExecutionMode.ORT_PARALLEL),
        }
        runs: dict[str, list[float]] = {name: [] for name in sessions}
        for round_ in range(WARMUP_ROUNDS + 1):  # alternate, so a noisy moment hurts both; round 0 is warm-up
            for name, candidate in sessions.items():
                elapsed = self._time_run(candidate, mel)
                if round_:
                    runs[name].append(elapsed)
        timings = {name: min(values) for name, values in runs.items()}
        best = min(timings, key=timings.get)
        session = sessions[best]
        info = {
            "options": "tuned",
            "execution_mode": best,
            "intra_op_threads": self.ort_threads,
            "graph_optimization": "ORT_ENABLE_ALL",
            "providers": session.get_providers(),
            "warmup_ms": {k: round(v * 1e3, 3) for k, v in timings.items()},
        }
        log.debug(
            "tokenizer: ONNX Runtime ORT_ENABLE_ALL, %d intra-op threads, providers %s; execution mode "
            "%s (warm-up on 2 s: sequential %.1f ms, parallel %.1f ms)",
            self.ort_threads,
            session.get_providers(),
            best,
            timings["sequential"] * 1e3,
            timings["parallel"] * 1e3,
        )
        return session, info

    def encode(self, audio_16k: np.ndarray, session=None) -> list[int]:
        """vq06 codes of a prepared 16 kHz clip: ONNX tokenizer per 30 s chunk, flattened (~25 per s).

        ``session`` overrides the tokenizer's own (from ``make_onnx_session``; for comparisons).
        """
        session = session or self.session
        codes: list[int] = []
        for chunk in vq06_chunks(audio_16k):
            chunk_codes = self._run(session, whisper_log_mel(chunk)[None]).tolist()
            expected = len(chunk) / TOKENIZER_SAMPLE_RATE * VQ06_RATE_HZ
            if abs(len(chunk_codes) - expected) > 2:  # upstream asserts this; a warning is enough here
                log.warning(
                    "tokenizer: vq06 gave %d codes for %.2f s (expected about %.0f)",
                    len(chunk_codes),
                    len(chunk) / TOKENIZER_SAMPLE_RATE,
                    expected,
                )
            codes += [int(c) for c in chunk_codes]
        return codes

    # -- internals ------------------------------------------------------------------------------------

    def log_mel_chunks(self, audio_16k: np.ndarray) -> list[np.ndarray]:
        """The (128, frames) vq06 features of each 30 s chunk of a prepared clip."""
        return [whisper_log_mel(c) for c in vq06_chunks(audio_16k)]

    @staticmethod
    def _run(session, mel: np.ndarray) -> np.ndarray:
        """The ONNX tokenizer on one (1, 128, frames) log-mel: its codes, flattened."""
        inputs = session.get_inputs()
        out = session.run(None, {inputs[0].name: mel, inputs[1].name: np.array([mel.shape[2]], np.int32)})
        return np.asarray(out[0]).reshape(-1)

    @classmethod
    def _time_run(cls, session, mel: np.ndarray) -> float:
        t = time.perf_counter()
        cls._run(session, mel)
        return time.perf_counter() - t
