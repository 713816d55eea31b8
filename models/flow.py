"""Flow of the CosyVoice-300M-25Hz vocoder: tokens (25 Hz) -> 80-bin mel (50 Hz).

Read top to bottom: the dual-codebook embedding, the upsampling conformer encoder (ESPnet
relative-position attention, 25 Hz -> 50 Hz), the causal conditional flow-matching solver
(cosine time schedule, Euler steps, classifier-free guidance) and the module that ties them
together (``CausalMaskedDiffWithXvec``). Parameter names follow the released ``flow.pt``.

Shapes: B batch (the vocoder decodes one request at a time, B = 1), T token frames (25 Hz),
2T mel frames (50 Hz), C model width, 80 mel bins.

Streaming: ``encode_chunk`` / ``UpsampleConformerEncoderV2.forward_chunk`` and
``CausalConditionalCFM.forward_chunk`` run one chunk with the caches of the chunks before it
(``models/vocoder_stream.py`` drives them); the whole-sequence methods are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.dit import BlockCache, DiT

MEL_BINS = 80


class DualCodebookEmbedding(nn.Module):
    """One shared table embeds both token columns; the halves are concatenated.

    (B, T, 2) int64 ids in [0, vocab_size) -> (B, T, input_size).
    """

    def __init__(self, vocab_size: int, input_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, input_size // 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embedding(tokens[..., 0]), self.embedding(tokens[..., 1])], dim=-1)


def relative_position_encoding(
    size: int, d_model: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """ESPnet relative sinusoid table for relative positions size-1 ... -(size-1): (1, 2*size-1, d_model).

    Built in float32 element by element (so any length gives the same values as upstream's
    5000-frame table) and then cast.
    """
    position = torch.arange(0, size, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    positive = torch.zeros(size, d_model)
    negative = torch.zeros(size, d_model)
    positive[:, 0::2] = torch.sin(position * div_term)
    positive[:, 1::2] = torch.cos(position * div_term)
    negative[:, 0::2] = torch.sin(-1 * position * div_term)
    negative[:, 1::2] = torch.cos(-1 * position * div_term)
    table = torch.cat([torch.flip(positive, [0]), negative[1:]], dim=0).unsqueeze(0)
    return table.to(device=device, dtype=dtype)


class LinearEmbed(nn.Module):
    """``LinearNoSubsampling`` + ``EspnetRelPositionalEncoding``: Linear, LayerNorm(1e-5), x * sqrt(C).

    Returns the scaled input (B, T, C) and the relative position table (1, 2T-1, C).
    """

    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.d_model = odim
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.scale(x)
        return x, relative_position_encoding(x.size(1), self.d_model, x.device, x.dtype)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, idim) -> (B, T, C): Linear, LayerNorm, x sqrt(C), without the position table."""
        return self.out(x) * self.xscale


class RelPositionMultiHeadedAttention(nn.Module):
    """Transformer-XL style attention with learned biases u (content) and v (position)."""

    def __init__(self, n_head: int, n_feat: int, key_bias: bool = True):
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"attention width {n_feat} is not divisible by {n_head} heads")
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    @staticmethod
    def rel_shift(x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, 2T-1) scores over relative positions -> (B, H, T, T) scores over key positions."""
        b, h, t, n = x.shape
        padded = torch.cat([x.new_zeros(b, h, t, 1), x], dim=-1).view(b, h, n + 1, t)
        return padded[:, :, 1:].reshape(b, h, t, n)[:, :, :, : n // 2 + 1]

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); pos_emb (1, 2T-1, C) -> (B, T, C)."""
        return self.forward_chunk(x, pos_emb)[0]

    def forward_chunk(
        self, x: torch.Tensor, pos_emb: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) new frames; cache (B, H, S, 2*d_k) keys | values of the S frames before them;
        pos_emb (1, 2(S+T)-1, C) the table over cache + chunk.

        Keys are [cache ; chunk] in time order and ``rel_shift`` gives every query its distance to
        each key; no mask. Returns (B, T, C) and the new cache (B, H, S+T, 2*d_k).
        """
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        if cache is not None:
            k_cache, v_cache = cache.chunk(2, dim=-1)
            k = torch.cat([k_cache, k], dim=2)
            v = torch.cat([v_cache, v], dim=2)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))
        matrix_bd = self.rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        out = self.linear_out(out.transpose(1, 2).reshape(b, t, self.h * self.d_k))
        return out, torch.cat([k, v], dim=-1)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerEncoderLayer(nn.Module):
    """Self-attention + SiLU feed-forward (no macaron, no conv module); LayerNorm eps 1e-12."""

    def __init__(self, size: int, heads: int, linear_units: int, key_bias: bool, normalize_before: bool):
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(heads, size, key_bias)
        self.feed_forward = PositionwiseFeedForward(size, linear_units)
        self.norm_ff = nn.LayerNorm(size, eps=1e-12)
        self.norm_mha = nn.LayerNorm(size, eps=1e-12)
        self.normalize_before = normalize_before

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        return self.forward_chunk(x, pos_emb)[0]

    def forward_chunk(
        self, x: torch.Tensor, pos_emb: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) with the attention cache of the frames before it (see the attention's
        ``forward_chunk``) -> (B, T, C) and the new attention cache."""
        if self.normalize_before:
            h, cache = self.self_attn.forward_chunk(self.norm_mha(x), pos_emb, cache)
            x = x + h
            return x + self.feed_forward(self.norm_ff(x)), cache
        h, cache = self.self_attn.forward_chunk(x, pos_emb, cache)
        x = self.norm_mha(x + h)
        return self.norm_ff(x + self.feed_forward(x)), cache


class PreLookaheadLayer(nn.Module):
    """Look ``pre_lookahead_len`` tokens ahead (right zero pad, conv), then a causal conv; residual."""

    def __init__(self, channels: int, pre_lookahead_len: int):
        super().__init__()
        self.pre_lookahead_len = pre_lookahead_len
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=pre_lookahead_len + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.transpose(1, 2)
        out = F.leaky_relu(self.conv1(F.pad(out, (0, self.pre_lookahead_len))))  # default slope 0.01
        out = self.conv2(F.pad(out, (2, 0)))
        return out.transpose(1, 2) + x

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) whose last ``pre_lookahead_len`` frames are lookahead; cache (B, C, 2) the
        previous chunk's last conv1 outputs (None: zeros, as the left pad).

        No padding: conv1 reads the lookahead frames instead of zeros. Returns (B, T - lookahead, C)
        and the new cache (this chunk's last 2 conv1 outputs).
        """
        context = self.conv2.kernel_size[0] - 1
        out = F.leaky_relu(self.conv1(x.transpose(1, 2)))
        new_cache = out[:, :, out.size(2) - context :]
        if cache is None:
            cache = out.new_zeros(out.size(0), out.size(1), context)
        out = self.conv2(torch.cat([cache, out], dim=2))
        return out.transpose(1, 2) + x[:, : x.size(1) - self.pre_lookahead_len], new_cache


class Upsample1D(nn.Module):
    """Nearest upsampling by ``scale_factor``, left zero pad 2*stride, conv k = 2*stride+1."""

    def __init__(self, channels: int, out_channels: int, stride: int, scale_factor: float | None = None):
        super().__init__()
        self.stride = stride
        self.scale_factor = float(stride if scale_factor is None else scale_factor)
        self.conv = nn.Conv1d(channels, out_channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C', T * scale_factor)."""
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="nearest")
        return self.conv(F.pad(x, (self.stride * 2, 0)))

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, T); cache (B, C, 2*stride) the previous upsampled frames (None: zeros)
        -> (B, C', T * scale_factor) and the new cache (the last 2*stride frames of [cache ; up])."""
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="nearest")
        if cache is None:
            cache = x.new_zeros(x.size(0), x.size(1), self.stride * 2)
        x = torch.cat([cache, x], dim=2)
        return self.conv(x), x[:, :, x.size(2) - self.stride * 2 :]


@dataclass
class EncoderCache:
    """Streaming state of ``UpsampleConformerEncoderV2`` after S token frames (2S mel frames).

    lookahead: (B, C, 2) last conv1 outputs of the pre-lookahead layer;
    upsample: (B, C, 2*stride) last upsampled frames before the up conv;
    token_att: (num_blocks, B, H, S, 2*d_k) keys | values of the token-rate layers;
    mel_att: (num_up_blocks, B, H, 2S, 2*d_k) keys | values of the mel-rate layers.
    Never cut: it grows with the request (as upstream).
    """

    lookahead: torch.Tensor
    upsample: torch.Tensor
    token_att: torch.Tensor
    mel_att: torch.Tensor


class UpsampleConformerEncoderV2(nn.Module):
    """Token encoder: embed, look-ahead, conformer blocks, x2 upsampling, more conformer blocks.

    (B, T, input_size) at 25 Hz -> (B, 2T, output_size) at 50 Hz. Full (non-streaming) attention;
    the vocoder decodes one unpadded sequence, so no padding mask is needed.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        input_layer: str = "linear",
        pre_lookahead_len: int = 3,
        num_blocks: int = 6,
        num_up_blocks: int = 4,
        up_stride: int = 2,
        up_scale_factor: float = 2,
        attention_heads: int = 4,
        pos_enc_layer_type: str = "rel_pos_espnet",
        selfattention_layer_type: str = "rel_selfattn",
        key_bias: bool = True,
        linear_units: int = 2048,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        normalize_before: bool = True,
        activation_type: str = "swish",
        **streaming_options,
    ):
        super().__init__()
        # Dropout rates and extra (training / streaming) options are accepted like upstream's
        # **kwargs; inference runs without dropout, on whole sequences.
        for name, value, supported in (
            ("input_layer", input_layer, "linear"),
            ("pos_enc_layer_type", pos_enc_layer_type, "rel_pos_espnet"),
            ("selfattention_layer_type", selfattention_layer_type, "rel_selfattn"),
            ("activation_type", activation_type, "swish"),
        ):
            if value != supported:
                raise ValueError(
                    f"UpsampleConformerEncoderV2: {name}={value!r} is not supported "
                    f"(this checkpoint family uses {supported!r})"
                )
        self._output_size = output_size
        self.normalize_before = normalize_before

        def layer() -> ConformerEncoderLayer:
            return ConformerEncoderLayer(
                output_size, attention_heads, linear_units, key_bias, normalize_before
            )

        self.embed = LinearEmbed(input_size, output_size)
        self.after_norm = nn.LayerNorm(output_size, eps=1e-5)
        self.pre_lookahead_layer = PreLookaheadLayer(output_size, pre_lookahead_len)
        self.encoders = nn.ModuleList([layer() for _ in range(num_blocks)])
        self.up_layer = Upsample1D(output_size, output_size, up_stride, up_scale_factor)
        self.up_embed = LinearEmbed(input_size, output_size)
        self.up_encoders = nn.ModuleList([layer() for _ in range(num_up_blocks)])

    def output_size(self) -> int:
        return self._output_size

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        xs, pos_emb = self.embed(xs)
        xs = self.pre_lookahead_layer(xs)
        for layer in self.encoders:
            xs = layer(xs, pos_emb)
        xs = self.up_layer(xs.transpose(1, 2)).transpose(1, 2)
        xs, pos_emb = self.up_embed(xs)
        for layer in self.up_encoders:
            xs = layer(xs, pos_emb)
        return self.after_norm(xs) if self.normalize_before else xs

    def forward_chunk(
        self, xs: torch.Tensor, last: bool = False, cache: EncoderCache | None = None
    ) -> tuple[torch.Tensor, EncoderCache]:
        """One chunk of token frames (B, T, input_size) at 25 Hz, attending over every frame before it.

        Not last: the chunk's last ``pre_lookahead_len`` frames are lookahead only, the output is
        (B, 2(T - lookahead), C). Last: 3 zero frames are appended after the input Linear + LayerNorm
        + scale (the non-stream right pad), so every frame is emitted: (B, 2T, C).
        Returns the output and the cache including this chunk.
        """
        lookahead = self.pre_lookahead_layer.pre_lookahead_len
        xs = self.embed.scale(xs)
        if last:
            xs = F.pad(xs, (0, 0, 0, lookahead))
        xs, lookahead_cache = self.pre_lookahead_layer.forward_chunk(
            xs, None if cache is None else cache.lookahead
        )
        xs, token_att = self._layers_chunk(self.encoders, xs, None if cache is None else cache.token_att)
        xs, upsample_cache = self.up_layer.forward_chunk(
            xs.transpose(1, 2), None if cache is None else cache.upsample
        )
        xs = self.up_embed.scale(xs.transpose(1, 2))
        xs, mel_att = self._layers_chunk(self.up_encoders, xs, None if cache is None else cache.mel_att)
        if self.normalize_before:
            xs = self.after_norm(xs)
        return xs, EncoderCache(lookahead_cache, upsample_cache, token_att, mel_att)

    def _layers_chunk(
        self, layers: nn.ModuleList, xs: torch.Tensor, cache: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conformer layers over a chunk (B, T, C) with relative positions over cache + chunk."""
        past = 0 if cache is None else cache.size(3)
        pos_emb = relative_position_encoding(past + xs.size(1), self._output_size, xs.device, xs.dtype)
        new_cache = []
        for i, layer in enumerate(layers):
            xs, layer_cache = layer.forward_chunk(xs, pos_emb, None if cache is None else cache[i])
            new_cache.append(layer_cache)
        return xs, torch.stack(new_cache)


# Called after each Euler step with (step index, x, t, estimator output); the conformance tests use it.
StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def cosine_t_span(
    n_steps: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Cosine schedule ``1 - cos(linspace(0, 1, n+1) * pi/2)``: (n_steps + 1,) times in [0, 1]."""
    t_span = torch.linspace(0, 1, n_steps + 1, device=device, dtype=dtype)
    return 1 - torch.cos(t_span * 0.5 * torch.pi)


class CausalConditionalCFM(nn.Module):
    """Conditional flow matching solved with Euler steps and classifier-free guidance.

    The noise is an input (upstream keeps a (1, 80, 30000) buffer drawn once at start-up; the
    vocoder facade draws one per request from a seeded generator, see ``models/vocoder.py``).
    """

    def __init__(self, estimator: DiT, inference_cfg_rate: float = 0.7):
        super().__init__()
        self.estimator = estimator
        self.inference_cfg_rate = float(inference_cfg_rate)
        self.out_channels = estimator.out_channels

    def forward(
        self,
        noise: torch.Tensor,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_steps: int = 10,
        on_step: StepHook | None = None,
    ) -> torch.Tensor:
        """noise, mu, cond: (1, 80, N); mask: (1, 1, N); spks: (1, 80) -> mel (1, 80, N) in float32.

        The state x and the time t stay in float32 whatever the estimator's dtype, so half
        precision only touches the network, not the integration.
        """
        mask_in = torch.cat([mask, mask], dim=0)
        mu_in, spks_in, cond_in = self._guidance_batch(mu, spks, cond)

        def velocity(step: int, x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
            out = self.estimator(x_in, mask_in, mu_in, t_in, spks_in, cond_in)
            if on_step is not None:
                on_step(step, x_in, t_in, out)
            return out

        return self._solve(noise, n_steps, mu.dtype, velocity)

    def forward_chunk(
        self,
        noise: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        n_steps: int = 10,
        cache: list[list[BlockCache]] | None = None,
    ) -> tuple[torch.Tensor, list[list[BlockCache]]]:
        """One chunk of M frames with the estimator caches of the frames before it.

        noise, mu, cond (1, 80, M); spks (1, 80); ``cache[step][block]`` one ``BlockCache`` per Euler
        step and DiT block (None: nothing before). The same schedule, guidance and Euler updates as
        ``forward``, without a mask. Returns mel (1, 80, M) float32 and the caches including the chunk.
        """
        mu_in, spks_in, cond_in = self._guidance_batch(mu, spks, cond)
        new_cache: list[list[BlockCache]] = []

        def velocity(step: int, x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
            out, step_cache = self.estimator.forward_chunk(
                x_in, mu_in, t_in, spks_in, cond_in, None if cache is None else cache[step]
            )
            new_cache.append(step_cache)
            return out

        return self._solve(noise, n_steps, mu.dtype, velocity), new_cache

    @staticmethod
    def _guidance_batch(
        mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row 2 of the batch is the unconditional branch: mu, speaker and prompt condition zeroed."""
        return (
            torch.cat([mu, torch.zeros_like(mu)], dim=0),
            torch.cat([spks, torch.zeros_like(spks)], dim=0),
            torch.cat([cond, torch.zeros_like(cond)], dim=0),
        )

    def _solve(
        self,
        noise: torch.Tensor,
        n_steps: int,
        net_dtype: torch.dtype,
        velocity: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Euler steps on the cosine schedule from ``noise`` (1, 80, N) -> (1, 80, N) float32.

        ``velocity(step, x_in, t_in)`` is the estimator on the guidance batch [x, x] (2, 80, N); its two
        rows are combined with rate ``inference_cfg_rate``.
        """
        if self.inference_cfg_rate <= 0:
            raise ValueError("inference_cfg_rate must be > 0 (classifier-free guidance is always on)")
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        t_span = cosine_t_span(n_steps, noise.device, torch.float32)
        x = noise.to(torch.float32)
        t = t_span[0].unsqueeze(0)
        dt = t_span[1] - t_span[0]
        rate = self.inference_cfg_rate
        for step in range(1, n_steps + 1):
            x_in = torch.cat([x, x], dim=0).to(net_dtype)
            t_in = torch.cat([t, t], dim=0).to(net_dtype)
            out = velocity(step - 1, x_in, t_in)
            v_cond, v_uncond = out.float().split([x.size(0), x.size(0)], dim=0)
            x = x + dt * ((1.0 + rate) * v_cond - rate * v_uncond)
            t = t + dt  # t is accumulated, and the next dt is measured from it (as upstream)
            if step < n_steps:
                dt = t_span[step + 1] - t
        return x


class CausalMaskedDiffWithXvec(nn.Module):
    """The flow: speaker projection, token embedding + encoder -> mu, CFM decoder -> mel."""

    def __init__(
        self,
        input_size: int = 512,
        output_size: int = 80,
        spk_embed_dim: int = 192,
        output_type: str = "mel",
        vocab_size: int = 5121,
        encoder: UpsampleConformerEncoderV2 | None = None,
        decoder: CausalConditionalCFM | None = None,
        input_embedding: nn.Module | None = None,
    ):
        super().__init__()
        if encoder is None or decoder is None:
            raise ValueError("CausalMaskedDiffWithXvec needs an encoder and a decoder in cosyvoice.yaml")
        self.input_size = input_size
        self.output_size = output_size
        self.vocab_size = vocab_size
        self.output_type = output_type
        self.pre_lookahead_len = encoder.pre_lookahead_layer.pre_lookahead_len
        self.up_rate = encoder.up_layer.stride
        self.input_embedding = (
            input_embedding if input_embedding is not None else nn.Embedding(vocab_size, input_size)
        )
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, output_size)
        self.encoder = encoder
        self.encoder_proj = nn.Linear(encoder.output_size(), output_size)
        self.decoder = decoder

    def speaker_projection(self, embedding: torch.Tensor) -> torch.Tensor:
        """(1, 192) speaker embedding -> (1, 80): L2-normalise, then the affine layer."""
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(1, T, 2) token pairs (prompt then target) -> mu (1, 2T, 80)."""
        h = self.encoder(self.input_embedding(torch.clamp(tokens, min=0)))
        return self.encoder_proj(h)

    def encode_chunk(
        self, tokens: torch.Tensor, last: bool, cache: EncoderCache | None = None
    ) -> tuple[torch.Tensor, EncoderCache]:
        """One chunk of (1, T, 2) token pairs -> mu (1, 2(T - lookahead), 80), or (1, 2T, 80) when
        ``last``, and the encoder cache including the chunk (``UpsampleConformerEncoderV2.forward_chunk``)."""
        h, cache = self.encoder.forward_chunk(self.input_embedding(torch.clamp(tokens, min=0)), last, cache)
        return self.encoder_proj(h), cache

    @torch.inference_mode()
    def inference(
        self,
        token: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_feat: torch.Tensor,
        embedding: torch.Tensor,
        noise: torch.Tensor,
        n_steps: int = 10,
        on_step: StepHook | None = None,
    ) -> torch.Tensor:
        """Mel frames for ``token``, conditioned on the prompt.

        token (1, T, 2), prompt_token (1, Tp, 2) int64; prompt_feat (1, 2*Tp, 80) aligned prompt mel;
        embedding (1, 192); noise (1, 80, >= 2*(Tp+T)). Returns (1, 80, 2T) float32 (prompt frames dropped).
        """
        dtype = self.encoder_proj.weight.dtype
        spks = self.speaker_projection(embedding.to(dtype))
        tokens = torch.cat([prompt_token, token], dim=1)
        mu = self.encode(tokens)
        n_frames = mu.size(1)
        mel_len1 = prompt_feat.size(1)
        if mel_len1 != self.up_rate * prompt_token.size(1):
            raise ValueError(
                f"prompt mel has {mel_len1} frames but {prompt_token.size(1)} prompt tokens "
                f"need {self.up_rate * prompt_token.size(1)}; align it first"
            )
        if noise.size(2) < n_frames:
            raise ValueError(f"noise has {noise.size(2)} frames, {n_frames} are needed")
        cond = torch.zeros_like(mu)
        cond[:, :mel_len1] = prompt_feat.to(dtype)
        mask = torch.ones(1, 1, n_frames, device=mu.device, dtype=dtype)
        feat = self.decoder(
            noise[:, :, :n_frames],
            mu.transpose(1, 2).contiguous(),
            mask,
            spks,
            cond.transpose(1, 2).contiguous(),
            n_steps,
            on_step,
        )
        return feat[:, :, mel_len1:]
