"""Reference-audio preparation shared by every stage: loading, mono, resampling.

Audio constants are named once here. Functions take numpy arrays (float32, samples) and return
arrays. The resampler reproduces ``torchaudio.functional.resample`` (windowed sinc, Hann window,
lowpass_filter_width 6, rolloff 0.99) because the tokenizer's codes are sensitive to it:
soxr or librosa's default resampler flips 10-16 % of the vq02 codes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

TOKENIZER_SAMPLE_RATE = 16000  # Hz, both tokenizer streams and the CAM++ fbank
VOCODER_SAMPLE_RATE = 24000  # Hz, the vocoder's output and its prompt mel

SINC_WIDTH = 6  # lowpass_filter_width of torchaudio's default Resample
SINC_ROLLOFF = 0.99


@functools.lru_cache(maxsize=32)
def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Hann-windowed sinc kernel of shape (new, 1, 2*width + orig) for rates already divided by gcd.

    Built in float64 and cast to float32, as torchaudio's ``Resample`` transform builds it.
    """
    base = min(orig, new) * SINC_ROLLOFF
    width = math.ceil(SINC_WIDTH * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    # torchaudio divides an integer arange here, which yields float32 before the float64 sum
    t = torch.arange(0, -new, -1)[:, None, None] / new + idx
    t = (t * base).clamp_(-SINC_WIDTH, SINC_WIDTH)
    window = torch.cos(t * math.pi / SINC_WIDTH / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), t.sin() / t)
    kernel = kernel * window * (base / orig)
    return kernel.to(torch.float32), width


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample the last axis of ``audio`` from ``orig_sr`` to ``new_sr`` Hz (float32 out).

    Output length is ``ceil(len * new_sr / orig_sr)``, exactly as torchaudio computes it.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == new_sr:
        return audio.copy()
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, width = _sinc_kernel(orig, new)
    shape = audio.shape
    x = torch.from_numpy(np.ascontiguousarray(audio.reshape(-1, shape[-1])))
    n_wavs, length = x.shape
    x = torch.nn.functional.pad(x, (width, width + orig))
    with torch.inference_mode():
        y = torch.nn.functional.conv1d(x[:, None], kernel, stride=orig)
    y = y.transpose(1, 2).reshape(n_wavs, -1)
    target = math.ceil(new * length / orig)
    return y[:, :target].reshape(shape[:-1] + (-1,)).numpy()
