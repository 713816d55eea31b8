"""Make FunASR's Kaldi fbank match torchaudio's when torchaudio is absent.

What it fixes: PyPI ``funasr`` (checked with 1.4.16) computes every Kaldi fbank through
``funasr.utils.fbank.fbank``, which forwards to ``torchaudio.compliance.kaldi.fbank`` when torchaudio
imports and otherwise to kaldi-native-fbank. The fallback is not torchaudio's arithmetic: on the
tokenizer reference signals it differs by up to 5.5e-4 (lowest mel bins), over the 1e-4 feature
tolerance upstream's outputs are checked at. ``apply()`` points that function at our
:func:`kaldi_fbank.fbank`, a float32-exact torch re-implementation of torchaudio's, so FunASR's
frontends (WavFrontendOnline for the vq02 stream, and CAM++/speaker utilities) give upstream's features.

Why here: torchaudio publishes no build for the pinned torch, so FunASR always takes the fallback.
When torchaudio does import, ``apply()`` leaves FunASR alone (it already uses torchaudio).

When to drop: drop when torchaudio publishes a build for the pinned torch, or when funasr's fallback
matches torchaudio's kaldi.fbank within 1e-6.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import torch

import kaldi_fbank

log = logging.getLogger(__name__)

MODULE = "funasr.utils.fbank"  # FunASR's fbank dispatcher; its callers look up ``fbank`` at call time
MARK = "_editx_torch_fbank"  # set on our replacement so apply() can tell it is already in place


def _fbank(waveform: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """FunASR-facing replacement: same keyword arguments as torchaudio.compliance.kaldi.fbank."""
    return kaldi_fbank.fbank(waveform, **kwargs)


setattr(_fbank, MARK, True)


def apply() -> bool:
    """Route FunASR's fbank to :func:`kaldi_fbank.fbank` unless torchaudio backs it; idempotent.

    Returns True when FunASR now uses our fbank (patched by this or an earlier call), False when
    torchaudio is present and FunASR is left unchanged. Imports ``funasr.utils.fbank`` (so the
    ``funasr`` package) if it is not imported yet.
    """
    module = importlib.import_module(MODULE)
    if getattr(module, "_HAS_TORCHAUDIO", False):
        log.debug("funasr fbank patch not needed: torchaudio backs %s", MODULE)
        return False
    if not hasattr(module, "fbank"):
        raise RuntimeError(
            f"{MODULE} has no fbank(); this FunASR version changed its layout, review patches/funasr_fbank.py"
        )
    if getattr(module.fbank, MARK, False):
        return True
    module.fbank = _fbank
    log.info("funasr fbank patched: kaldi-native-fbank fallback -> kaldi_fbank (torchaudio's numbers)")
    return True
