"""Kaldi log mel filterbank (compute-fbank-feats) in torch, as torchaudio.compliance.kaldi.fbank computes it.

torchaudio has no build for our pinned torch, and the kaldi-native-fbank fallback that FunASR uses
instead differs from torchaudio by up to ~6e-4 in the lowest mel bins. Upstream Step-Audio (FunASR's
WavFrontendOnline) and CosyVoice (CAM++ speaker features) both call torchaudio's function, so this
module reproduces it, float32 operation for float32 operation, for the options those callers use.

Pipeline per frame (all in the waveform's float dtype, as torchaudio does):
frames of ``frame_length`` ms every ``frame_shift`` ms (snip_edges: only whole frames) -> optional
Gaussian dither -> subtract the frame mean (DC) -> pre-emphasis ``x[j] - c * x[j-1]`` with ``x[-1] = x[0]``
-> window -> zero-pad to the next power of two -> |rfft|^2 -> HTK-style triangular mel banks on
``mel = 1127 ln(1 + f / 700)`` (a zero column for the Nyquist bin) -> ``log(max(energy, float32 eps))``.
VTLN warping is not implemented (rejected with an error).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

# std::numeric_limits<float>::epsilon(): Kaldi's floor for log energies, whatever the compute dtype
LOG_FLOOR = float(torch.finfo(torch.float32).eps)
MEL_BREAK_HZ = 700.0  # HTK mel scale: mel = MEL_HIGH_Q * ln(1 + f / MEL_BREAK_HZ)
MEL_HIGH_Q = 1127.0
MS = 0.001  # seconds per millisecond, multiplied in the same order as torchaudio so sizes round alike
WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")


def mel_scale(freq_hz: torch.Tensor | float) -> torch.Tensor | float:
    """Hz -> HTK mel (``1127 ln(1 + f/700)``); a Python float stays a float (computed in float64)."""
    if isinstance(freq_hz, torch.Tensor):
        return MEL_HIGH_Q * (1.0 + freq_hz / MEL_BREAK_HZ).log()
    return MEL_HIGH_Q * math.log(1.0 + freq_hz / MEL_BREAK_HZ)


def frame_sizes(
    sample_frequency: float, frame_length: float, frame_shift: float, round_to_power_of_two: bool = True
) -> tuple[int, int, int]:
    """(window_size, window_shift, fft_size) in samples for frame length/shift in milliseconds."""
    window_size = int(sample_frequency * frame_length * MS)
    window_shift = int(sample_frequency * frame_shift * MS)
    fft_size = window_size
    if round_to_power_of_two:
        fft_size = 1 if window_size == 0 else 2 ** (window_size - 1).bit_length()
    return window_size, window_shift, fft_size


def num_frames(num_samples: int, window_size: int, window_shift: int, snip_edges: bool = True) -> int:
    """Number of frames Kaldi emits for ``num_samples`` samples."""
    if snip_edges:
        return 0 if num_samples < window_size else 1 + (num_samples - window_size) // window_shift
    return (num_samples + window_shift // 2) // window_shift


def feature_window(
    window_type: str,
    window_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    blackman_coeff: float = 0.42,
) -> torch.Tensor:
    """(window_size,) analysis window; symmetric (periodic=False) like Kaldi's."""
    if window_type == "hamming":
        return torch.hamming_window(
            window_size, periodic=False, alpha=0.54, beta=0.46, dtype=dtype, device=device
        )
    if window_type == "hanning":
        return torch.hann_window(window_size, periodic=False, dtype=dtype, device=device)
    if window_type == "povey":  # Hann raised to 0.85: reaches zero at both edges
        return torch.hann_window(window_size, periodic=False, dtype=dtype, device=device).pow(0.85)
    if window_type == "rectangular":
        return torch.ones(window_size, dtype=dtype, device=device)
    if window_type == "blackman":
        step = 2 * math.pi / (window_size - 1)
        n = torch.arange(window_size, dtype=dtype, device=device)
        return blackman_coeff - 0.5 * torch.cos(step * n) + (0.5 - blackman_coeff) * torch.cos(2 * step * n)
    raise ValueError(f"unknown window_type {window_type!r}; use one of {', '.join(WINDOW_TYPES)}")


def mel_banks(
    num_mel_bins: int, fft_size: int, sample_frequency: float, low_freq: float = 20.0, high_freq: float = 0.0
) -> torch.Tensor:
    """(num_mel_bins, fft_size // 2 + 1) float32 triangular filters over the power-spectrum bins.

    Band edges are equally spaced in mel between ``low_freq`` and ``high_freq`` (Hz; ``<= 0`` means an
    offset from Nyquist). Built in float32 from float64 scalars exactly as torchaudio builds them, so
    the weights are bit-identical; the Nyquist bin gets weight 0 as in Kaldi.
    """
    if num_mel_bins <= 3:
        raise ValueError(f"num_mel_bins must be at least 4, got {num_mel_bins}")
    if fft_size % 2:
        raise ValueError(f"the FFT size must be even, got {fft_size}; use round_to_power_of_two")
    nyquist = 0.5 * sample_frequency
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(
            f"bad mel band: low_freq {low_freq} Hz, high_freq {high_freq} Hz, "
            f"Nyquist {nyquist} Hz; need 0 <= low < high <= Nyquist"
        )
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
    mel_step = (mel_high - mel_low) / (num_mel_bins + 1)  # +1: the outer bands spill past the edges
    band = torch.arange(num_mel_bins, dtype=torch.float32).unsqueeze(1)  # (bins, 1)
    left = mel_low + band * mel_step
    center = mel_low + (band + 1.0) * mel_step
    right = mel_low + (band + 2.0) * mel_step
    bin_hz = sample_frequency / fft_size
    mel = mel_scale(bin_hz * torch.arange(fft_size // 2, dtype=torch.float32)).unsqueeze(0)  # (1, fft/2)
    rising = (mel - left) / (center - left)
    falling = (right - mel) / (right - center)
    weights = torch.clamp_min(torch.minimum(rising, falling), 0.0)
    return torch.nn.functional.pad(weights, (0, 1))  # Nyquist bin: weight 0


@functools.lru_cache(maxsize=16)
def _shared_mel_banks(*args: float) -> torch.Tensor:
    """``mel_banks`` built once per option set: the streaming frontend calls ``fbank`` every 240 ms chunk.

    fbank only reads the result; it is a normal tensor even when first built under inference mode, so
    a later fbank with autograd can still use it.
    """
    with torch.inference_mode(False):
        return mel_banks(*args)


def _mono(waveform: torch.Tensor | np.ndarray, channel: int) -> torch.Tensor:
    """(n,) float tensor from (n,) or (channels, n); more than one channel needs an explicit ``channel``."""
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(waveform)
    if not waveform.is_floating_point():
        raise TypeError(
            f"waveform must be floating point, got {waveform.dtype}; convert it (Kaldi "
            "features expect int16-range values: multiply [-1, 1] audio by 32768)"
        )
    if waveform.dim() == 1:
        if channel > 0:
            raise ValueError(f"channel {channel} requested from a 1-D (mono) waveform")
        return waveform
    if waveform.dim() != 2:
        raise ValueError(
            f"waveform must be (samples,) or (channels, samples), got shape {tuple(waveform.shape)}"
        )
    if channel < 0:
        if waveform.size(0) != 1:
            raise ValueError(f"waveform has {waveform.size(0)} channels; mix it to mono or pass channel=")
        channel = 0
    if channel >= waveform.size(0):
        raise ValueError(f"channel {channel} out of range for {waveform.size(0)} channels")
    return waveform[channel]


def _frames(wave: torch.Tensor, window_size: int, window_shift: int, snip_edges: bool) -> torch.Tensor:
    """(m, window_size) frames; without snip_edges the ends are mirrored (Kaldi: x[-1-i] = x[i])."""
    m = num_frames(wave.numel(), window_size, window_shift, snip_edges)
    if m == 0:
        return wave.new_zeros((0, window_size))
    if not snip_edges:
        pad = window_size // 2 - window_shift // 2
        mirrored = torch.flip(wave, [0])
        wave = torch.cat((mirrored[-pad:], wave, mirrored)) if pad > 0 else torch.cat((wave[-pad:], mirrored))
    return wave.unfold(0, window_size, window_shift)[:m]


def fbank(
    waveform: torch.Tensor | np.ndarray,
    *,
    num_mel_bins: int = 23,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    sample_frequency: float = 16000.0,
    dither: float = 0.0,
    window_type: str = "povey",
    blackman_coeff: float = 0.42,
    preemphasis_coefficient: float = 0.97,
    remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True,
    snip_edges: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    energy_floor: float = 1.0,
    raw_energy: bool = True,
    use_energy: bool = False,
    htk_compat: bool = False,
    use_log_fbank: bool = True,
    use_power: bool = True,
    subtract_mean: bool = False,
    min_duration: float = 0.0,
    channel: int = -1,
    vtln_warp: float = 1.0,
    vtln_low: float = 100.0,
    vtln_high: float = -500.0,
) -> torch.Tensor:
    """Kaldi fbank of a waveform: (samples,) or (1, samples) -> (frames, num_mel_bins [+1 with use_energy]).

    Same keyword arguments, defaults and numbers as ``torchaudio.compliance.kaldi.fbank`` (lengths in
    milliseconds, frequencies in Hz). The waveform is used at the scale given: Kaldi-trained models
    expect int16-range samples, so [-1, 1] audio is usually multiplied by 32768 first. Computed in the
    waveform's float dtype (float32 in, float32 out). ``dither > 0`` adds ``dither * torch.randn`` noise
    per sample from the global torch RNG, as torchaudio does. Differences from torchaudio: input shorter
    than one frame gives an empty (0, D) result instead of an assertion error, several channels without
    an explicit ``channel`` are rejected instead of silently taking the first, and VTLN is not supported.
    """
    if vtln_warp != 1.0:
        raise NotImplementedError(f"VTLN warping (vtln_warp={vtln_warp}) is not implemented; use 1.0")
    del vtln_low, vtln_high  # only meaningful with VTLN warping
    if not 0.0 <= preemphasis_coefficient <= 1.0:
        raise ValueError(f"preemphasis_coefficient must be in [0, 1], got {preemphasis_coefficient}")
    if sample_frequency <= 0:
        raise ValueError(f"sample_frequency must be positive, got {sample_frequency}")
    wave = _mono(waveform, channel)
    dtype, device = wave.dtype, wave.device
    window_size, window_shift, fft_size = frame_sizes(
        sample_frequency, frame_length, frame_shift, round_to_power_of_two
    )
    if window_size < 2 or window_shift < 1:
        raise ValueError(
            f"frame_length {frame_length} ms / frame_shift {frame_shift} ms give {window_size} "
            f"/ {window_shift} samples at {sample_frequency} Hz; need >= 2 / >= 1"
        )
    if fft_size % 2:
        raise ValueError(
            f"the FFT size {fft_size} must be even: use round_to_power_of_two or another frame_length"
        )
    banks = _shared_mel_banks(num_mel_bins, fft_size, sample_frequency, low_freq, high_freq).to(device, dtype)
    width = num_mel_bins + int(use_energy)

    frames = _frames(wave, window_size, window_shift, snip_edges)
    if frames.size(0) == 0 or wave.numel() < min_duration * sample_frequency:
        return torch.zeros((0, width), dtype=dtype, device=device)
    floor = torch.tensor(LOG_FLOOR, dtype=dtype, device=device)
    if dither != 0.0:
        frames = frames + torch.randn(frames.shape, dtype=dtype, device=device) * dither
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if use_energy and raw_energy:
        log_energy = _log_energy(frames, floor, energy_floor)
    if preemphasis_coefficient != 0.0:
        previous = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)  # x[-1] taken as x[0]
        frames = frames - preemphasis_coefficient * previous
    frames = frames * feature_window(window_type, window_size, dtype, device, blackman_coeff).unsqueeze(0)
    if fft_size != window_size:
        frames = torch.nn.functional.pad(frames, (0, fft_size - window_size))
    if use_energy and not raw_energy:
        log_energy = _log_energy(frames, floor, energy_floor)

    spectrum = torch.fft.rfft(frames).abs()  # (m, fft_size // 2 + 1)
    if use_power:
        spectrum = spectrum.pow(2.0)
    feats = torch.mm(spectrum, banks.T)
    if use_log_fbank:
        feats = torch.maximum(feats, floor).log()
    if use_energy:
        energy = log_energy.unsqueeze(1)
        feats = torch.cat((feats, energy) if htk_compat else (energy, feats), dim=1)
    if subtract_mean:
        feats = feats - feats.mean(dim=0, keepdim=True)
    return feats


def _log_energy(frames: torch.Tensor, floor: torch.Tensor, energy_floor: float) -> torch.Tensor:
    """(m,) log of each frame's energy, floored at float32 eps and at log(energy_floor) when > 0."""
    log_energy = torch.maximum(frames.pow(2).sum(1), floor).log()
    if energy_floor == 0.0:
        return log_energy
    return torch.clamp_min(log_energy, math.log(energy_floor))
