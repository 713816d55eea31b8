"""audio_resample.resample: torchaudio's polyphase path for common rates, the phase-wise path for odd ones.

The polyphase path is checked bit-exactly against upstream by tests/test_tokenizer_conformance.py;
these tests pin which rates take it, check the phase-wise path against it, and bound the memory of
odd rates (a 16001 Hz clip used to build a 16000 x 16015 float64 kernel: 10 GB).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import audio_resample
from audio_resample import resample
from lru import LRU

ROOT = Path(__file__).resolve().parents[1]

COMMON_RATES = (
    8000,
    11025,
    12000,
    16000,
    22050,
    24000,
    32000,
    44100,
    48000,
    88200,
    96000,
    176400,
    192000,
    352800,
    384000,
)


@pytest.fixture(autouse=True)
def no_giant_kernels(monkeypatch):
    """Fail, rather than exhaust a shared machine, if a change sends an odd rate to the dense kernel."""
    dense = audio_resample._sinc_kernel

    def guarded(orig: int, new: int):
        _, width = audio_resample._kernel_geometry(orig, new)
        assert new * (2 * width + orig) <= 1 << 24, f"a {new} x {2 * width + orig} kernel would be built"
        return dense(orig, new)

    monkeypatch.setattr(audio_resample, "_sinc_kernel", guarded)


def _signal(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A voiced tone plus white noise (float32, (samples,) or (channels, samples)), peak about 0.6."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(0.2 / k * np.sin(2 * np.pi * f * t + k) for k, f in enumerate((131, 262, 1150, 3300), 1))
    x = np.stack([tone + 0.05 * rng.standard_normal(len(t)) for _ in range(channels)]).astype(np.float32)
    return x[0] if channels == 1 else x


def _force(monkeypatch, path: str) -> None:
    """Send every rate pair down one path: "polyphase" (torchaudio's conv1d) or "phasewise"."""
    big = path == "polyphase"
    monkeypatch.setattr(audio_resample, "POLYPHASE_MAX_TAPS", 1 << 40 if big else 0)
    monkeypatch.setattr(audio_resample, "POLYPHASE_MAX_KERNEL_BYTES", 1 << 40 if big else 0)


@pytest.mark.parametrize("new_sr", [16000, 24000])
def test_common_rates_keep_torchaudios_polyphase_path(monkeypatch, new_sr):
    """Every common rate runs the conformance-checked conv1d, bit for bit."""
    clips = {sr: _signal(0.25, sr, seed=sr) for sr in COMMON_RATES}
    auto = {sr: resample(x, sr, new_sr) for sr, x in clips.items()}
    _force(monkeypatch, "polyphase")
    for sr, x in clips.items():
        np.testing.assert_array_equal(auto[sr], resample(x, sr, new_sr), err_msg=f"{sr} -> {new_sr}")


@pytest.mark.parametrize(
    ("orig", "new"), [(4411, 1600), (1601, 1600), (267, 800), (441, 160), (1, 24), (3, 2)]
)
def test_phase_kernel_holds_every_nonzero_weight_of_torchaudios_kernel(orig, new):
    """Row k of the phase kernel is the non-zero band of row k of torchaudio's kernel, bit for bit."""
    full, width = audio_resample._sinc_kernel(orig, new)
    full = full[:, 0].numpy()
    band = audio_resample._phase_kernel(orig, new).numpy()
    assert band.shape == (new, 2 * width + 1)
    for k in range(new):
        cols = (k * orig) // new + np.arange(2 * width + 1)  # torchaudio's column of each band tap
        inside = (cols >= 0) & (cols < full.shape[1])
        np.testing.assert_array_equal(band[k, inside], full[k, cols[inside]], err_msg=f"phase {k}")
        assert not band[k, ~inside].any()
        rest = np.ones(full.shape[1], bool)
        rest[cols[inside]] = False
        assert not full[k, rest].any(), f"phase {k}: torchaudio weighs a tap outside the band"


@pytest.mark.parametrize(
    ("orig_sr", "new_sr"),
    [
        (16010, 16000),
        (24010, 16000),
        (44110, 16000),
        (8010, 24000),
        (22050, 24000),
        (44100, 16000),
        (16000, 24000),
        (96000, 16000),
    ],
)
@pytest.mark.parametrize("channels", [1, 2])
def test_phasewise_path_matches_torchaudios_polyphase_path(monkeypatch, orig_sr, new_sr, channels):
    """Same weights, another summation order: equal to float32 rounding (the brief allows 1e-5)."""
    x = _signal(0.3, orig_sr, channels, seed=orig_sr)
    _force(monkeypatch, "polyphase")
    reference = resample(x, orig_sr, new_sr)
    _force(monkeypatch, "phasewise")
    ours = resample(x, orig_sr, new_sr)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert float(np.abs(ours - reference).max()) < 1e-5


@pytest.mark.parametrize("seconds", [0.01, 0.07, 0.15])  # under one period (1600 outputs) and over
def test_short_clips_weigh_only_their_own_phases(monkeypatch, seconds):
    x = _signal(seconds, 44110, seed=3)
    _force(monkeypatch, "polyphase")
    reference = resample(x, 44110, 16000)
    _force(monkeypatch, "phasewise")
    ours = resample(x, 44110, 16000)
    assert ours.shape == reference.shape and float(np.abs(ours - reference).max()) < 1e-5


@pytest.mark.parametrize(
    ("orig_sr", "new_sr"), [(16001, 16000), (22051, 24000), (44101, 16000), (1001, 24000), (16000, 22051)]
)
@pytest.mark.parametrize("length", [0, 1, 2, 7, 157, 16002])
def test_odd_rates_keep_the_output_length_rule(orig_sr, new_sr, length):
    x = _signal(length / orig_sr + 1e-9, orig_sr)[:length]
    assert len(x) == length
    y = resample(np.stack([x, -x]), orig_sr, new_sr)
    assert y.shape == (2, math.ceil(new_sr * length / orig_sr)) and y.dtype == np.float32
    np.testing.assert_array_equal(y[0], -y[1])


def test_odd_rate_keeps_the_signal():
    """A 1 kHz tone at 22051 Hz is a 1 kHz tone at 16 kHz, away from the edges (independent check)."""
    sr = 22051
    t = np.arange(sr) / sr
    y = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), sr, 16000)
    expected = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / 16000)
    assert float(np.abs(y - expected)[200:-200].max()) < 2e-3


def test_kernels_are_cached_within_a_byte_bound(monkeypatch):
    cache = LRU(64, max_bytes=2 << 20, size_of=lambda kernel: kernel.nbytes)
    monkeypatch.setattr(audio_resample, "_KERNELS", cache)
    x = _signal(1.0, 50000)  # more than one period (16000 outputs) at every rate: the kernel is kept
    for sr in (16001, 16003, 16007, 16009, 22051, 44101):  # phase kernels of 0.9-2.2 MB each
        resample(x, sr, 16000)
        assert cache.bytes <= 2 << 20 or len(cache) == 1
    assert 0 < len(cache) < 6


_MEMORY_PROBE = r"""
import json, math, resource, sys
import numpy as np, torch
torch.set_num_threads(2)
import audio_resample
# fail fast instead of swapping the machine when a kernel would be gigabytes (as before the fix)
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))
rates = json.loads(sys.argv[1])
clips = {sr: np.random.default_rng(sr).standard_normal(30 * sr).astype(np.float32) * 0.1 for sr, _ in rates}
audio_resample.resample(clips[rates[0][0]][:4800], 48000, 16000)  # load torch's conv kernels first
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lengths = {}
for sr, new in rates:
    y = audio_resample.resample(clips[sr], sr, new)
    lengths[f"{sr}->{new}"] = [len(y), math.ceil(len(clips[sr]) * new / sr)]
growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"growth_mb": growth_mb, "lengths": lengths, "cache_bytes": audio_resample._KERNELS.bytes}))
"""


def test_odd_rates_resample_30_s_in_bounded_memory():
    """1001 / 16001 / 22051 / 44101 / 383999 Hz, 30 s each, to 16 and 24 kHz: under 200 MB above the
    inputs at the peak."""
    rates = [[sr, new] for sr in (1001, 16001, 22051, 44101, 383999) for new in (16000, 24000)]
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, json.dumps(rates)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for pair, (got, expected) in report["lengths"].items():
        assert got == expected, pair
    assert report["growth_mb"] < 200, report
    assert report["cache_bytes"] <= audio_resample.KERNEL_CACHE_BYTES
