"""The Step1 LLM stage: load a variant, build clone/edit prompts, sample audio tokens, parse them.

    llm = Step1LLM.load(root / "Step-Audio-EditX", variant="base")        # or "bnb-4bit"
    result = llm.clone(prompt_text, prompt_token_str, target_text, GenerationOptions(seed=0))
    result.audio_tokens   # mixed stream in [0, 5120): whole [02, 02, 06, 06, 06] groups

Variants: "base" loads the checkpoint's bf16 weights (bf16 on CUDA, fp32 on CPU, fp16 on request);
"bnb-4bit" quantizes the linear layers of the decoder to bitsandbytes NF4 with double quantization
while loading (embedding, norms and lm_head stay in the compute dtype), or loads a folder that was
saved pre-quantized (detected from ``quantization_config`` in its config.json).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from errors import GenerationCancelled, ModelFilesError, OptionsError, TextInputError
from model_layout import VARIANTS
from models.decode import DynamicDecoder, PrefixStore, make_static_decoder, resolve_decode_mode
from models.device import pick_device, pick_dtype
from models.generation import REPETITION_THRESHOLD, REPETITION_WINDOW, GenerationOptions, TokenStreamLLM
from models.prompts import StepTextTokenizer
from models.step1 import Step1Config, Step1ForCausalLM

log = logging.getLogger(__name__)

# transformers' default top_k, which upstream's generate() call inherits (it sets no top_k).
DEFAULT_TOP_K = 50
NF4_BLOCK = 64  # bitsandbytes 4-bit blocksize: one absmax per 64 weights
NESTED_BLOCK = 256  # double quantization: the absmax values are 8-bit quantized in blocks of 256
NF4_CODE = 16  # fp32 entries of the NF4 code book
NESTED_CODE = 256  # fp32 entries of the 8-bit code book of the nested absmax
# bitsandbytes' CPU 4-bit kernels on CPUs with AVX-512-BF16/AMX pack the weights in blocks of 32
# output rows and assert N % 32 == 0; every real Step1 width is a multiple of it.
BNB_CPU_BLOCK_N = 32
# keys/values of voices' prompt turns kept between requests: ~14 MB a voice at the real shapes in
# bf16 (32 layers × 2 × ~420 ids × 256 × 2 bytes), twice that in fp32
DEFAULT_PREFIX_CACHE_MB = 256.0


class RepetitionAwareLogitsProcessor(LogitsProcessor):
    """Upstream's rule: if the last token fills more than 10% of the last 10 tokens, forbid it next.

    With a full window of 10 (prompt included), a last token seen at least twice in it gets -inf.
    """

    def __init__(self, window: int = REPETITION_WINDOW, threshold: float = REPETITION_THRESHOLD) -> None:
        self.window = window
        self.threshold = threshold

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids (B, L), scores (B, V) -> scores with the repeated last token masked."""
        if input_ids.shape[1] < self.window:
            return scores
        window = input_ids[:, -self.window :]
        last = window[:, -1:]
        ratio = (window == last).sum(dim=1, keepdim=True).float() / self.window
        # No host synchronisation (a GPU step stays queued): mask in place through a where.
        current = scores.gather(1, last)
        scores.scatter_(1, last, torch.where(ratio > self.threshold, float("-inf"), current))
        return scores


def sample_from_scores(scores: torch.Tensor, generator: torch.Generator | None) -> torch.LongTensor:
    """Draw one id per row from softmax(scores) (B, V) -> (B, 1), by inverse CDF.

    Same distribution as torch.multinomial, which is far slower on CPU for a 74752-id vocabulary.
    u is drawn in (0, 1], so an id with zero probability (score -inf) is never returned.
    """
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
    u = 1.0 - torch.rand((scores.shape[0], 1), generator=generator, device=scores.device)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=scores.shape[-1] - 1)
    # Guard against rounding at the top end: fall back to the most likely id of the row.
    bad = ~torch.isfinite(scores.gather(1, idx))
    return torch.where(bad, scores.argmax(dim=-1, keepdim=True), idx)  # no host synchronisation


def estimate_weight_bytes(
    config: Step1Config, variant: str = "base", dtype: torch.dtype = torch.bfloat16
) -> int:
    """Weight memory (bytes) of a Step1 model from its parameter shapes, without loading it.

    "base": every parameter in ``dtype``. "bnb-4bit": the decoder's linear weights as NF4 (half a
    byte each) plus double-quantization state (one uint8 absmax per 64 weights, one fp32 absmax per
    256 absmax values, the 16-entry NF4 and 256-entry nested fp32 code books and an fp32 offset per
    matrix); embedding, lm_head and
    norms stay in ``dtype`` (transformers keeps the output head unquantized).
    """
    if variant not in VARIANTS:
        raise OptionsError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_attention_groups * config.head_dim
    linear_shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    per_layer_linear = sum(a * b for a, b in linear_shapes)
    dense = 2 * v * h + (2 * config.num_hidden_layers + 1) * h  # embedding, lm_head, norms
    item = torch.finfo(dtype).bits // 8
    if variant == "base":
        return (dense + config.num_hidden_layers * per_layer_linear) * item
    quantized = 0
    for a, b in linear_shapes:
        n = a * b
        blocks = math.ceil(n / NF4_BLOCK)
        quantized += (
            math.ceil(n / 2)
            + blocks
            + 4 * math.ceil(blocks / NESTED_BLOCK)
            + 4 * NESTED_CODE
            + 4 * NF4_CODE
            + 4
        )
    return dense * item + config.num_hidden_layers * quantized


def measured_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a loaded model's parameters, buffers and bitsandbytes quantization state."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for p in model.parameters():
        add(p)
        state = getattr(p, "quant_state", None)
        if state is not None:
            add(state.absmax)
            add(state.code)
            if getattr(state, "nested", False):
                add(state.offset)
                add(state.state2.absmax)
                add(state.state2.code)
    for b in model.buffers():
        add(b)
    return total


def read_llm_config(model_dir: Path) -> dict:
    """The LLM folder's config.json as a dict; a ModelFilesError names what is wrong with it."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelFilesError(
            f"no config.json in {path.parent.name}/; pass the Step-Audio-EditX folder "
            "(or run scripts/make_demo_models.py for demo weights)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFilesError(
            f"cannot read config.json in {path.parent.name}/ ({exc}); download it again"
        ) from exc
    if not isinstance(raw, dict):
        raise ModelFilesError(f"config.json in {path.parent.name}/ is not a JSON object")
    return raw


def bnb_shape_problem(config: dict) -> str | None:
    """Why bitsandbytes 4-bit cannot quantize this model's linear layers on every CPU, or None.

    Each quantized matrix's output width must be a multiple of 32 (see BNB_CPU_BLOCK_N).
    """
    try:
        hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        heads, groups = int(config["num_attention_heads"]), int(config["num_attention_groups"])
    except (KeyError, TypeError, ValueError):
        return "config.json lacks the layer sizes"
    widths = {"hidden_size": hidden, "intermediate_size": inter, "key/value width": groups * hidden // heads}
    bad = {name: w for name, w in widths.items() if w % BNB_CPU_BLOCK_N}
    if bad:
        shown = ", ".join(f"{name} {w}" for name, w in bad.items())
        return (
            f"bitsandbytes 4-bit needs layer widths that are multiples of {BNB_CPU_BLOCK_N} ({shown} are not)"
        )
    return None


def variant_problem(model_dir: Path, variant: str) -> str | None:
    """Why ``variant`` cannot run from ``model_dir`` here (None when it can): its files, its shapes,
    or a missing bitsandbytes. The page offers only variants without a problem."""
    if variant not in VARIANTS:
        return f"unknown variant {variant!r}"
    try:
        config = read_llm_config(model_dir)
    except ModelFilesError as exc:
        return str(exc)
    if variant == "bnb-4bit" and not config.get("quantization_config"):
        problem = bnb_shape_problem(config)
        if problem:
            return problem
        try:
            import bitsandbytes  # noqa: F401 - only whether it imports
        except Exception as exc:  # noqa: BLE001 - a broken install raises anything
            return f"bitsandbytes is not usable here ({type(exc).__name__})"
    return None


def load_step1_model(
    model_dir: Path, variant: str = "base", device: str = "auto", dtype: str = "auto"
) -> torch.nn.Module:
    """Load the LLM weights from ``model_dir`` (config.json + safetensors, single file or sharded).

    Nothing from the folder is executed: model_type "step1" uses our Step1ForCausalLM, and any
    other model_type is refused (loading it would mean running the folder's Python code).
    """
    model_dir = Path(model_dir)
    if variant not in VARIANTS:
        raise OptionsError(f"unknown LLM variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    raw = read_llm_config(model_dir)
    if raw.get("model_type") != Step1Config.model_type:
        raise ModelFilesError(
            f"config.json in {model_dir.name}/ has model_type {raw.get('model_type')!r}, "
            "not 'step1'; pass the Step-Audio-EditX folder"
        )
    dev = pick_device(device)
    # Weights go straight to the target device (no full CPU copy of a 7 GB model first).
    kwargs: dict = {"device_map": {"": str(dev)}}
    pre_quantized = raw.get("quantization_config")
    if pre_quantized:
        method = pre_quantized.get("quant_method")
        if method != "bitsandbytes":
            raise ModelFilesError(
                f"{model_dir.name}/ holds a {method!r}-quantized checkpoint, which the "
                "native LLM backend does not load; use --llm-backend vllm for it, or "
                "the base Step-Audio-EditX folder with the bnb-4bit variant"
            )
        if variant != "bnb-4bit":
            log.debug("LLM: %s is pre-quantized with bitsandbytes; loading it as bnb-4bit", model_dir)
            variant = "bnb-4bit"
        kwargs["dtype"] = pick_dtype(dev, dtype)
    elif variant == "bnb-4bit":
        problem = bnb_shape_problem(raw)
        if problem:
            raise OptionsError(f"the bnb-4bit variant cannot run this model: {problem}; use base")
        compute = pick_dtype(dev, dtype)
        kwargs["dtype"] = compute
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    else:
        kwargs["dtype"] = pick_dtype(dev, dtype)

    start = time.perf_counter()
    try:
        model, info = Step1ForCausalLM.from_pretrained(model_dir, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:  # a damaged or unreadable safetensors file
        raise ModelFilesError(
            f"cannot load the LLM weights in {model_dir.name}/ ({exc}); download them again"
        ) from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelFilesError(
            f"{model_dir.name}/ is missing weights {missing[:5]} ({len(missing)} in all); "
            "the download is incomplete or not a Step-Audio-EditX checkpoint"
        )
    model.eval()
    log.debug(
        "LLM: loaded %s (%s, %s on %s) in %.2f s, %.1f MB of weights",
        model_dir.name,
        variant,
        str(kwargs["dtype"]).replace("torch.", ""),
        dev,
        time.perf_counter() - start,
        measured_weight_bytes(model) / 1e6,
    )
    return model


class Step1LLM(TokenStreamLLM):
    """The native LLM backend: our Step1 model + sampling; one generation at a time per instance."""

    backend = "native"
    applies_repetition_rule = True

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: StepTextTokenizer,
        variant: str,
        model_dir: Path,
        decode: str = "auto",
        static_capacity: int | None = None,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.variant = variant
        self.model_dir = Path(model_dir)
        self.device = next(model.parameters()).device
        self.eos_id = int(model.config.eos_token_id)
        # held while a generation is suspended between tokens; a plain Lock, since a server may resume
        # the generator (and so release it) on another worker thread
        self._lock = threading.Lock()
        quantized = getattr(model.config, "quantization_config", None) is not None
        # static buffers (CUDA graphs on a GPU) for generations up to the default length limit;
        # a request allowed more ids decodes with the growing cache
        capacity = static_capacity or GenerationOptions().max_length
        self._static = make_static_decoder(
            model, resolve_decode_mode(decode, self.device, quantized), capacity
        )
        self.decode = self._static.mode if self._static is not None else "dynamic"
        # keys/values of recent voices' prompt turns (models/decode.py); 0 MB keeps none
        self.prefixes = PrefixStore(int(prefix_cache_mb * 1e6)) if prefix_cache_mb > 0 else None

    @classmethod
    def load(
        cls,
        model_dir: Path,
        variant: str = "base",
        device: str = "auto",
        dtype: str = "auto",
        decode: str = "auto",
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
    ) -> Step1LLM:
        """Load the model and its tokenizer.model from ``model_dir`` (the Step-Audio-EditX folder);
        ``decode``: auto, dynamic, static or graphs; ``prefix_cache_mb``: the bound of the voices'
        prompt keys/values kept between requests (models/decode.py)."""
        model_dir = Path(model_dir)
        model = load_step1_model(model_dir, variant, device, dtype)
        if getattr(model.config, "quantization_config", None) is not None:
            variant = "bnb-4bit"
        tokenizer = StepTextTokenizer(model_dir / "tokenizer.model")
        return cls(model, tokenizer, variant, model_dir, decode, prefix_cache_mb=prefix_cache_mb)

    def _processors(self, options: GenerationOptions) -> LogitsProcessorList:
        # Same order as transformers' generate(): custom processor, then temperature, top-k, top-p.
        procs = LogitsProcessorList([RepetitionAwareLogitsProcessor()])
        if options.temperature > 0:
            if options.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(options.temperature))
            if options.top_k and options.top_k > 0:
                procs.append(TopKLogitsWarper(options.top_k))
            if options.top_p < 1.0:
                procs.append(TopPLogitsWarper(options.top_p))
        return procs

    def stream_ids(
        self, prompt_ids: list[int], options: GenerationOptions, cancel: threading.Event | None = None
    ) -> Iterator[int]:
        """Sample new ids after ``prompt_ids``, yielding each (eos last, when produced), until eos,
        ``options.max_length`` total ids or ``options.max_new_tokens``; ``cancel`` raises
        GenerationCancelled at the next token. One generation at a time per loaded model."""
        if len(prompt_ids) >= options.max_length:
            raise TextInputError(
                f"the prompt is {len(prompt_ids)} tokens, which leaves no room under the "
                f"length limit of {options.max_length}; use a shorter reference or text"
            )
        options = self.with_seed(options)
        generator = None
        if options.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(options.seed))
        processors = self._processors(options)
        limit = options.max_length
        if options.max_new_tokens is not None:
            limit = min(limit, len(prompt_ids) + options.max_new_tokens)
        with self._lock, torch.inference_mode():
            decoder = self._static if self._static is not None and self._static.fits(limit) else None
            decoder = decoder or DynamicDecoder(self.model)
            try:
                logits = decoder.start(prompt_ids, self.prefixes)
                seq = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
                n_new = 0
                while seq.shape[1] < limit:
                    if cancel is not None and cancel.is_set():
                        raise GenerationCancelled(f"generation cancelled after {n_new} tokens")
                    scores = processors(seq, logits.float())
                    if generator is None:
                        nxt = scores.argmax(dim=-1, keepdim=True)
                    else:
                        nxt = sample_from_scores(scores, generator)
                    seq = torch.cat([seq, nxt], dim=1)
                    token = int(nxt)
                    n_new += 1
                    yield token
                    if token == self.eos_id:
                        return
                    logits = decoder.next(nxt)
            finally:
                decoder.close()
