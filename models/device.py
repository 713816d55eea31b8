"""Device and precision selection shared by every stage (CPU fp32 always works; CUDA when present)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from errors import OptionsError

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
        raise OptionsError(
            f"--device {requested} was requested but CUDA is not available on this machine; "
            "use --device cpu or auto"
        )
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise OptionsError(f"--device {requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionsError(
            f"--device {requested} was requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s); use cuda:0.."
        )
    return device


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """Model dtype: bf16 on CUDA and fp32 on CPU by default; "fp32", "fp16", "bf16" override."""
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    requested = (requested or "auto").lower()
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in names:
        raise OptionsError(f"unknown dtype {requested!r}; choose one of auto, fp32, fp16, bf16")
    return names[requested]


def enable_tf32() -> bool:
    """Allow TF32 for matmul and cuDNN when CUDA is present (Ampere and newer); logs what it set."""
    if not torch.cuda.is_available():
        log.debug("TF32: not applicable (no CUDA device)")
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    log.debug("TF32: enabled for matmul and cuDNN on %s", torch.cuda.get_device_name(0))
    return True


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
