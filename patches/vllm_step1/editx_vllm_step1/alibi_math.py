"""Square-root ALiBi attention in plain torch (no vLLM import, so the app's tests can check it).

Shapes: NH query heads, G KV groups (NH / G query heads per group, contiguous), Tq queries, K keys,
hd head size. The queries are the last Tq of the K positions (a prefill chunk or decode steps on top
of cached keys); positions are absolute, from 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Bias (and score) elements built at once: queries are processed in row chunks under this bound, so a
# long prefill of the real model (48 heads, 8192 keys) needs ~256 MB per chunk, not gigabytes.
MAX_BIAS_ELEMENTS = 1 << 26


def sqrt_alibi_bias(
    slopes: torch.Tensor, num_queries: int, num_keys: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask (NH, Tq, K): ``-slope_h * sqrt(i - j)`` for key j <= query i, ``-inf`` above.

    Built in float32 and cast to ``dtype``, as the reference code does (STEP1_FACTS §2.4).
    """
    q_pos = torch.arange(num_keys - num_queries, num_keys, dtype=torch.float32)
    k_pos = torch.arange(num_keys, dtype=torch.float32)
    dist = q_pos[:, None] - k_pos[None, :]
    bias = -slopes.float()[:, None, None] * dist.clamp(min=0).sqrt()[None]
    return bias.masked_fill((dist < 0)[None], float("-inf")).to(dtype)


def sqrt_alibi_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor,
    scale: float,
    max_bias_elements: int = MAX_BIAS_ELEMENTS,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with the sqrt-ALiBi bias: q (NH, Tq, hd), k and v (G, K, hd)
    -> (NH, Tq, hd). Query head h reads KV group h // (NH / G)."""
    num_heads, num_queries, _ = q.shape
    num_keys = k.shape[1]
    group = num_heads // k.shape[0]
    k = k.to(q.dtype).repeat_interleave(group, dim=0)
    v = v.to(q.dtype).repeat_interleave(group, dim=0)
    rows = max(1, max_bias_elements // (num_heads * num_keys))
    out = torch.empty_like(q)
    for start in range(0, num_queries, rows):
        stop = min(num_queries, start + rows)
        visible = num_keys - (num_queries - stop)  # keys up to the chunk's last query position
        bias = sqrt_alibi_bias(slopes, stop - start, visible, q.dtype)
        out[:, start:stop] = F.scaled_dot_product_attention(
            q[:, start:stop], k[:, :visible], v[:, :visible], attn_mask=bias, scale=scale
        )
    return out
