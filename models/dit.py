"""DiT estimator of the flow's vector field (``decoder.estimator.*`` in flow.pt).

Input per frame: [x, mu, speaker, prompt condition] (4 x 80 = 320 channels) -> in_proj ->
``depth`` blocks, each adaLN-modulated attention, causal conv block and MLP (in that order) ->
adaLN final layer -> 80 channels. The time t in [0, 1] enters through a sinusoidal embedding
of 1000*t and an MLP, and modulates every block (shift, scale, gate).

Streaming (``forward_chunk``): each block keeps its attention keys/values and the last 2 input
frames of each causal conv, so a chunk of frames sees every frame before it. A chunk attends
over [this chunk ; cache] without a mask (the DiT has no positional encoding), as upstream does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TIME_EMBEDDING_DIM = 256  # sinusoid width of the timestep embedding
TIME_SCALE = 1000  # t in [0, 1] is scaled to [0, 1000] before the sinusoid

# One DiT block's streaming state: conv cache (B, 2*hidden, kernel-1) = the last input frames of its
# two causal convs, and attention cache (B, heads, frames, 2*head_dim) = keys | values.
BlockCache = tuple[torch.Tensor, torch.Tensor]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """(B,) times -> (B, hidden): [cos, sin] sinusoid of 1000*t, then Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = TIME_EMBEDDING_DIM):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, device=t.device) / half).to(
            t
        )
        args = t[:, None] * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t * TIME_SCALE, self.frequency_embedding_size))


class Attention(nn.Module):
    """Multi-head self-attention with per-head affine LayerNorm on q and k, key-padding mask."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        inner = num_heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.q_norm = nn.LayerNorm(head_dim)
        self.k_norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.reshape(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> q, k, v (B, heads, T, head_dim), q and k normalised per head."""
        return (
            self.q_norm(self._heads(self.to_q(x))),
            self.k_norm(self._heads(self.to_k(x))),
            self._heads(self.to_v(x)),
        )

    def _out(self, out: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); attn_mask (B, 1, T) bool over keys."""
        q, k, v = self._qkv(x)
        return self._out(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.unsqueeze(1)))

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) new frames; cache (B, heads, S, 2*head_dim) keys | values of earlier frames.

        Keys and values are [this chunk ; cache] (new frames first, as upstream), no mask.
        Returns (B, T, C) and the new cache (B, heads, T + S, 2*head_dim) in that order.
        """
        q, k, v = self._qkv(x)
        if cache is not None:
            k_cache, v_cache = cache.chunk(2, dim=-1)
            k = torch.cat([k, k_cache], dim=2)
            v = torch.cat([v, v_cache], dim=2)
        return self._out(F.scaled_dot_product_attention(q, k, v)), torch.cat([k, v], dim=-1)


class Transpose(nn.Module):
    """Swap time and channel axes inside ``nn.Sequential`` (keeps the checkpoint's indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class CausalConv1d(nn.Conv1d):
    """Conv1d with kernel_size - 1 zeros padded on the left only."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)
        self.left_pad = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T); cache (B, C, kernel-1) the previous input frames (None: zeros, as the pad).

        Returns (B, C', T) and the new cache: the last kernel-1 frames of [cache ; x].
        """
        if cache is None:
            cache = x.new_zeros(x.size(0), x.size(1), self.left_pad)
        x = torch.cat([cache, x], dim=2)
        return super().forward(x), x[:, :, x.size(2) - self.left_pad :]


class CausalConvBlock(nn.Module):
    """(B, T, C) -> (B, T, C): causal conv k3, LayerNorm, Mish, causal conv k3.

    Sequential indices 1, 3 and 6 carry the weights, as in flow.pt.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.block = nn.Sequential(
            Transpose(),
            CausalConv1d(in_channels, out_channels, kernel_size),
            Transpose(),
            nn.LayerNorm(out_channels),
            nn.Mish(),
            Transpose(),
            CausalConv1d(out_channels, out_channels, kernel_size),
            Transpose(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C); cache (B, C_in + C_out, kernel-1): conv1's then conv2's previous inputs."""
        conv1, conv2 = self.block[1], self.block[6]
        cache1, cache2 = (
            (None, None) if cache is None else cache.split([conv1.in_channels, conv2.in_channels], dim=1)
        )
        h, new1 = conv1.forward_chunk(x.transpose(1, 2), cache1)
        h = self.block[2:6](h)  # transpose, LayerNorm, Mish, transpose
        h, new2 = conv2.forward_chunk(h, cache2)
        return h.transpose(1, 2), torch.cat([new1, new2], dim=1)


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero block: attention, then causal conv block, then MLP, each gated."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio))
        self.norm3 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.conv = CausalConvBlock(hidden_size, hidden_size, kernel_size=3)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 9 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); c (B, 1, C) time embedding; attn_mask (B, 1, T) bool."""
        (
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
            shift_conv,
            scale_conv,
            gate_conv,
        ) = self.adaLN_modulation(c).chunk(9, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), attn_mask)
        x = x + gate_conv * self.conv(modulate(self.norm3(x), shift_conv, scale_conv))
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

    def forward_chunk(
        self, x: torch.Tensor, c: torch.Tensor, cache: BlockCache | None = None
    ) -> tuple[torch.Tensor, BlockCache]:
        """``forward`` over a chunk x (B, T, C) with this block's cache (see ``BlockCache``); no mask."""
        (
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
            shift_conv,
            scale_conv,
            gate_conv,
        ) = self.adaLN_modulation(c).chunk(9, dim=-1)
        conv_cache, att_cache = (None, None) if cache is None else cache
        h, att_cache = self.attn.forward_chunk(modulate(self.norm1(x), shift_msa, scale_msa), att_cache)
        x = x + gate_msa * h
        h, conv_cache = self.conv.forward_chunk(modulate(self.norm3(x), shift_conv, scale_conv), conv_cache)
        x = x + gate_conv * h
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)), (conv_cache, att_cache)


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Vector-field estimator: (x, mask, mu, t, spks, cond) -> dx/dt (B, out_channels, N)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mlp_ratio: float = 4.0,
        depth: int = 28,
        num_heads: int = 8,
        head_dim: int = 64,
        hidden_size: int = 256,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.in_proj = nn.Linear(in_channels, hidden_size)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, head_dim, mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, out_channels)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        """x, mu, cond (B, 80, N); mask (B, 1, N); t (B,); spks (B, 80) -> (B, out_channels, N)."""
        h, c = self._inputs(x, mu, t, spks, cond)
        attn_mask = mask.bool()
        for block in self.blocks:
            h = block(h, c, attn_mask)
        return self.final_layer(h, c).transpose(1, 2)

    def forward_chunk(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        cache: list[BlockCache] | None = None,
    ) -> tuple[torch.Tensor, list[BlockCache]]:
        """One chunk of M frames: x, mu, cond (B, 80, M); t (B,); spks (B, 80); ``cache`` one entry per
        block (None: nothing before). Returns (B, out_channels, M) and the caches including this chunk.
        """
        h, c = self._inputs(x, mu, t, spks, cond)
        new_cache: list[BlockCache] = []
        for i, block in enumerate(self.blocks):
            h, block_cache = block.forward_chunk(h, c, None if cache is None else cache[i])
            new_cache.append(block_cache)
        return self.final_layer(h, c).transpose(1, 2), new_cache

    def _inputs(
        self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> in_proj of [x, mu, speaker, cond] (B, N, hidden) and the time embedding (B, 1, hidden)."""
        c = self.t_embedder(t).unsqueeze(1)
        h = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.size(-1)), cond], dim=1)
        return self.in_proj(h.transpose(1, 2)), c
