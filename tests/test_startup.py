"""Start-up failures are messages, not tracebacks (app.py as a person runs it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.app_server import ROOT, free_port


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: these flags are valid here")
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "cuda"], ["CUDA is not available on this machine", "--device cpu"]),
        (["--llm-decode", "graphs"], ["--llm-decode graphs needs a CUDA device", "static or dynamic"]),
    ],
)
def test_a_cuda_only_flag_on_a_machine_without_cuda_prints_a_message(
    demo_models_root, tmp_path, flags, message
):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "app.py"),
            *flags,
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
    assert all(part in output for part in message), output[-2000:]
    assert "Traceback" not in output
