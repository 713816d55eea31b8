"""A Step1 config class registered with transformers, so vLLM never runs the checkpoint's Python code.

What it fixes: the checkpoint's config.json names ``configuration_step1.Step1Config`` in ``auto_map``,
so vLLM needs ``--trust-remote-code`` just to read the configuration (vLLM has its own model code for
Step1). With this class registered for model_type "step1", transformers uses it and the folder's
Python files are never imported. It also makes ``tie_word_embeddings`` default to False: the
checkpoint ships a separate ``lm_head.weight``, but vLLM's Step1ForCausalLM ties the head to the
embedding when the config lacks the key (greedy output is then garbage). Passing
``hf_overrides={"tie_word_embeddings": false}`` is still recommended for servers without this plugin.

When to drop: when transformers or vLLM ship a "step1" config class of their own that defaults to
untied embeddings.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig


class Step1Config(PretrainedConfig):
    """Step1 (Step-Audio-EditX LLM) configuration; every value comes from config.json.

    Defaults are the real checkpoint's sizes (STEP1_FACTS §1); vLLM reads ``num_attention_groups`` as
    the KV head count and ``max_seq_len`` as the context length.
    """

    model_type = "step1"

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
        tie_word_embeddings: bool = False,
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
        super().__init__(
            bos_token_id=bos_token_id,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


def register_config() -> None:
    """Register Step1Config for model_type "step1" with transformers' AutoConfig (idempotent)."""
    AutoConfig.register(Step1Config.model_type, Step1Config, exist_ok=True)
