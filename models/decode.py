"""Decoding Step1 one token at a time: a growing cache, or preallocated buffers replayed as CUDA graphs;
and the keys/values of a prompt's first turn kept for the next prompt that starts with it.

    static = make_static_decoder(model, mode, capacity)   # a StaticDecoder, or None for dynamic
    decoder = static or DynamicDecoder(model)
    logits = decoder.start(prompt_ids, prefixes)     # (1, V): the prompt's last position
    logits = decoder.next(token)                     # (1, V) after one more id, token (1, 1)

Prefix reuse: a clone prompt's first turn (the system turn) holds the voice: its transcript and its
audio tokens (359 of 384 ids for a 10 s voice and a short sentence). Every prefill runs in two
passes, that turn and then the rest, and a ``PrefixStore`` keeps the first pass's keys/values by
the turn's ids. A request with
a known voice copies them in and runs only the second pass. Both ways compute the same numbers (the
same passes with the same shapes), so a voice's first request and its repeats sample the same ids.

Why a second way: one decode step runs ~20 small kernels per layer, launched from Python. On an
H200 a step of 8 real-width layers took 4.5 ms (launch-bound: the weights take well under 1 ms to
read), so 32 layers spend ~18 ms a token and the first streamed audio, which needs 15 tokens and the
lookahead, waits ~0.3 s for the LLM alone. A CUDA graph replays a whole step with one launch, but it
needs fixed shapes and fixed addresses, which the growing ``DynamicCache`` has not.

``StaticDecoder`` keeps every layer's keys and values in one buffer allocated for ``capacity`` ids
(the longest prompt + generation it serves). A step attends over the first K slots, K the smallest
bucket (256, 512, ... capacity) that holds the current position; the slots past the position are
masked by the ALiBi bias, built from a position tensor inside the step. Inputs (the token and its
position) are copied into fixed tensors and the logits come out of a fixed tensor, so one step per
bucket can be captured once (at load, before anything else runs on the GPU) and replayed. Without
CUDA the same protocol runs eagerly ("static"): that is how the CPU tests check it.

Numerics: the prefill is the model's own forward (the buffers stand in for its cache). A step
computes what ``Step1Model.forward`` computes for one token: the same bias values (fp32, then
rounded), the same projections and norms; attention groups the 12 query heads of a KV group as 12
query rows instead of repeating the keys 12 times, which changes only the order of floating-point
sums (tests/test_llm_conformance.py checks the step logits against the reference fixture).
"""

from __future__ import annotations

import hashlib
import logging
import time
from array import array
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from errors import OptionsError
from lru import LRU
from model_layout import DECODE_MODES
from models.prompts import EOT_ID
from models.step1 import alibi_slopes

log = logging.getLogger(__name__)

MIN_BUCKET = 256  # fewest key slots a step attends over; buckets double up to the capacity


def resolve_decode_mode(mode: str, device: torch.device, quantized: bool) -> str:
    """The mode to run: ``auto`` is graphs on CUDA for an unquantized model, else dynamic."""
    if mode not in DECODE_MODES:
        raise OptionsError(f"--llm-decode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    if mode == "graphs" and device.type != "cuda":
        raise OptionsError("--llm-decode graphs needs a CUDA device (use static or dynamic on the CPU)")
    if mode == "auto":
        return "graphs" if device.type == "cuda" and not quantized else "dynamic"
    return mode


def first_turn_length(prompt_ids: list[int]) -> int:
    """Ids up to and including the prompt's first end of turn (0 when none comes before its last id):
    the part a clone prompt shares with every other prompt for the same voice."""
    try:
        end = prompt_ids.index(EOT_ID) + 1
    except ValueError:
        return 0
    return end if end < len(prompt_ids) else 0


class PrefixStore:
    """Keys/values of prompts' first turns by their ids, (layers, 2, 1, T, G·hd) each; bounded by
    bytes (least recently used first out). Safe across threads."""

    def __init__(self, max_bytes: int) -> None:
        self._entries: LRU[str, torch.Tensor] = LRU(
            max_entries=4096, max_bytes=max(1, int(max_bytes)), size_of=lambda t: t.numel() * t.element_size()
        )
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(ids: list[int]) -> str:
        return hashlib.sha256(array("q", ids).tobytes()).hexdigest()

    def get(self, ids: list[int]) -> torch.Tensor | None:
        kv = self._entries.get(self.key(ids))
        if kv is None:
            self.misses += 1
        else:
            self.hits += 1
        return kv

    def put(self, ids: list[int], kv: torch.Tensor) -> None:
        self._entries.put(self.key(ids), kv)

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0

    def stats(self) -> dict:
        return {
            "entries": len(self._entries),
            "mb": round(self._entries.bytes / 1e6, 1),
            "hits": self.hits,
            "misses": self.misses,
        }


class _Prefill:
    """The prefill both decoders share: the first turn (from ``prefixes`` when it is there), then the
    rest. A decoder says how to begin, extend its cache by ids, export and import a turn."""

    model: torch.nn.Module
    device: torch.device

    def start(self, prompt_ids: list[int], prefixes: PrefixStore | None = None) -> torch.Tensor:
        """Logits (1, V) at the prompt's last position, its keys/values cached."""
        self._begin(len(prompt_ids))
        split = first_turn_length(prompt_ids)
        if split:
            head = prompt_ids[:split]
            kv = prefixes.get(head) if prefixes is not None else None
            if kv is None:
                self._extend(head)
                if prefixes is not None:
                    prefixes.put(head, self._export(split))
            else:
                self._import(kv)
        return self._extend(prompt_ids[split:])

    def _forward(self, ids: list[int], cache: object) -> torch.Tensor:
        seq = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.model(seq, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]


class DynamicDecoder(_Prefill):
    """The plain way: transformers' ``DynamicCache`` grows by one id per step."""

    mode = "dynamic"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.device = model.get_input_embeddings().weight.device
        self.cache: DynamicCache | None = None

    def _begin(self, prompt_length: int) -> None:
        self.cache = DynamicCache(config=self.model.config)

    def _extend(self, ids: list[int]) -> torch.Tensor:
        return self._forward(ids, self.cache)

    def _export(self, length: int) -> torch.Tensor:
        return torch.stack([torch.stack([layer.keys, layer.values]) for layer in self.cache.layers])

    def _import(self, kv: torch.Tensor) -> None:
        for i, layer_kv in enumerate(kv):  # update keeps these; later steps concatenate anew
            self.cache.update(layer_kv[0], layer_kv[1], i)

    def next(self, token: torch.Tensor) -> torch.Tensor:
        return self.model(token, past_key_values=self.cache, use_cache=True).logits[:, -1]

    def close(self) -> None:
        self.cache = None


class _PrefillCache:
    """Stands in for a transformers cache during the prefill: ``Step1Model.forward`` asks its length
    once and hands each layer's new keys/values to ``update``, which writes them into the buffers."""

    def __init__(self, kv: torch.Tensor) -> None:
        self.kv = kv  # (layers, 2, 1, capacity, G·hd)
        self.length = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, ...]:
        end = self.length + keys.shape[1]
        self.kv[layer_idx, 0, :, self.length : end] = keys
        self.kv[layer_idx, 1, :, self.length : end] = values
        if layer_idx == self.kv.shape[0] - 1:
            self.length = end
        return self.kv[layer_idx, 0, :, :end], self.kv[layer_idx, 1, :, :end]


def buckets_for(capacity: int, smallest: int = MIN_BUCKET) -> list[int]:
    """Key-slot counts a step may attend over: ``smallest`` doubling, and ``capacity`` last."""
    out = []
    size = max(1, smallest)
    while size < capacity:
        out.append(size)
        size *= 2
    return [*out, capacity]


class StaticDecoder(_Prefill):
    """Preallocated keys/values and one fixed-shape step per bucket (a CUDA graph when ``graphs``).

    One generation at a time (the LLM's lock): the buffers and the fixed tensors are shared.
    """

    def __init__(
        self, model: torch.nn.Module, capacity: int, graphs: bool = False, smallest: int = MIN_BUCKET
    ) -> None:
        config = model.config
        core = model.model
        weight = core.embed_tokens.weight
        self.model = model
        self.device = weight.device
        self.capacity = int(capacity)
        self.groups = config.num_attention_groups
        self.repeat = config.num_attention_heads // self.groups
        self.head_dim = config.head_dim
        self.buckets = buckets_for(self.capacity, smallest)
        self.mode = "graphs" if graphs else "static"
        with torch.inference_mode():  # every later use is in inference mode too
            shape = (config.num_hidden_layers, 2, 1, self.capacity, self.groups * self.head_dim)
            self.kv = torch.zeros(shape, dtype=weight.dtype, device=self.device)
            self.slots = torch.arange(self.capacity, device=self.device)
            self.slopes = alibi_slopes(config.num_attention_heads).to(self.device)[:, None]
            self.token = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            self.position = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.length = 0
        self.prefill: _PrefillCache | None = None  # the cache ``start`` fills
        self.runners: dict[int, Callable[[], torch.Tensor]] = {}
        if graphs:
            self._capture_all()
        else:
            for keys in self.buckets:
                self.runners[keys] = self._eager_runner(keys)

    @property
    def kv_bytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def _step(self, keys: int) -> torch.Tensor:
        """One token (``self.token`` at ``self.position``) through every layer, attending over the
        first ``keys`` slots -> logits (1, V). Fixed shapes, no host synchronisation."""
        core = self.model.model
        x = core.embed_tokens(self.token)  # (1, 1, H)
        distance = (self.position - self.slots[:keys]).to(torch.float32)  # (K,)
        bias = -self.slopes * torch.sqrt(distance.clamp(min=0))[None]  # (NH, K) fp32, as alibi_bias
        bias = bias.masked_fill((distance < 0)[None], float("-inf")).to(x.dtype)
        # Query head h = g·repeat + r uses KV group g: its 12 heads become 12 query rows of group g.
        bias = bias.view(1, self.groups, self.repeat, keys)
        for i, layer in enumerate(core.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, self.groups, self.repeat, self.head_dim)
            self.kv[i, 0].index_copy_(1, self.position, attn.k_proj(h))
            self.kv[i, 1].index_copy_(1, self.position, attn.v_proj(h))
            k = self.kv[i, 0, :, :keys].view(1, keys, self.groups, self.head_dim).transpose(1, 2)
            v = self.kv[i, 1, :, :keys].view(1, keys, self.groups, self.head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (1, G, repeat, hd)
            x = x + attn.o_proj(out.reshape(1, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(core.norm(x))[:, -1]

    def _eager_runner(self, keys: int) -> Callable[[], torch.Tensor]:
        """The graph's protocol without a graph: the step writes into one fixed output tensor."""
        out: list[torch.Tensor] = []

        def run() -> torch.Tensor:
            logits = self._step(keys)
            if not out:
                out.append(logits.clone())
            return out[0].copy_(logits)

        return run

    def _capture_all(self) -> None:
        """Capture one step per bucket (nothing else may use the GPU meanwhile: call at load)."""
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        with torch.inference_mode():
            for keys in self.buckets:
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):  # warm-up outside the graph (allocator, kernels)
                    for _ in range(2):
                        self._step(keys)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    out = self._step(keys)
                self.runners[keys] = self._replayer(graph, out)
            torch.cuda.synchronize(self.device)
        log.info(
            "LLM decode: %d CUDA graphs (%s key slots, %.0f MB of keys/values) captured in %.2f s",
            len(self.buckets),
            "/".join(map(str, self.buckets)),
            self.kv_bytes / 1e6,
            time.perf_counter() - t0,
        )

    @staticmethod
    def _replayer(graph: torch.cuda.CUDAGraph, out: torch.Tensor) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            graph.replay()
            return out

        return run

    def bucket(self, keys_needed: int) -> int:
        """The smallest bucket with room for ``keys_needed`` key slots."""
        for keys in self.buckets:
            if keys >= keys_needed:
                return keys
        raise ValueError(f"{keys_needed} ids do not fit the decoder's {self.capacity} slots")

    def fits(self, total_ids: int) -> bool:
        return total_ids <= self.capacity

    # The prefill (``start``) is the model's own forward, its keys/values written into the buffers.
    def _begin(self, prompt_length: int) -> None:
        if not self.fits(prompt_length):
            raise ValueError(f"a {prompt_length}-id prompt does not fit {self.capacity} slots")
        self.prefill = _PrefillCache(self.kv)
        self.length = 0

    def _extend(self, ids: list[int]) -> torch.Tensor:
        logits = self._forward(ids, self.prefill)
        self.length = self.prefill.length
        return logits

    def _export(self, length: int) -> torch.Tensor:
        return self.kv[:, :, :, :length].clone()

    def _import(self, kv: torch.Tensor) -> None:
        self.kv[:, :, :, : kv.shape[3]].copy_(kv)
        self.prefill.length = self.length = kv.shape[3]

    def next(self, token: torch.Tensor) -> torch.Tensor:
        """Logits after ``token`` (1, 1); the returned tensor is overwritten by the next step."""
        keys = self.bucket(self.length + 1)
        self.token.copy_(token)
        self.position.fill_(self.length)
        logits = self.runners[keys]()
        self.length += 1
        return logits

    def close(self) -> None:
        self.length = 0


def make_static_decoder(model: torch.nn.Module, mode: str, capacity: int) -> StaticDecoder | None:
    """The model's static decoder for ``mode`` (None for dynamic); graphs that fail to capture fall
    back to the same buffers run eagerly, said in the log."""
    if mode == "dynamic":
        return None
    if mode == "graphs":
        try:
            return StaticDecoder(model, capacity, graphs=True)
        except (RuntimeError, AssertionError) as exc:  # e.g. a kernel that cannot be captured
            log.warning("LLM decode: CUDA graph capture failed (%s); running the same steps eagerly", exc)
            torch.cuda.synchronize()
    return StaticDecoder(model, capacity, graphs=False)
