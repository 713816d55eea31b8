"""Demo Step-Audio-EditX LLM: tiny random Step1 weights + a sentencepiece tokenizer, in the real layout.

Writes ``<root>/Step-Audio-EditX/``: config.json (model_type "step1", the real field names, no
``tie_word_embeddings``), model-00001.safetensors (bf16) + model.safetensors.index.json,
tokenizer.model (sentencepiece trained now on synthetic English, with the real special-id layout:
0 <unk>, 1 <s>, 2 </s>, 3 <|EOT|>, 4 <|BOT|>, 5-67 reserved, bytes from 68 so "\\n" = 78) and
tokenizer_config.json. The real vocab size (74752) is kept so audio ids 65536+ are valid.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import save_file

from model_layout import LLM_FOLDER, SAFETENSORS_INDEX
from models.audio_tokens import AUDIO_CODES, AUDIO_ID_OFFSET, VQ02_CODES
from models.edit_tasks import EDIT_TASKS
from models.prompts import (
    CLONE_SYSTEM_PROMPT_TEMPLATE,
    EDIT_SYSTEM_PROMPT,
    EOT_ID,
)

log = logging.getLogger(__name__)

SHARD = "model-00001.safetensors"
CONFIG = {
    "architectures": ["Step1ForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_step1.Step1Config",
        "AutoModelForCausalLM": "modeling_step1.Step1ForCausalLM",
    },
    "model_type": "step1",
    # Every width a multiple of 32, as in the real model (bitsandbytes' CPU 4-bit kernels need it).
    "hidden_size": 96,
    "intermediate_size": 128,
    "num_attention_heads": 12,  # 8 + 4: not a power of two, like the real 48 = 32 + 16
    "num_attention_groups": 4,  # 3 query heads per KV group: key/value width 32
    "num_hidden_layers": 2,
    "max_seq_len": 32768,
    "vocab_size": 74752,
    "rms_norm_eps": 1e-05,
    "bos_token_id": 1,
    "pad_token_id": 0,
    "eos_token_id": 3,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}
# The released Step-Audio-EditX LLM's layer sizes (tests/fixtures/reference/llm/STEP1_FACTS.md), for
# benchmarks that write random weights of the real width (and REAL_LAYERS deep, or fewer).
REAL_SHAPES = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_attention_heads": 48,
    "num_attention_groups": 4,
    "vocab_size": 74752,
}
REAL_LAYERS = 32
TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<unk>",
    "additional_special_tokens": ["<|BOT|>", "<|EOT|>"],
    "add_bos_token": False,
    "add_eos_token": False,
    "legacy": False,
    "add_prefix_space": True,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 32768,
    "sp_model_kwargs": {},
}
RESERVED = range(5, 68)  # <|reserved_N|> control pieces, so byte pieces start at 68

# The demo weights are untrained. So that the demo pipeline still yields audio tokens and ends,
# one hidden channel carries a constant through every layer (no layer writes to it) and the
# lm_head column for that channel acts as a per-id logit bias: audio ids up, eos a little below,
# text and special ids far down. Only that keeps the demo exercisable; the audio is noise.
BIAS_CHANNEL = 0
BIAS_CHANNEL_VALUE = 4.0
LOGIT_BIAS_AUDIO = 8.0
LOGIT_BIAS_VQ02 = 0.1  # extra for vq02 codes, so 2+3 groups appear often enough
LOGIT_BIAS_EOS = 5.0
LOGIT_BIAS_TEXT = -6.0
EOS_LOGIT_STD = 2.8  # eos logit varies with the context, so the stream ends after a few hundred tokens
BIAS_CHANNEL_NORMED = 2.7  # the bias channel after the final RMS norm (measured: 2.72 at hidden 96)
HEAD_STD = 0.02

_WORDS = (
    "the a an and or but of to in on at for with from by voice audio speech sound speaker text tone "
    "happy sad angry calm quiet loud fast slow warm soft clear bright dark morning evening weather "
    "today tomorrow yesterday park city river mountain music story news radio friend family teacher "
    "child people time day night year world life hand house door window water light good great nice "
    "small big old new long short first last every some many more most very really just also only "
    "is are was were be been have has had do does did will would can could should say said make made "
    "go went come came see saw know think take give find tell ask work call try feel leave put keep "
    "let begin seem help talk turn start show hear play run move live believe bring happen write sit "
    "stand lose pay meet include continue set learn change lead understand watch follow stop create "
    "speak read spend grow open walk win offer remember love consider appear buy wait serve die send "
    "human assistant system generate following timbre prosody speaking style name prompt tokens "
    "hello there thank you please yes no one two three four five ten hundred"
).split()


def _corpus(rng: np.random.Generator, n_sentences: int = 1500) -> list[str]:
    # One line per sentence, without "\n": the newline must stay a byte piece (id 78) as in the real model.
    lines = CLONE_SYSTEM_PROMPT_TEMPLATE.splitlines() + EDIT_SYSTEM_PROMPT.splitlines()
    lines += ["system", "human", "assistant"] * 20
    lines += [" ".join(opts) for opts in EDIT_TASKS.values() if opts]
    for _ in range(n_sentences):
        words = rng.choice(_WORDS, size=int(rng.integers(4, 14)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + str(rng.choice([".", "!", "?", ",", "."]))
        if rng.random() < 0.2:
            sentence += f" {int(rng.integers(0, 10000))}"
        lines.append(sentence)
    return lines


def train_tokenizer(rng: np.random.Generator) -> bytes:
    """A sentencepiece unigram model (bytes) with the checkpoint's special-id layout."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(rng)),
        model_writer=model,
        model_type="unigram",
        vocab_size=700,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=["<|EOT|>", "<|BOT|>"] + [f"<|reserved_{i}|>" for i in RESERVED],
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _weights(rng: np.random.Generator, config: dict) -> dict[str, torch.Tensor]:
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    nh, g = config["num_attention_heads"], config["num_attention_groups"]
    kv = h // nh * g

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    w: dict[str, np.ndarray] = {}
    embed = normal((v, h), 1.0)
    embed[:, BIAS_CHANNEL] = BIAS_CHANNEL_VALUE
    w["model.embed_tokens.weight"] = embed
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = 1 + normal((h,), 0.1)
        w[p + "self_attn.q_proj.weight"] = normal((h, h), h**-0.5)
        w[p + "self_attn.k_proj.weight"] = normal((kv, h), h**-0.5)
        w[p + "self_attn.v_proj.weight"] = normal((kv, h), h**-0.5)
        o = normal((h, h), h**-0.5)
        o[BIAS_CHANNEL] = 0.0  # keep the bias channel constant through the residual stream
        w[p + "self_attn.o_proj.weight"] = o
        w[p + "post_attention_layernorm.weight"] = 1 + normal((h,), 0.1)
        w[p + "mlp.gate_proj.weight"] = normal((i, h), h**-0.5)
        w[p + "mlp.up_proj.weight"] = normal((i, h), h**-0.5)
        down = normal((h, i), i**-0.5)
        down[BIAS_CHANNEL] = 0.0
        w[p + "mlp.down_proj.weight"] = down
    norm = 1 + normal((h,), 0.1)
    norm[BIAS_CHANNEL] = 1.0
    w["model.norm.weight"] = norm
    head = normal((v, h), HEAD_STD)
    # After the final norm the bias channel is about BIAS_CHANNEL_VALUE / rms(x) = BIAS_CHANNEL_NORMED.
    bias = np.full(v, LOGIT_BIAS_TEXT, dtype=np.float32)
    bias[AUDIO_ID_OFFSET : AUDIO_ID_OFFSET + AUDIO_CODES] = LOGIT_BIAS_AUDIO
    bias[AUDIO_ID_OFFSET : AUDIO_ID_OFFSET + VQ02_CODES] += LOGIT_BIAS_VQ02
    bias[EOT_ID] = LOGIT_BIAS_EOS
    head[EOT_ID] = normal((h,), EOS_LOGIT_STD / h**0.5)
    head[:, BIAS_CHANNEL] = bias / BIAS_CHANNEL_NORMED
    w["lm_head.weight"] = head
    return {k: torch.from_numpy(w.pop(k)).to(torch.bfloat16) for k in list(w)}


def write_checkpoint(out: Path, weights: dict[str, torch.Tensor], config: dict) -> None:
    """Write ``weights`` as one safetensors shard + its index, and ``config`` as config.json."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / SHARD), metadata={"format": "pt"})
    (out / SHARD).chmod(0o644)  # readable by another user, e.g. the container's uid 10001
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": {k: SHARD for k in weights}}
    (out / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write(root: Path, seed: int, config: dict | None = None) -> None:
    """Write ``root/Step-Audio-EditX/`` (LLM files only; the vocoder part adds CosyVoice-300M-25Hz/).

    ``config`` overrides layer sizes of the tiny CONFIG (benchmarks write real-width layers).
    """
    config = {**CONFIG, **(config or {})}
    start = time.perf_counter()
    rng = np.random.default_rng([seed, 0x57E91])
    out = Path(root) / LLM_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(train_tokenizer(rng))
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    weights = _weights(rng, config)
    if any(config[k] != CONFIG[k] for k in ("hidden_size", "num_hidden_layers")):
        _calibrate_bias(weights, config)
    write_checkpoint(out, weights, config)
    log.info("demo LLM written to %s in %.2f s", out, time.perf_counter() - start)


def _calibrate_bias(weights: dict[str, torch.Tensor], config: dict) -> None:
    """BIAS_CHANNEL_NORMED holds at the tiny demo shapes only: a wider or deeper residual stream
    divides the bias channel by a larger RMS, which shrinks every logit bias (a real-width random
    model then mostly emits text ids and few audio groups). Measure the channel after the final
    norm on a sample of ids (the model built on ``weights`` themselves, before anything is written)
    and rescale lm_head's bias column in ``weights`` to it."""
    from models.step1 import Step1Config, Step1ForCausalLM

    with torch.device("meta"):
        model = Step1ForCausalLM(Step1Config(**config))
    model.load_state_dict(weights, assign=True)
    seen: list[float] = []
    hook = model.model.norm.register_forward_hook(
        lambda _module, _inputs, output: seen.append(output[0, :, BIAS_CHANNEL].float().mean().item())
    )
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, config["vocab_size"], 32))[None]
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    del model
    head = weights["lm_head.weight"]
    head[:, BIAS_CHANNEL] = (head[:, BIAS_CHANNEL].float() * (BIAS_CHANNEL_NORMED / seen[0])).to(head.dtype)
    log.info("demo LLM: bias channel %.3f after the final norm (tiny: %.1f)", seen[0], BIAS_CHANNEL_NORMED)
