"""The bounded-memory resampler every stage uses: torchaudio's windowed sinc, at any pair of rates.

``resample`` reproduces ``torchaudio.functional.resample`` (windowed sinc, Hann window,
lowpass_filter_width 6, rolloff 0.99) because the tokenizer's codes are sensitive to it:
soxr or librosa's default resampler flips 10-16 % of the vq02 codes. Common rate pairs run
torchaudio's own polyphase conv1d; odd ones evaluate the same weights per output phase in bounded memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lru import LRU

SINC_WIDTH = 6  # lowpass_filter_width of torchaudio's default Resample
SINC_ROLLOFF = 0.99
# torchaudio's polyphase kernel has shape (new, 2*width + orig) for the gcd-reduced rates: fine for the
# common rates (44.1 kHz -> 16 kHz is 160 x 475), but 16001 Hz -> 16 kHz makes it 16000 x 16015 (10 GB
# to build). Past these bounds the same windowed sinc is evaluated per output phase over only the
# 2*width + 1 input samples it can reach (the rest of each kernel row is exactly zero in float32).
POLYPHASE_MAX_TAPS = 1024  # 2*width + orig; the common pairs to and from 16/24 kHz stay under ~720
POLYPHASE_MAX_KERNEL_BYTES = 4 << 20  # new * (2*width + orig) float32
KERNEL_CACHE_BYTES = 64 << 20  # every cached kernel together (a phase kernel is at most ~19 MB up to 384 kHz)
RESAMPLE_BLOCK_ELEMENTS = 1 << 20  # float32 elements per working buffer of the phase-wise path (4 MB)

_KERNELS: LRU[tuple[str, int, int], torch.Tensor] = LRU(
    64, max_bytes=KERNEL_CACHE_BYTES, size_of=lambda kernel: kernel.nbytes
)


def _kernel_geometry(orig: int, new: int) -> tuple[float, int]:
    """(cutoff ``base`` in reduced-rate units, half-width in input samples), as torchaudio computes them."""
    base = min(orig, new) * SINC_ROLLOFF
    return base, math.ceil(SINC_WIDTH * orig / base)


def _windowed_sinc(t: torch.Tensor, base: float, orig: int) -> torch.Tensor:
    """torchaudio's Hann-windowed sinc at offsets ``t`` (float64, in input periods of the reduced rate).

    Each element is ``sinc(t * base) * hann(t * base) * base / orig`` with the argument clamped to
    +-6 zero crossings; the operations and their order are torchaudio's, so both resampling paths
    build the same float64 weights.
    """
    t = (t * base).clamp_(-SINC_WIDTH, SINC_WIDTH)
    window = (t * math.pi).div_(SINC_WIDTH).div_(2).cos_().pow_(2)  # in place: same values, fewer buffers
    t.mul_(math.pi)
    kernel = torch.sin(t).div_(t).masked_fill_(t == 0, 1.0)
    return kernel.mul_(window).mul_(base / orig)


def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Polyphase kernel of shape (new, 1, 2*width + orig) float32 for rates already divided by gcd.

    Built in float64 and cast to float32, as torchaudio's ``Resample`` transform builds it; cached
    (by bytes, with the phase kernels) because the conformance-critical rates repeat.
    """
    base, width = _kernel_geometry(orig, new)
    key = ("polyphase", orig, new)
    kernel = _KERNELS.get(key)
    if kernel is None:
        idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
        # torchaudio divides an integer arange here, which yields float32 before the float64 sum
        t = torch.arange(0, -new, -1)[:, None, None] / new + idx
        kernel = _windowed_sinc(t, base, orig).to(torch.float32)
        _KERNELS.put(key, kernel)
    return kernel, width


def _phase_weights(orig: int, new: int, first: int, last: int) -> torch.Tensor:
    """Weights of output phases ``first`` .. ``last - 1``: float32 (last - first, 2*width + 1).

    Row k weighs input samples ``floor(k * orig / new) - width`` ... ``+ width`` of period 0 (input
    sample n, output sample k): the same float64 values torchaudio's kernel holds at those taps.
    """
    base, width = _kernel_geometry(orig, new)
    k = torch.arange(first, last)
    rel = ((k * orig) // new - width)[:, None] + torch.arange(2 * width + 1)
    # -k / new in float32, as torchaudio's ``arange(0, -new, -1) / new``, then the float64 sum
    t = (-k)[:, None] / new + rel.to(torch.float64) / orig
    return _windowed_sinc(t, base, orig).to(torch.float32)


def _phase_kernel(orig: int, new: int) -> torch.Tensor | None:
    """All ``new`` rows of ``_phase_weights`` (new, 2*width + 1) float32, cached; None past half the cache."""
    _, width = _kernel_geometry(orig, new)
    taps = 2 * width + 1
    if new * taps * 4 > KERNEL_CACHE_BYTES // 2:
        return None  # only for rates far outside 1-384 kHz: the caller builds each block's rows itself
    key = ("phase", orig, new)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = torch.empty(new, taps, dtype=torch.float32)
        step = max(1, RESAMPLE_BLOCK_ELEMENTS // taps)  # bounds the float64 temporaries
        for first in range(0, new, step):
            kernel[first : first + step] = _phase_weights(orig, new, first, min(new, first + step))
        _KERNELS.put(key, kernel)
    return kernel


def _resample_polyphase(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """torchaudio's own algorithm: a strided conv1d with the (new, 1, 2*width + orig) kernel.

    ``x`` is float32 (n_wavs, samples); returns (n_wavs, new * (samples // orig + 1)) before trimming.
    """
    kernel, width = _sinc_kernel(orig, new)
    n_wavs = x.shape[0]
    x = torch.nn.functional.pad(x, (width, width + orig))
    y = torch.nn.functional.conv1d(x[:, None], kernel, stride=orig)
    return y.transpose(1, 2).reshape(n_wavs, -1)


def _resample_phasewise(x: np.ndarray, orig: int, new: int, target: int) -> np.ndarray:
    """The same windowed sinc evaluated per output phase over its 2*width + 1 reachable taps.

    ``x`` is float32 (n_wavs, samples); returns float32 (n_wavs, ``target``). Output ``j = i*new + k``
    is centred on input sample ``c = floor(j * orig / new) = i*orig + floor(k * orig / new)`` and reads
    ``x[c - width : c + width + 1]`` (zero outside the clip), weighted by row k of the phase kernel.
    Work is done in blocks of phases x periods of at most ``RESAMPLE_BLOCK_ELEMENTS`` taps, so the
    extra memory is the padded copy of ``x``, the kernel and a few 4 MB buffers.
    """
    n_wavs, length = x.shape
    if target == 0:
        return np.zeros((n_wavs, 0), dtype=np.float32)
    _, width = _kernel_geometry(orig, new)
    taps = 2 * width + 1
    periods = -(-target // new)
    centre = (np.arange(new, dtype=np.int64) * orig) // new  # floor(k * orig / new) for each phase k
    last = (periods - 1) * orig + int(centre[-1]) + width  # the last input sample any output reads
    padded = np.zeros((n_wavs, width + max(length, last + 1)), dtype=np.float32)
    padded[:, width : width + length] = x
    # row r of this view is padded[r : r + taps], i.e. x[r - width : r + width + 1]: output j reads row c
    rows = np.lib.stride_tricks.sliding_window_view(padded, taps, axis=-1)
    # a clip shorter than one period needs only its own phases: weigh those, keep nothing
    phases = new if periods > 1 else target
    kernel = _phase_kernel(orig, new) if periods > 1 else None
    out = np.zeros((n_wavs, periods, new), dtype=np.float32)
    per_output = n_wavs * taps
    phase_step = min(phases, max(1, RESAMPLE_BLOCK_ELEMENTS // (per_output * periods)))
    period_step = min(periods, max(1, RESAMPLE_BLOCK_ELEMENTS // (per_output * phase_step)))
    for k0 in range(0, phases, phase_step):
        k1 = min(phases, k0 + phase_step)
        weights = (kernel[k0:k1] if kernel is not None else _phase_weights(orig, new, k0, k1)).numpy()
        for i0 in range(0, periods, period_step):
            i1 = min(periods, i0 + period_step)
            index = np.arange(i0, i1, dtype=np.int64)[:, None] * orig + centre[None, k0:k1]
            out[:, i0:i1, k0:k1] = np.einsum("cikt,kt->cik", rows[:, index], weights)
    return out.reshape(n_wavs, -1)[:, :target]


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample the last axis of ``audio`` from ``orig_sr`` to ``new_sr`` Hz (float32 out).

    Output length is ``ceil(len * new_sr / orig_sr)``, exactly as torchaudio computes it. Rate pairs
    whose gcd-reduced polyphase kernel is small (every common rate: 8, 11.025, 16, 22.05, 24, 32,
    44.1, 48, 88.2, 96 ... 384 kHz to 16 or 24 kHz) run torchaudio's own conv1d, bit for bit; odd
    rates (16001 Hz, 22051 Hz ...) evaluate the same weights per output phase, which matches
    torchaudio to float32 rounding (about 1e-7) in bounded memory: for 1-384 kHz to 16 or 24 kHz,
    under 100 MB beyond the input and output for any rates from 1 to 384 kHz to 16 or 24 kHz.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == new_sr:
        return audio.copy()
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    shape = audio.shape
    flat = np.ascontiguousarray(audio.reshape(math.prod(shape[:-1]), shape[-1]))  # (n_wavs, samples)
    length = flat.shape[1]
    target = math.ceil(new * length / orig)
    _, width = _kernel_geometry(orig, new)
    span = 2 * width + orig
    if span <= POLYPHASE_MAX_TAPS and new * span * 4 <= POLYPHASE_MAX_KERNEL_BYTES:
        with torch.inference_mode():
            y = _resample_polyphase(torch.from_numpy(flat), orig, new)[:, :target].numpy()
    else:
        with torch.inference_mode():
            y = _resample_phasewise(flat, orig, new, target)
    return y.reshape(shape[:-1] + (-1,))
