"""Demo vocoder: a tiny random-weight ``Step-Audio-EditX/CosyVoice-300M-25Hz/`` in the real layout.

Writes cosyvoice.yaml (the released hyperpyyaml form, small sizes), flow.pt and hift.pt (state
dicts of our own modules, weight-norm keys as released), a tiny campplus.onnx with CAM++'s
interface (float32 fbank (B, T, 80) in, (B, 192) embedding out) and FLOW_VERSION. Only this
folder is written: the LLM files of Step-Audio-EditX/ come from demo/llm_assets.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from model_layout import COSYVOICE_CONFIG_FILE, FLOW_FILE, HIFT_FILE, SPEAKER_FILE, VOCODER_FOLDER
from models.cosyvoice_config import DEMO_SIZES, render_cosyvoice_yaml
from models.speaker import FBANK_BINS
from models.vocoder import build_networks

log = logging.getLogger(__name__)

SUBDIR = Path(VOCODER_FOLDER)
SPEAKER_DIM = 192  # CAM++ embedding width
SPEAKER_HIDDEN = 64  # width of the toy speaker network
ONNX_OPSET = 17


def speaker_onnx(seed: int) -> onnx.ModelProto:
    """Toy speaker encoder with CAM++'s interface: tanh(x W1 + b1), mean over time, W2 + b2."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((FBANK_BINS, SPEAKER_HIDDEN)) / np.sqrt(FBANK_BINS)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(SPEAKER_HIDDEN)).astype(np.float32)
    w2 = rng.standard_normal((SPEAKER_HIDDEN, SPEAKER_DIM)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(SPEAKER_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h2"]),
        helper.make_node("ReduceMean", ["h2"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "campplus_demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", "T", FBANK_BINS])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", SPEAKER_DIM])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="editx-studio-demo"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write(root: Path, seed: int, sizes: dict | None = None) -> None:
    """Write the demo CosyVoice-300M-25Hz folder under ``root`` (deterministic for ``seed``).

    ``sizes`` (default the tiny DEMO_SIZES; REAL_SIZES for benchmarks) picks the networks' shapes.
    """
    start = time.perf_counter()
    out = Path(root) / SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    text = render_cosyvoice_yaml(sizes or DEMO_SIZES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # module initialisers draw from the global RNG
        flow, hift, _ = build_networks(text, "cpu")
    torch.save(flow.state_dict(), out / FLOW_FILE)
    torch.save(hift.state_dict(), out / HIFT_FILE)
    (out / COSYVOICE_CONFIG_FILE).write_text(text)
    onnx.save(speaker_onnx(seed), str(out / SPEAKER_FILE))
    (out / "FLOW_VERSION").write_text("demo (tiny random weights)\n")
    log.info("demo vocoder written to %s in %.2f s", out, time.perf_counter() - start)
