"""Device and precision selection shared by every stage (CPU fp32 always works; CUDA when present)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    """Return the torch device for ``requested`` ("auto", "cpu", "cuda", "cuda:N").

    "auto" picks CUDA when it is available, else the CPU. Asking for CUDA on a machine without
    it is an error a person can act on, not a silent fallback.
    """
    requested = (requested or "auto").lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"--device {requested} was requested but CUDA is not available on this machine; "
            "use --device cpu or auto"
        )
    return torch.device(requested)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """Model dtype: bf16 on CUDA and fp32 on CPU by default; "fp32", "fp16", "bf16" override."""
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    requested = (requested or "auto").lower()
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in names:
        raise ValueError(f"unknown dtype {requested!r}; choose one of auto, fp32, fp16, bf16")
    return names[requested]


def enable_tf32() -> bool:
    """Allow TF32 for matmul and cuDNN when CUDA is present (Ampere and newer); logs what it set."""
    if not torch.cuda.is_available():
        log.info("TF32: not applicable (no CUDA device)")
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    log.info("TF32: enabled for matmul and cuDNN on %s", torch.cuda.get_device_name(0))
    return True
