"""Log-mel of the 24 kHz reference: the flow's prompt condition (Matcha-TTS ``mel_spectrogram``).

Reflect pad (n_fft - hop)/2 on both sides, STFT without centring, periodic Hann window,
magnitude sqrt(re^2 + im^2 + 1e-9), librosa Slaney mel filters, natural log clamped at 1e-5.
One frame per ``hop_size`` samples (480 at 24 kHz = 50 Hz). The settings come from
``mel_conf`` in cosyvoice.yaml; ``MelConfig`` holds the released values as defaults.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from audio_prep import VOCODER_SAMPLE_RATE

MAGNITUDE_EPS = 1e-9  # inside the sqrt of the STFT power
LOG_CLAMP = 1e-5  # floor before the log


@dataclass(frozen=True)
class MelConfig:
    """``mel_conf`` of cosyvoice.yaml (frames of ``hop_size`` samples at ``sampling_rate`` Hz)."""

    num_mels: int = 80
    n_fft: int = 1920
    hop_size: int = 480
    win_size: int = 1920
    sampling_rate: int = VOCODER_SAMPLE_RATE
    fmin: float = 0
    fmax: float | None = 8000

    @classmethod
    def from_mapping(cls, conf: dict) -> MelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(conf) - known)
        if unknown:
            raise ValueError(
                f"mel_conf in cosyvoice.yaml has unknown keys {unknown}; expected {sorted(known)}"
            )
        return cls(**conf)


@functools.lru_cache(maxsize=8)
def mel_filters(conf: MelConfig) -> torch.Tensor:
    """Slaney mel filter bank (num_mels, n_fft // 2 + 1) float32, from librosa (cached)."""
    from librosa.filters import mel as librosa_mel  # heavy import, only when a mel is first needed

    basis = librosa_mel(
        sr=conf.sampling_rate, n_fft=conf.n_fft, n_mels=conf.num_mels, fmin=conf.fmin, fmax=conf.fmax
    )
    return torch.from_numpy(basis).float()


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, conf: MelConfig = MelConfig()) -> torch.Tensor:
    """Audio (samples,) or (B, samples) float at ``conf.sampling_rate`` -> log mel (B, num_mels, frames).

    frames = samples // hop_size for whole multiples. Raises ValueError for clips too short to pad.
    """
    y = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio).float()
    if y.dim() == 1:
        y = y.unsqueeze(0)
    pad = int((conf.n_fft - conf.hop_size) / 2)
    if y.size(-1) <= pad:
        raise ValueError(
            f"reference audio too short for the mel: {y.size(-1)} samples at {conf.sampling_rate} Hz; "
            f"need more than {pad}"
        )
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(conf.win_size, device=y.device)
    spec = torch.stft(
        y,
        conf.n_fft,
        hop_length=conf.hop_size,
        win_length=conf.win_size,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + MAGNITUDE_EPS)
    spec = torch.matmul(mel_filters(conf).to(y.device), spec)
    return torch.log(torch.clamp(spec, min=LOG_CLAMP))
