"""Step1: the Step-Audio-EditX language model (model_type "step1"), written natively for transformers.

A decoder-only transformer: pre-norm RMSNorm, grouped-query attention without rotary embeddings but
with *square-root* ALiBi (bias ``-slope_h * sqrt(i - j)``, causal mask folded in), SwiGLU MLP and an
untied ``lm_head``. The math follows tests/fixtures/reference/llm/STEP1_FACTS.md; the parameter names are the
checkpoint's, so ``config.json`` + safetensors load directly with ``Step1ForCausalLM.from_pretrained``
and nothing from the model folder is executed (its ``modeling_step1.py`` is ignored).

Shapes use B batch, T new tokens, K keys (cache + new), H hidden, NH query heads, G KV groups,
hd = H / NH head size, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast


class Step1Config(PreTrainedConfig):
    """Configuration of a Step1 model; every value is read from the checkpoint's ``config.json``.

    The defaults describe the real Step-Audio-EditX LLM (3.5 B parameters). Word embeddings are
    never tied: the checkpoint ships a separate ``lm_head.weight`` and its config.json has no
    ``tie_word_embeddings`` key, which some transformers versions then read as "tie" (see STEP1_FACTS
    §2.7), so the flag is forced to False whatever a caller passes.
    """

    model_type = "step1"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        hidden_size: int = 3072,
        intermediate_size: int = 8192,
        num_attention_heads: int = 48,
        num_attention_groups: int = 4,
        num_hidden_layers: int = 32,
        max_seq_len: int = 32768,
        vocab_size: int = 74752,
        rms_norm_eps: float = 1e-5,
        bos_token_id: int = 1,
        pad_token_id: int = 0,
        eos_token_id: int = 3,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        **kwargs,
    ) -> None:
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_attention_groups = num_attention_groups
        self.num_hidden_layers = num_hidden_layers
        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        # transformers 5 no longer keeps use_cache on model configs by itself; we read it in forward.
        self.use_cache = use_cache
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(
            bos_token_id=bos_token_id,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=False,
            **kwargs,
        )
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
            )
        if num_attention_heads % num_attention_groups:
            raise ValueError(
                f"num_attention_heads {num_attention_heads} is not divisible by "
                f"num_attention_groups {num_attention_groups}"
            )

    @property
    def head_dim(self) -> int:
        """Size of one attention head (derived; not stored in config.json)."""
        return self.hidden_size // self.num_attention_heads


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes (NH,) float32, in head order.

    With n = 2^floor(log2 NH): heads 0..n-1 get 2^(-8k/n), k = 1..n; when NH is not a power of two
    the remaining NH - n heads get 2^(-4k/n) for odd k = 1, 3, ... (appended at the end, so the
    sequence is not monotonic). Computed like the checkpoint's code: fp32 ``pow(base, k)``.
    """
    n = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-8.0 / n)
    slopes = torch.pow(base, torch.arange(1, n + 1, dtype=torch.int32))
    if num_heads > n:
        extra_base = 2.0 ** (-4.0 / n)
        odd = torch.arange(1, 2 * (num_heads - n), 2, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra_base, odd)])
    return slopes.to(torch.float32)


_ALIBI_VECTOR_LIMIT = 1 << 24  # float32 elements built at once; larger biases go one head at a time


def alibi_bias(
    slopes: torch.Tensor, query_len: int, key_len: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Square-root ALiBi bias with the causal mask folded in: (NH, Tq, K) in ``dtype``.

    Queries are the last ``query_len`` of ``key_len`` absolute positions (0-based, cache included):
    ``bias[h, i, j] = -slope_h * sqrt(pos_i - j)`` for j <= pos_i, ``-inf`` for j > pos_i.
    Each head is computed in float32 and then rounded to ``dtype`` (as the checkpoint's code does),
    one head at a time so a long bf16 prefill never holds the whole bias in float32.
    """
    device = slopes.device
    q_pos = torch.arange(key_len - query_len, key_len, device=device)
    k_pos = torch.arange(key_len, device=device)
    distance = (q_pos[:, None] - k_pos[None, :]).to(torch.float32)
    root = torch.sqrt(distance.clamp(min=0))
    future = distance < 0
    if slopes.shape[0] * query_len * key_len <= _ALIBI_VECTOR_LIMIT:  # decode steps, short prompts
        bias = -slopes[:, None, None].to(torch.float32) * root[None]
        return bias.masked_fill(future[None], float("-inf")).to(dtype)
    bias = torch.empty((slopes.shape[0], query_len, key_len), dtype=dtype, device=device)
    for h, slope in enumerate(slopes.to(torch.float32)):
        bias[h] = (-slope * root).masked_fill(future, float("-inf"))
    return bias


class Step1RMSNorm(nn.Module):
    """RMSNorm as the checkpoint computes it: fp32 variance, rsqrt cast back to x's dtype, then ``x·r·w``."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        r = torch.rsqrt(variance + self.eps).to(x.dtype)
        return x * r * self.weight


class Step1Attention(nn.Module):
    """Grouped-query self-attention with an additive ALiBi bias; no rotary embedding, no biases.

    The cache holds keys/values right after the projections, (B, K, G·hd), before the head split and
    before the GQA repeat (the checkpoint's layout). Query head h uses KV group floor(h / (NH/G)).
    """

    def __init__(self, config: Step1Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_groups = config.num_attention_groups
        self.head_dim = config.head_dim
        kv_dim = self.num_groups * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """x (B, T, H); bias (NH, T, K) already in x's dtype -> (B, T, H)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x)
        v = self.v_proj(x)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        keys = k.shape[1]
        repeat = self.num_heads // self.num_groups
        # Contiguous grouping: repeat_interleave, not tile (heads 0..repeat-1 share group 0).
        k = k.view(b, keys, self.num_groups, self.head_dim).transpose(1, 2).repeat_interleave(repeat, dim=1)
        v = v.view(b, keys, self.num_groups, self.head_dim).transpose(1, 2).repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class Step1MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Step1DecoderLayer(nn.Module):
    """Pre-norm block: ``a = x + attn(norm(x)); out = a + mlp(norm(a))``."""

    def __init__(self, config: Step1Config, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Step1Attention(config, layer_idx)
        self.post_attention_layernorm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Step1MLP(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), bias, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Step1PreTrainedModel(PreTrainedModel):
    config_class = Step1Config
    base_model_prefix = "model"
    _no_split_modules = ["Step1DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, Step1RMSNorm):
            nn.init.ones_(module.weight)


class Step1Model(Step1PreTrainedModel):
    """Embedding, decoder layers and the final norm (checkpoint prefix ``model.``)."""

    def __init__(self, config: Step1Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Step1DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Step1RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Slopes are not a buffer: from_pretrained materialises non-persistent buffers uninitialised.
        self._slopes: dict[torch.device, torch.Tensor] = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, Cache | None, tuple[torch.Tensor, ...] | None]:
        """Returns (final-norm output (B, T, H), cache, hidden states or None).

        Hidden states follow the checkpoint's convention: the input of every layer (embedding output,
        then outputs of layers 0..NL-2) followed by the final-norm output; NL + 1 tensors.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        cache = past_key_values if use_cache or past_key_values is not None else None
        # ALiBi positions are the cached length + the new tokens, so a cache must start at position 0.
        past = cache.get_seq_length() if cache is not None else 0
        t = x.shape[1]
        slopes = self._slopes.get(x.device)
        if slopes is None:
            slopes = self._slopes[x.device] = alibi_slopes(self.config.num_attention_heads).to(x.device)
        # Built in fp32, then rounded to the activation dtype as the checkpoint's code does.
        bias = alibi_bias(slopes, t, past + t, x.dtype)
        hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if hidden is not None:
                hidden.append(x)
            x = layer(x, bias, cache)
        x = self.norm(x)
        if hidden is not None:
            hidden.append(x)
        return x, cache, tuple(hidden) if hidden is not None else None


class Step1ForCausalLM(Step1PreTrainedModel, GenerationMixin):
    """Step1 with its (untied) output head; works with ``generate`` and manual incremental decoding."""

    _tied_weights_keys = None  # the checkpoint's lm_head is its own matrix; never tie it

    def __init__(self, config: Step1Config) -> None:
        super().__init__(config)
        self.model = Step1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def tie_weights(self, *args, **kwargs) -> None:
        """No-op: the output head is never tied to the embedding (STEP1_FACTS §2.7)."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, T) -> logits (B, T or logits_to_keep, V) in the model dtype.

        ``attention_mask`` and ``position_ids`` carry no information for this model (positions come
        from the cache length); a mask with padding is rejected because padding cannot be honoured.
        """
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
            raise ValueError(
                "Step1 does not support padded batches (ALiBi ignores the attention mask); "
                "run unpadded sequences one at a time"
            )
        if use_cache is None:
            use_cache = getattr(self.config, "use_cache", True)
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        h, cache, hidden = self.model(
            input_ids=input_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)
        return CausalLMOutputWithPast(
            logits=logits, past_key_values=cache if use_cache else None, hidden_states=hidden
        )


AutoConfig.register("step1", Step1Config, exist_ok=True)
AutoModelForCausalLM.register(Step1Config, Step1ForCausalLM, exist_ok=True)
