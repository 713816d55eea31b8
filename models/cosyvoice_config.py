"""Reader (and writer) of ``cosyvoice.yaml``, the vocoder's hyperpyyaml config, without hyperpyyaml.

The released file names upstream classes in tags, e.g.
``flow: !new:stepvocoder.cosyvoice2.flow.flow.CausalMaskedDiffWithXvec`` with the constructor
arguments as a mapping below it. We parse it with PyYAML in two passes: tags become small
placeholder nodes, then ``!ref <key>`` references are resolved and every ``!new:`` node is
built with OUR class of the same name (``VOCODER_CLASSES``), arguments passed through.
``!name:`` gives a ``functools.partial``. Unknown tags or classes fail with a message naming them.

``render_cosyvoice_yaml`` writes the same form from a size table (real and demo sizes), so
the benchmark and the demo models need no copy of the released file.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from errors import ModelFilesError


def vocoder_classes() -> dict[str, Callable]:
    """Upstream class name -> our implementation (matched on the last component of the tag path)."""
    from models.dit import DiT
    from models.flow import (
        CausalConditionalCFM,
        CausalMaskedDiffWithXvec,
        DualCodebookEmbedding,
        UpsampleConformerEncoderV2,
    )
    from models.hift import ConvRNNF0Predictor, HiFTGenerator

    return {
        cls.__name__: cls
        for cls in (
            CausalMaskedDiffWithXvec,
            DualCodebookEmbedding,
            UpsampleConformerEncoderV2,
            CausalConditionalCFM,
            DiT,
            HiFTGenerator,
            ConvRNNF0Predictor,
        )
    }


@dataclass
class _New:
    path: str
    args: Any = field(default=None)
    line: int = 0


@dataclass
class _Name(_New):
    pass


@dataclass
class _Ref:
    expr: str
    line: int = 0


class _Loader(yaml.SafeLoader):
    """SafeLoader that turns hyperpyyaml tags into placeholders instead of executing anything."""


def _tagged_value(loader: _Loader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)
    return None if value in ("", None) else value


def _construct_tagged(kind: type[_New], loader: _Loader, suffix: str, node: yaml.Node) -> _New:
    """A ``!new:`` (``_New``) or ``!name:`` (``_Name``) node as a placeholder."""
    return kind(suffix, _tagged_value(loader, node), node.start_mark.line + 1)


def _construct_ref(loader: _Loader, node: yaml.Node) -> _Ref:
    return _Ref(str(loader.construct_scalar(node)), node.start_mark.line + 1)


def _unknown_tag(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
    raise ModelFilesError(
        f"cosyvoice.yaml line {node.start_mark.line + 1}: unsupported tag "
        f"{node.tag!r}; supported: !new:<class>, !name:<class>, !ref <key>"
    )


_Loader.add_multi_constructor("!new:", functools.partial(_construct_tagged, _New))
_Loader.add_multi_constructor("!name:", functools.partial(_construct_tagged, _Name))
_Loader.add_constructor("!ref", _construct_ref)
_Loader.add_multi_constructor("!", _unknown_tag)  # after the specific prefixes: PyYAML tries them in order

_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _arithmetic(expr: str) -> Any:
    """Evaluate numbers combined with + - * / // % ** and parentheses (what ``!ref`` expressions use)."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            return _BINARY_OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        raise ModelFilesError(f"unsupported !ref expression {expr!r}")

    try:
        return ev(ast.parse(expr, mode="eval"))
    except SyntaxError as exc:
        raise ModelFilesError(f"unsupported !ref expression {expr!r}") from exc


class _Builder:
    def __init__(self, raw: dict, classes: Mapping[str, Callable]):
        self.raw = raw
        self.classes = classes
        self.done: dict[str, Any] = {}
        self.active: set[str] = set()

    def top(self, key: str) -> Any:
        # memoised so that two references to one !new: node share one object, as in hyperpyyaml
        if key not in self.done:
            if key in self.active:
                raise ModelFilesError(f"cosyvoice.yaml: circular !ref involving {key!r}")
            self.active.add(key)
            self.done[key] = self.build(self.raw[key])
            self.active.discard(key)
        return self.done[key]

    def lookup(self, path: str, line: int) -> Any:
        parts = [p for p in re.split(r"[.\[\]/]", path.strip()) if p]
        if not parts or parts[0] not in self.raw:
            raise ModelFilesError(f"cosyvoice.yaml line {line}: !ref <{path}> names no top-level key")
        value = self.top(parts[0])
        for part in parts[1:]:
            try:
                value = value[int(part)] if isinstance(value, list) else value[part]
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise ModelFilesError(f"cosyvoice.yaml line {line}: !ref <{path}>: no {part!r}") from exc
        return value

    def resolve_ref(self, ref: _Ref) -> Any:
        whole = re.fullmatch(r"\s*<([^<>]+)>\s*", ref.expr)
        if whole:
            return self.lookup(whole.group(1), ref.line)
        text = re.sub(r"<([^<>]+)>", lambda m: repr(self.lookup(m.group(1), ref.line)), ref.expr)
        return _arithmetic(text)

    def cls(self, node: _New) -> Callable:
        name = node.path.rsplit(".", 1)[-1]
        if name not in self.classes:
            raise ModelFilesError(
                f"cosyvoice.yaml line {node.line}: class {node.path!r} is not implemented here "
                f"(known: {', '.join(sorted(self.classes))})"
            )
        return self.classes[name]

    def build(self, node: Any) -> Any:
        if isinstance(node, _Ref):
            return self.resolve_ref(node)
        if isinstance(node, dict):
            return {k: self.build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.build(v) for v in node]
        if isinstance(node, _New):
            target = self.cls(node)
            args = self.build(node.args)
            pos, kw = (args, {}) if isinstance(args, list) else ((), args or {})
            if not isinstance(kw, dict):
                pos, kw = (kw,), {}
            if isinstance(node, _Name):
                return functools.partial(target, *pos, **kw)
            try:
                return target(*pos, **kw)
            except TypeError as exc:
                raise ModelFilesError(
                    f"cosyvoice.yaml line {node.line}: cannot build {node.path} "
                    f"with arguments {sorted(kw)}: {exc}"
                ) from exc
        return node


def load_cosyvoice_config(text: str, classes: Mapping[str, Callable] | None = None) -> dict[str, Any]:
    """Parse cosyvoice.yaml text and build its objects; returns the top-level mapping.

    Modules are built on torch's current default device: wrap the call in
    ``with torch.device("meta"):`` to build real sizes without allocating memory.
    """
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ModelFilesError(f"cosyvoice.yaml is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelFilesError("cosyvoice.yaml must be a mapping at the top level")
    builder = _Builder(raw, classes if classes is not None else vocoder_classes())
    return {key: builder.top(key) for key in raw}


# Sizes of the released CosyVoice-300M-25Hz (see tests/fixtures/reference/vocoder/cosyvoice.reconstructed.yaml
# for the evidence behind each value) and of our tiny demo model.
REAL_SIZES: dict[str, Any] = {
    "input_size": 512,
    "vocab_size": 5121,
    "spk_embed_dim": 192,
    "enc_output_size": 512,
    "enc_heads": 8,
    "enc_linear_units": 2048,
    "enc_blocks": 6,
    "enc_up_blocks": 4,
    "pre_lookahead_len": 3,
    "inference_cfg_rate": 0.7,
    "dit_depth": 16,
    "dit_heads": 8,
    "dit_head_dim": 64,
    "dit_hidden": 512,
    "dit_mlp_ratio": 4.0,
    "hift_base": 512,
    "hift_f0_cond": 512,
}
DEMO_SIZES: dict[str, Any] = {
    **REAL_SIZES,
    "input_size": 32,
    "enc_output_size": 32,
    "enc_heads": 2,
    "enc_linear_units": 64,
    "enc_blocks": 1,
    "enc_up_blocks": 1,
    "dit_depth": 1,
    "dit_heads": 2,
    "dit_head_dim": 16,
    "dit_hidden": 32,
    "hift_base": 32,
    "hift_f0_cond": 32,
}

_TEMPLATE = """\
mel_conf:
    num_mels: 80
    n_fft: 1920
    hop_size: 480
    win_size: 1920
    sampling_rate: 24000
    fmin: 0
    fmax: 8000

flow: !new:stepvocoder.cosyvoice2.flow.flow.CausalMaskedDiffWithXvec
    input_size: {input_size}
    output_size: 80
    spk_embed_dim: {spk_embed_dim}
    output_type: 'mel'
    vocab_size: {vocab_size}    # 1024 (vq02) + 4096 (vq06) + 1 (vq02 pad)
    input_embedding: !new:stepvocoder.cosyvoice2.embedding.dual_codebook.DualCodebookEmbedding
        vocab_size: {vocab_size}
        input_size: {input_size}
    encoder: !new:stepvocoder.cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2
        input_size: {input_size}
        output_size: {enc_output_size}
        input_layer: 'linear'
        pre_lookahead_len: {pre_lookahead_len}
        num_blocks: {enc_blocks}
        num_up_blocks: {enc_up_blocks}
        up_stride: 2
        up_scale_factor: 2
        attention_heads: {enc_heads}
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        key_bias: true
        linear_units: {enc_linear_units}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: true
    decoder: !new:stepvocoder.cosyvoice2.flow.flow_matching.CausalConditionalCFM
        inference_cfg_rate: {inference_cfg_rate}
        estimator: !new:stepvocoder.cosyvoice2.flow.decoder_dit.DiT
            in_channels: 320
            out_channels: 80
            mlp_ratio: {dit_mlp_ratio}
            depth: {dit_depth}
            num_heads: {dit_heads}
            head_dim: {dit_head_dim}
            hidden_size: {dit_hidden}

hift: !new:stepvocoder.cosyvoice2.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {hift_base}
    nb_harmonics: 8
    sampling_rate: 24000
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:stepvocoder.cosyvoice2.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {hift_f0_cond}
"""


def render_cosyvoice_yaml(sizes: Mapping[str, Any] = REAL_SIZES) -> str:
    """cosyvoice.yaml text in the released hyperpyyaml form for the given size table."""
    missing = sorted(set(REAL_SIZES) - set(sizes))
    if missing:
        raise KeyError(f"size table lacks {missing}")
    return _TEMPLATE.format(**sizes)
