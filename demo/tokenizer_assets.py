"""Demo ``Step-Audio-Tokenizer/``: tiny random weights in the real layout, written by our own code.

    <root>/Step-Audio-Tokenizer/
      dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
          config.yaml model.pt am.mvn tokens.json seg_dict configuration.json
      linguistic_tokenizer.npy     (1024, D) float32 vq02 centroids, D = encoder output size
      speech_tokenizer_v1.onnx     feats (1,128,T) f32 + feats_length (1,) i32 -> indices (1,1,T') i64

``config.yaml`` carries the real keys and FunASR class names; ``model.pt`` is the state dict of a
FunASR ``ParaformerStreaming`` built from that config (encoder, CIF predictor and decoder, all keys),
so demo and real models load through the same code. ``write_tokenizer`` also builds bundles at the
real model's scale for the benchmark (``scripts/bench/tokenizer.py --real-scale``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from model_layout import PARAFORMER_SUBDIR, TOKENIZER_FOLDER
from models.audio_tokens import VQ02_CODES, VQ06_CODES  # codebook sizes, fixed by the LLM vocabulary

log = logging.getLogger(__name__)

N_MELS_VQ06 = 128
N_FBANK = 80  # Paraformer frontend mel bins; LFR m=7 makes 560 inputs
LFR_M, LFR_N = 7, 6


@dataclass(frozen=True)
class ParaformerScale:
    """Sizes of the streaming Paraformer (real: 512 / 4 heads / 2048 / 50 blocks; decoder 16 blocks)."""

    output_size: int = 64
    attention_heads: int = 4
    linear_units: int = 128
    num_blocks: int = 3
    decoder_blocks: int = 2
    decoder_linear_units: int = 128
    vocab_size: int = 0  # 0: the small demo vocabulary below; else padded to this size (real: 8501)


@dataclass(frozen=True)
class SemanticScale:
    """Sizes of the ONNX semantic tokenizer (real: conv stem 1280x128x3, 6 blocks of 1280 / 20 heads)."""

    width: int = 64
    blocks: int = 0
    heads: int = 4
    mlp_ratio: int = 4


TINY_PARAFORMER = ParaformerScale()
TINY_SEMANTIC = SemanticScale()
REAL_PARAFORMER = ParaformerScale(512, 4, 2048, 50, 16, 2048, 8501)
REAL_SEMANTIC = SemanticScale(1280, 6, 20, 4)

# A small vocabulary with the real specials, characters, a BPE continuation piece and CJK characters.
DEMO_TOKENS = (
    ["<blank>", "<s>", "</s>"]
    + list("abcdefghijklmnopqrstuvwxyz")
    + ["he@@", "llo", "wor@@", "ld", "你", "好", "世", "界", "<unk>"]
)


def write(root: Path, seed: int) -> None:
    """Write the tiny demo tokenizer under ``root/Step-Audio-Tokenizer`` (deterministic from ``seed``)."""
    write_tokenizer(Path(root) / TOKENIZER_FOLDER, TINY_PARAFORMER, TINY_SEMANTIC, seed)


def write_tokenizer(
    tokenizer_dir: Path, paraformer: ParaformerScale, semantic: SemanticScale, seed: int
) -> Path:
    """Write a complete tokenizer bundle at the given scale; returns ``tokenizer_dir``."""
    tokenizer_dir = Path(tokenizer_dir)
    model_dir = tokenizer_dir / PARAFORMER_SUBDIR
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = _vocabulary(paraformer.vocab_size)
    config = _config(paraformer)
    (model_dir / "config.yaml").write_text(
        "# Demo stand-in for the real config.yaml (same classes and keys, random tiny weights).\n"
        "# Like the real file it has no frontend dither key: FunASR would default to dither 1.0;\n"
        "# EditX forces 0 so the codes are deterministic and cacheable.\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    )
    (model_dir / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False, indent=0))
    (model_dir / "seg_dict").write_text("hello he@@ llo\nworld wor@@ ld\n你好 你 好\n", encoding="utf-8")
    (model_dir / "configuration.json").write_text(json.dumps(_configuration(), indent=2))
    _write_cmvn(model_dir / "am.mvn", rng)
    state = _paraformer_state(config, len(tokens), seed)
    torch.save(state, model_dir / "model.pt")
    centroids = rng.standard_normal((VQ02_CODES, paraformer.output_size)).astype(np.float32)
    np.save(tokenizer_dir / "linguistic_tokenizer.npy", centroids)
    write_semantic_onnx(tokenizer_dir / "speech_tokenizer_v1.onnx", semantic, rng)
    return tokenizer_dir


def _vocabulary(size: int) -> list[str]:
    if size <= len(DEMO_TOKENS):
        return list(DEMO_TOKENS)
    # Pad with CJK characters before <unk> (real: 8501 tokens of characters and BPE pieces).
    extra = [chr(0x4E00 + i) for i in range(size - len(DEMO_TOKENS))]
    return DEMO_TOKENS[:-1] + extra + DEMO_TOKENS[-1:]


def _config(p: ParaformerScale) -> dict:
    """config.yaml as a dict: the keys and classes of FunASR's paraformer_streaming template."""
    return {
        "model": "ParaformerStreaming",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoderChunkOpt",
        "encoder_conf": {
            "output_size": p.output_size,
            "attention_heads": p.attention_heads,
            "linear_units": p.linear_units,
            "num_blocks": p.num_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe_online",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "chunk_size": [12, 15],
            "stride": [8, 10],
            "pad_left": [0, 0],
            "encoder_att_look_back_factor": [4, 4],
            "decoder_att_look_back_factor": [1, 1],
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": p.attention_heads,
            "linear_units": p.decoder_linear_units,
            "num_blocks": p.decoder_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": p.decoder_blocks,
            "kernel_size": 11,
            "sanm_shfit": 5,
        },
        "predictor": "CifPredictorV2",
        "predictor_conf": {
            "idim": p.output_size,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
        },
        "frontend": "WavFrontendOnline",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": N_FBANK,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": LFR_M,
            "lfr_n": LFR_N,
        },
        "specaug": "SpecAugLFR",
        "specaug_conf": {
            "apply_time_warp": False,
            "time_warp_window": 5,
            "time_warp_mode": "bicubic",
            "apply_freq_mask": True,
            "freq_mask_width_range": [0, 30],
            "lfr_rate": 6,
            "num_freq_mask": 1,
            "apply_time_mask": True,
            "time_mask_width_range": [0, 12],
            "num_time_mask": 1,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
        "normalize": None,
    }


def _configuration() -> dict:
    """ModelScope configuration.json: tells FunASR which local files hold weights, vocabulary and CMVN."""
    return {
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "pipeline": {"type": "funasr-pipeline"},
        "model_name_in_hub": {"ms": PARAFORMER_SUBDIR, "hf": ""},
        "file_path_metas": {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"token_list": "tokens.json", "seg_dict": "seg_dict"},
            "frontend_conf": {"cmvn_file": "am.mvn"},
        },
    }


def _write_cmvn(path: Path, rng: np.random.Generator) -> None:
    """Kaldi-nnet CMVN for 560 LFR dims: <AddShift> = -mean, <Rescale> = 1/std of a plausible fbank."""
    dims = N_FBANK * LFR_M
    bins = np.tile(np.arange(N_FBANK), LFR_M)
    mean = -13.5 + 4.0 * np.sin(bins / N_FBANK * np.pi) + 0.1 * rng.standard_normal(dims)
    inv_std = 0.22 + 0.05 * np.cos(bins / N_FBANK * np.pi) ** 2
    fmt = " ".join

    def row(values: np.ndarray) -> str:
        return fmt(f"{v:.6f}" for v in values)

    path.write_text(
        f"<Nnet>\n<Splice> {dims} {dims}\n[ 0 ]\n"
        f"<AddShift> {dims} {dims}\n<LearnRateCoef> 0 [ {row(-mean)} ]\n"
        f"<Rescale> {dims} {dims}\n<LearnRateCoef> 0 [ {row(inv_std)} ]\n</Nnet>\n"
    )


def _paraformer_state(config: dict, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """State dict of a freshly initialised FunASR ParaformerStreaming (module init under ``seed``)."""
    from models.vq02 import import_funasr

    import_funasr()  # registers the classes (and keeps the app's logging setup intact)
    from funasr.register import tables

    model_conf = {**config["model_conf"], **config}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tables.model_classes.get(config["model"])(
            **model_conf, input_size=N_FBANK * LFR_M, vocab_size=vocab_size
        )
        with torch.no_grad():
            # Untrained CIF weights rarely fire; a positive bias makes the demo ASR emit tokens.
            model.predictor.cif_output.bias.fill_(1.0)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_semantic_onnx(path: Path, scale: SemanticScale, rng: np.random.Generator) -> None:
    """A whisper-like vq06 tokenizer graph with the real I/O names.

    conv(k3, s2) -> GELU -> conv(k3, s2) -> GELU -> ``blocks`` pre-LN transformer blocks -> cosine
    nearest of 4096 codes -> slice to ``T' = ceil(ceil(T/2)/2)`` computed from ``feats_length``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = scale.width
    inits: list = []
    nodes: list = []

    def param(name: str, shape: tuple[int, ...], std: float) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name))
        return name

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def gelu(x: str, name: str) -> str:
        # exact GELU via Erf (opset 17 has no Gelu op): 0.5 * x * (1 + erf(x / sqrt 2))
        e = node(
            "Erf",
            [node("Mul", [x, const(f"{name}.rsqrt2", np.float32(2**-0.5))], f"{name}.s")],
            f"{name}.erf",
        )
        half = node("Mul", [x, const(f"{name}.half", np.float32(0.5))], f"{name}.h")
        return node(
            "Mul", [half, node("Add", [e, const(f"{name}.one", np.float32(1.0))], f"{name}.e1")], name
        )

    def linear(x: str, name: str, n_in: int, n_out: int) -> str:
        w = param(f"{name}.weight", (n_in, n_out), n_in**-0.5)
        bias = param(f"{name}.bias", (n_out,), 0.01)
        return node("Add", [node("MatMul", [x, w], f"{name}.mm"), bias], name)

    def layer_norm(x: str, name: str) -> str:
        return node(
            "LayerNormalization",
            [
                x,
                const(f"{name}.weight", np.ones(c, np.float32)),
                const(f"{name}.bias", np.zeros(c, np.float32)),
            ],
            name,
            axis=-1,
        )

    x = "feats"
    for i, n_in in ((1, N_MELS_VQ06), (2, c)):
        w = param(f"encoders.conv{i}.weight", (c, n_in, 3), (3 * n_in) ** -0.5)
        b = param(f"encoders.conv{i}.bias", (c,), 0.01)
        x = gelu(node("Conv", [x, w, b], f"conv{i}", kernel_shape=[3], strides=[2], pads=[1, 1]), f"gelu{i}")
    x = node("Transpose", [x], "frames", perm=[0, 2, 1])  # (1, T', C)
    heads, dh = scale.heads, c // scale.heads
    if scale.blocks:
        split = const("head_shape", np.array([0, -1, heads, dh], np.int64))
        merge = const("merge_shape", np.array([0, -1, c], np.int64))
    for b in range(scale.blocks):
        p = f"encoders.blocks.{b}"
        h = layer_norm(x, f"{p}.attn_ln")
        q, k, v = (
            node(
                "Transpose",
                [node("Reshape", [linear(h, f"{p}.attn.{t}", c, c), split], f"{p}.{t}r")],
                f"{p}.{t}t",
                perm=[0, 2, 1, 3],
            )
            for t in ("query", "key", "value")
        )
        kt = node("Transpose", [k], f"{p}.kT", perm=[0, 1, 3, 2])
        scale_c = const(f"{p}.scale", np.float32(dh**-0.5))
        scores = node("Mul", [node("MatMul", [q, kt], f"{p}.qk"), scale_c], f"{p}.scores")
        att = node("MatMul", [node("Softmax", [scores], f"{p}.probs", axis=-1), v], f"{p}.att")
        att = node("Transpose", [att], f"{p}.att_t", perm=[0, 2, 1, 3])
        att = node("Reshape", [att, merge], f"{p}.att_m")
        x = node("Add", [x, linear(att, f"{p}.attn.out", c, c)], f"{p}.res1")
        h = layer_norm(x, f"{p}.mlp_ln")
        h = linear(
            gelu(linear(h, f"{p}.mlp.0", c, c * scale.mlp_ratio), f"{p}.mlp.gelu"),
            f"{p}.mlp.2",
            c * scale.mlp_ratio,
            c,
        )
        x = node("Add", [x, h], f"{p}.res2")
    codebook = rng.standard_normal((c, VQ06_CODES)).astype(np.float32)
    codebook /= np.linalg.norm(codebook, axis=0, keepdims=True)  # unit codes: argmax = cosine nearest
    inits.append(numpy_helper.from_array(codebook, "onnx::MatMul_1672"))
    scores = node("MatMul", [x, "onnx::MatMul_1672"], "code_scores")
    codes = node("ArgMax", [scores], "codes", axis=-1, keepdims=0)  # (1, T') int64
    codes = node("Unsqueeze", [codes, const("axis1", np.array([1], np.int64))], "codes3")  # (1, 1, T')
    one, two = const("i_one", np.array([1], np.int64)), const("i_two", np.array([2], np.int64))
    n = node("Cast", ["feats_length"], "len64", to=TensorProto.INT64)
    n = node("Div", [node("Add", [n, one], "len_p1"), two], "len_half")
    n = node("Div", [node("Add", [n, one], "len_p2"), two], "len_quarter")
    node("Slice", [codes, const("start0", np.array([0], np.int64)), n, two], "indices")
    graph = helper.make_graph(
        nodes,
        "speech_tokenizer_v1",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, N_MELS_VQ06, "T"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 1, "T_out"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="editx-demo")
    model.ir_version = 8
    onnx.save(model, str(path))
