"""Speaker embedding of the reference: CAM++ (``campplus.onnx``) on Kaldi fbank of 16 kHz audio.

As CosyVoice's frontend: 80-bin Kaldi fbank (25 ms frames, 10 ms shift, Povey window, dither 0)
of the 16 kHz waveform in [-1, 1] (not scaled to int16), minus its per-utterance mean, fed as
(1, frames, 80) to the ONNX model; the (1, 192) output is flattened.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import kaldi_fbank as kaldi
from audio_prep import SPEAKER_SAMPLE_RATE
from errors import AudioInputError, ModelFilesError

log = logging.getLogger(__name__)

FBANK_BINS = 80
MIN_SAMPLES = 400  # one 25 ms frame at 16 kHz


def kaldi_fbank(audio_16k: np.ndarray) -> np.ndarray:
    """(samples,) float32 at 16 kHz -> (frames, 80) float32 log mel fbank, Kaldi defaults with dither 0.

    torchaudio.compliance.kaldi.fbank's numbers (via :mod:`kaldi_fbank`), as CosyVoice computes them.
    """
    audio_16k = np.ascontiguousarray(np.asarray(audio_16k, dtype=np.float32).reshape(-1))
    if audio_16k.size < MIN_SAMPLES:
        raise AudioInputError(
            f"the clip is too short for the speaker embedding: {audio_16k.size} samples at 16 kHz, "
            f"need at least {MIN_SAMPLES}; use a longer clip"
        )
    # CosyVoice's frontend: kaldi.fbank(speech, num_mel_bins=80, dither=0, sample_frequency=16000)
    feat = kaldi.fbank(
        torch.from_numpy(audio_16k), num_mel_bins=FBANK_BINS, dither=0.0, sample_frequency=SPEAKER_SAMPLE_RATE
    )
    return feat.numpy()


class SpeakerEncoder:
    """CAM++ speaker encoder on ONNX Runtime (CPU, as upstream runs it)."""

    def __init__(self, onnx_path: Path, threads: int | None = None):
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ModelFilesError(
                f"speaker model {onnx_path.name} not found in {onnx_path.parent.name}/ (download the "
                "full CosyVoice-300M-25Hz folder of Step-Audio-EditX)"
            )
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several types for a bad file
            raise ModelFilesError(
                f"cannot load {onnx_path.name} ({exc}); the file is damaged, download it again"
            ) from exc
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, audio_16k: np.ndarray) -> np.ndarray:
        """(samples,) float32 at 16 kHz -> (D,) float32 speaker embedding (D = 192 for CAM++)."""
        start = time.perf_counter()
        feat = kaldi_fbank(audio_16k)
        feat = feat - feat.mean(axis=0, keepdims=True)
        out = self.session.run(None, {self.input_name: feat[None].astype(np.float32)})[0]
        log.debug("speaker embedding: %d frames in %.3f s", feat.shape[0], time.perf_counter() - start)
        return np.asarray(out, dtype=np.float32).reshape(-1)
