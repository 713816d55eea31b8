"""Start-up failures are messages, not tracebacks (app.py as a person runs it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.app_server import ROOT, free_port


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_device_cuda_on_a_machine_without_cuda_prints_a_message(demo_models_root, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "app.py"),
            "--device",
            "cuda",
            "--model-dir",
            str(demo_models_root),
            "--cache-dir",
            "none",
            "--no-warmup",
            "--examples-dir",
            str(tmp_path / "examples"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-2000:]
    assert "CUDA is not available on this machine" in output and "--device cpu" in output
    assert "Traceback" not in output
