"""Static decoding (models/decode.py) on the demo LLM: the same ids and logits as the growing
cache, across bucket boundaries, with the fixed-tensor protocol a CUDA graph replays."""

from __future__ import annotations

import threading

import pytest
import torch

from errors import GenerationCancelled, OptionsError
from models.audio_tokens import token_str
from models.decode import DynamicDecoder, StaticDecoder, buckets_for, first_turn_length, resolve_decode_mode
from models.generation import GenerationOptions
from models.llm import Step1LLM
from models.prompts import build_clone_prompt

PROMPT_TOKENS = token_str([c for g in range(12) for c in (g, 1000 - g, 1024 + g, 2048 + g, 4000 + g)])


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs with one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def dynamic(demo_llm_root):
    return Step1LLM.load(demo_llm_root / "Step-Audio-EditX", device="cpu", decode="dynamic")


@pytest.fixture(scope="module")
def prompt(dynamic):
    return build_clone_prompt(dynamic.tokenizer, "hello there", PROMPT_TOKENS, "How are you today?")


def static_llm(dynamic: Step1LLM, capacity: int) -> Step1LLM:
    """The same weights with a static decoder of ``capacity`` slots."""
    return Step1LLM(
        dynamic.model, dynamic.tokenizer, "base", dynamic.model_dir, decode="static", static_capacity=capacity
    )


def test_modes_resolve_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_decode_mode("auto", cpu, quantized=False) == "dynamic"
    assert resolve_decode_mode("auto", cuda, quantized=False) == "graphs"
    assert resolve_decode_mode("auto", cuda, quantized=True) == "dynamic"  # bitsandbytes: not captured
    assert resolve_decode_mode("static", cpu, quantized=False) == "static"
    with pytest.raises(OptionsError, match="needs a CUDA device"):
        resolve_decode_mode("graphs", cpu, quantized=False)
    with pytest.raises(OptionsError, match="must be one of"):
        resolve_decode_mode("fast", cpu, quantized=False)


def test_buckets_double_up_to_the_capacity():
    assert buckets_for(8192) == [256, 512, 1024, 2048, 4096, 8192]
    assert buckets_for(600, smallest=100) == [100, 200, 400, 600]
    assert buckets_for(256) == [256]


def test_the_cpu_default_is_the_growing_cache(demo_llm_root, dynamic):
    llm = Step1LLM.load(demo_llm_root / "Step-Audio-EditX", device="cpu")
    assert llm.decode == "dynamic" and dynamic.decode == "dynamic"


def test_step_logits_match_the_growing_cache_across_buckets(dynamic, prompt):
    """Teacher-forced up to 3× the prompt's length, buckets of 16 slots doubling: the steps cross
    every bucket above the prompt."""
    capacity = 3 * len(prompt)
    ids = torch.randint(
        0,
        dynamic.model.config.vocab_size,
        (capacity - len(prompt),),
        generator=torch.Generator().manual_seed(0),
    )
    static = StaticDecoder(dynamic.model, capacity, smallest=16)
    crossed = {b for b in static.buckets if b > len(prompt)}
    assert len(crossed) >= 2 and static.buckets[-1] == capacity
    grow = DynamicDecoder(dynamic.model)
    used = set()
    with torch.inference_mode():
        worst = float((static.start(prompt) - grow.start(prompt)).abs().max())
        for token in ids.tolist():
            t = torch.tensor([[token]])
            used.add(static.bucket(static.length + 1))
            a = static.next(t).clone()
            worst = max(worst, float((a - grow.next(t)).abs().max()))
    assert static.length == capacity and used == crossed
    # fp32, the same sums in another order: measured below 1e-5 here (logits of size ~10)
    assert worst < 1e-4, worst


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_static_decoding_samples_the_same_ids(dynamic, prompt, temperature):
    options = GenerationOptions(seed=7, temperature=temperature, max_new_tokens=60)
    expected = list(dynamic.stream_ids(prompt, options))
    static = static_llm(dynamic, 1024)
    assert static.decode == "static"
    assert list(static.stream_ids(prompt, options)) == expected
    assert list(static.stream_ids(prompt, options)) == expected  # the buffers are reused


def test_a_request_longer_than_the_buffers_uses_the_growing_cache(dynamic, prompt):
    options = GenerationOptions(seed=2, max_new_tokens=30)
    static = static_llm(dynamic, len(prompt) + 10)
    assert not static._static.fits(len(prompt) + 30)
    assert list(static.stream_ids(prompt, options)) == list(dynamic.stream_ids(prompt, options))


def test_cancel_and_early_close_leave_the_buffers_ready(dynamic, prompt):
    static = static_llm(dynamic, 1024)
    options = GenerationOptions(seed=5, max_new_tokens=40)
    expected = list(dynamic.stream_ids(prompt, options))
    cancel = threading.Event()
    ids = static.stream_ids(prompt, options, cancel)
    assert [next(ids) for _ in range(5)] == expected[:5]
    cancel.set()
    with pytest.raises(GenerationCancelled):
        next(ids)
    ids = static.stream_ids(prompt, options)
    next(ids)
    ids.close()  # a client that went away
    assert list(static.stream_ids(prompt, options)) == expected


def test_clone_through_the_static_decoder_matches(dynamic):
    static = static_llm(dynamic, 2048)
    options = GenerationOptions(seed=1)
    a = dynamic.clone("hello there", PROMPT_TOKENS, "How are you today?", options)
    b = static.clone("hello there", PROMPT_TOKENS, "How are you today?", options)
    assert a.audio_tokens and a.audio_tokens == b.audio_tokens


# --- the voices' prompt turns kept between requests -------------------------------------------------


def with_store(dynamic: Step1LLM, decode: str, mb: float = 64.0, capacity: int = 2048) -> Step1LLM:
    return Step1LLM(
        dynamic.model,
        dynamic.tokenizer,
        "base",
        dynamic.model_dir,
        decode=decode,
        static_capacity=capacity,
        prefix_cache_mb=mb,
    )


def test_the_first_turn_is_the_voice():
    assert first_turn_length([1, 4, 10, 11, 3, 4, 20, 3, 4, 30]) == 5
    assert first_turn_length([1, 4, 10, 11]) == 0  # no end of turn
    assert first_turn_length([1, 4, 10, 3]) == 0  # nothing after it to prefill


def test_split_prefill_gives_the_one_pass_logits(dynamic, prompt):
    split = first_turn_length(prompt)
    assert 0 < split < len(prompt) - 5  # the clone prompt's voice turn, then the target turn
    with torch.inference_mode():
        whole = dynamic.model(torch.tensor([prompt])).logits[0, -1]
        for decoder in (DynamicDecoder(dynamic.model), StaticDecoder(dynamic.model, 1024)):
            assert float((decoder.start(prompt) - whole).abs().max()) < 1e-4


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_a_repeated_voice_reuses_its_turn_and_samples_the_same_ids(dynamic, decode):
    llm = with_store(dynamic, decode)
    store = llm.prefixes
    options = GenerationOptions(seed=3, max_new_tokens=40)
    first = llm.clone_prompt("hello there", PROMPT_TOKENS, "How are you today?")
    other_text = llm.clone_prompt(
        "hello there", PROMPT_TOKENS, "A different sentence, longer than the first."
    )
    other_voice = llm.clone_prompt("another voice", PROMPT_TOKENS, "How are you today?")
    cold = list(llm.stream_ids(first, options))
    assert store.stats() | {"mb": 0} == {"entries": 1, "mb": 0, "hits": 0, "misses": 1}
    assert list(llm.stream_ids(first, options)) == cold  # from the store: the same ids
    assert list(llm.stream_ids(other_text, options)) == list(dynamic.stream_ids(other_text, options))
    assert store.hits == 2 and store.misses == 1
    list(llm.stream_ids(other_voice, options))
    assert store.stats()["entries"] == 2 and store.misses == 2
    bare = with_store(dynamic, "dynamic", mb=0)
    assert bare.prefixes is None and list(bare.stream_ids(first, options)) == cold  # no store: the same


def test_the_store_is_bounded_by_bytes(dynamic, prompt):
    llm = with_store(dynamic, "dynamic", mb=0.001)  # smaller than one voice's turn: keeps the last
    options = GenerationOptions(seed=1, max_new_tokens=5)
    for text in ("voice one", "voice two", "voice three"):
        list(llm.stream_ids(llm.clone_prompt(text, PROMPT_TOKENS, "Hi."), options))
    stats = llm.prefixes.stats()
    assert stats["entries"] == 1 and stats["misses"] == 3


def test_a_turn_kept_by_the_static_decoder_serves_the_growing_cache(dynamic, prompt):
    """A request too long for the buffers decodes with the growing cache, from the same store."""
    options = GenerationOptions(seed=6, max_new_tokens=30)
    llm = with_store(dynamic, "static", capacity=len(prompt) + 10)
    short = GenerationOptions(seed=6, max_new_tokens=5)
    list(llm.stream_ids(prompt, short))  # fits the buffers: the static decoder stores the turn
    assert llm.prefixes.misses == 1
    assert list(llm.stream_ids(prompt, options)) == list(dynamic.stream_ids(prompt, options))
    assert llm.prefixes.hits == 1
