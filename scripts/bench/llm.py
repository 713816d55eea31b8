"""LLM: prefill/decode tokens/s and weight memory, base vs bnb-4bit; 4-bit memory ratio at real shapes.

    python scripts/benchmark.py llm --model-dir DIR --json OUT

1. The LLM in ``DIR/Step-Audio-EditX`` (demo models are written to a temp dir when it is absent):
   both variants loaded in the same run; prefill tokens/s on a clone prompt, decode tokens/s
   (one token at a time with the KV cache), sampled end-to-end tokens/s, weight bytes.
2. A random model with the real layer shapes (hidden 3072, 48 heads in 4 groups, intermediate
   8192, vocab 74752) but only ``--real-layers`` layers, written as bf16 safetensors and loaded
   through the same loader as base (bf16) and bnb-4bit (bf16 compute): measured weight bytes,
   their ratio, the estimate for the same model, and the estimate for the full 32-layer model.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers.cache_utils import DynamicCache

from demo.llm_assets import REAL_LAYERS, REAL_SHAPES, write_checkpoint
from model_layout import is_demo_models
from models.audio_tokens import token_str
from models.generation import GenerationOptions
from models.llm import Step1LLM, estimate_weight_bytes, measured_weight_bytes
from models.prompts import build_clone_prompt
from models.step1 import Step1Config
from scripts.bench import llm_dir

log = logging.getLogger("bench.llm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--prompt-groups",
        type=int,
        default=60,
        help="reference audio groups in the clone prompt (5 tokens each)",
    )
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument(
        "--real-layers",
        type=int,
        default=1,
        help="layers of the real-shape model for the memory ratio (0 skips it)",
    )
    parser.add_argument("--real-decode-tokens", type=int, default=4)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer tokens and no real-shape model (seconds instead of about 1.5 min on CPU)",
    )


def _clone_prompt(llm: Step1LLM, groups: int) -> list[int]:
    codes = [c for g in range(groups) for c in (g % 1024, (7 * g) % 1024, 1024 + g, 2048 + g, 3072 + g)]
    return build_clone_prompt(
        llm.tokenizer,
        "This is the reference sentence.",
        token_str(codes),
        "And this is the sentence to say in that voice.",
    )


def time_prefill_decode(llm: Step1LLM, prompt: list[int], decode_tokens: int, repeats: int = 3) -> dict:
    """Median prefill time over ``repeats`` and decode tokens/s over ``decode_tokens`` cached steps."""
    model = llm.model
    ids = torch.tensor([prompt], device=llm.device)
    prefill = []
    with torch.inference_mode():
        for _ in range(repeats):
            cache = DynamicCache(config=model.config)
            start = time.perf_counter()
            logits = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            if llm.device.type == "cuda":
                torch.cuda.synchronize()
            prefill.append(time.perf_counter() - start)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(decode_tokens):
            nxt = model(nxt, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        if llm.device.type == "cuda":
            torch.cuda.synchronize()
        decode = time.perf_counter() - start
    p = statistics.median(prefill)
    return {
        "prompt_tokens": len(prompt),
        "prefill_s": round(p, 4),
        "prefill_tokens_per_s": round(len(prompt) / p, 1),
        "decode_tokens": decode_tokens,
        "decode_tokens_per_s": round(decode_tokens / decode, 2),
    }


def bench_variant(
    model_dir: Path,
    variant: str,
    args: argparse.Namespace,
    dtype: str = "auto",
    sample: bool = True,
    decode_tokens: int | None = None,
    groups: int | None = None,
) -> dict:
    start = time.perf_counter()
    llm = Step1LLM.load(model_dir, variant=variant, device=args.device, dtype=dtype)
    load_s = time.perf_counter() - start
    prompt = _clone_prompt(llm, groups if groups is not None else args.prompt_groups)
    out = {
        "variant": llm.variant,
        "dtype": str(llm.model.dtype).replace("torch.", ""),
        "load_s": round(load_s, 2),
        "weight_bytes": measured_weight_bytes(llm.model),
    }
    out.update(time_prefill_decode(llm, prompt, decode_tokens or args.decode_tokens))
    if sample:
        options = GenerationOptions(seed=0, max_length=len(prompt) + args.decode_tokens)
        start = time.perf_counter()
        new, _ = llm.generate_ids(prompt, options)
        out["sampled_tokens"] = len(new)
        out["sampled_tokens_per_s"] = round(len(new) / (time.perf_counter() - start), 2)
    del llm
    return out


def write_real_shape_model(out: Path, layers: int, seed: int = 0) -> Step1Config:
    """Random bf16 weights with the real checkpoint's shapes and key names, ``layers`` layers."""
    config = Step1Config(**REAL_SHAPES, num_hidden_layers=layers)
    g = torch.Generator().manual_seed(seed)
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_attention_groups * config.head_dim

    def randn(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.bfloat16) * std).contiguous()

    w = {
        "model.embed_tokens.weight": randn(v, h, std=1.0),
        "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
        "lm_head.weight": randn(v, h, std=h**-0.5),
    }
    for n in range(layers):
        p = f"model.layers.{n}."
        w[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        for name, shape in (
            ("self_attn.q_proj", (h, h)),
            ("self_attn.k_proj", (kv, h)),
            ("self_attn.v_proj", (kv, h)),
            ("self_attn.o_proj", (h, h)),
            ("mlp.gate_proj", (i, h)),
            ("mlp.up_proj", (i, h)),
            ("mlp.down_proj", (h, i)),
        ):
            w[p + name + ".weight"] = randn(*shape, std=shape[1] ** -0.5)
    raw = {
        "architectures": ["Step1ForCausalLM"],
        "model_type": "step1",
        **REAL_SHAPES,
        "num_hidden_layers": layers,
        "max_seq_len": 32768,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "pad_token_id": 0,
        "eos_token_id": 3,
        "torch_dtype": "bfloat16",
    }
    write_checkpoint(out, w, raw)
    return config


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "quick", False):
        args.prompt_groups, args.decode_tokens, args.real_layers = 20, 16, 0
    with tempfile.TemporaryDirectory(prefix="editx_bench_llm_") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, tmp: Path) -> dict:
    model_dir = llm_dir(args.model_dir, tmp)
    result: dict = {
        "model_dir": str(model_dir),
        "demo_models": is_demo_models(model_dir.parent),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "variants": {},
    }
    for variant in ("base", "bnb-4bit"):
        result["variants"][variant] = bench_variant(model_dir, variant, args)
    v = result["variants"]
    result["memory_ratio_4bit_vs_base"] = round(v["bnb-4bit"]["weight_bytes"] / v["base"]["weight_bytes"], 3)

    if args.real_layers > 0:
        real_dir = tmp / "real_shape"
        start = time.perf_counter()
        config = write_real_shape_model(real_dir, args.real_layers)
        # The tokenizer of the benchmarked model serves for the prompt (ids are all the forward needs).
        (real_dir / "tokenizer.model").write_bytes((model_dir / "tokenizer.model").read_bytes())
        log.info(
            "real-shape model with %d layer(s) written in %.1f s",
            args.real_layers,
            time.perf_counter() - start,
        )
        real: dict = {"layers": args.real_layers, **REAL_SHAPES, "variants": {}}
        for variant in ("base", "bnb-4bit"):
            real["variants"][variant] = bench_variant(
                real_dir,
                variant,
                args,
                dtype="bf16",
                sample=False,
                decode_tokens=args.real_decode_tokens,
                groups=20,
            )
        rv = real["variants"]
        real["measured_ratio"] = round(rv["bnb-4bit"]["weight_bytes"] / rv["base"]["weight_bytes"], 4)
        real["estimated_bytes"] = {k: estimate_weight_bytes(config, k) for k in ("base", "bnb-4bit")}
        full = Step1Config(**REAL_SHAPES, num_hidden_layers=REAL_LAYERS)
        full_bytes = {k: estimate_weight_bytes(full, k) for k in ("base", "bnb-4bit")}
        real["full_32_layer_estimate_bytes"] = full_bytes
        real["full_32_layer_estimated_ratio"] = round(full_bytes["bnb-4bit"] / full_bytes["base"], 4)
        result["real_shape"] = real
    return result
