"""Conformance of our Step1 LLM with $EDITX_REFERENCE_DIR/llm (reference outputs on tiny random weights).

The fixture model is loaded with our normal loader in fp32 on CPU; every case and size comes from the
fixture files (sequences seq{i} are discovered from the npz keys).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open

from models.decode import StaticDecoder
from models.generation import GenerationOptions
from models.llm import Step1LLM
from models.prompts import EDIT_SYSTEM_PROMPT, StepTextTokenizer, encode_edit_prompt
from models.step1 import alibi_bias, alibi_slopes

ATOL = 1e-4
RTOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs with one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def ref(reference_dir):
    with np.load(reference_dir / "llm" / "reference_tiny.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tiny_dir(reference_dir):
    return reference_dir / "llm" / "tiny"


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return Step1LLM.load(tiny_dir, variant="base", device="cpu", dtype="fp32")


def seq_indices(ref) -> list[int]:
    return sorted({int(m.group(1)) for k in ref if (m := re.fullmatch(r"seq(\d+)_ids", k))})


def forward(model, ids: np.ndarray, **kw):
    with torch.inference_mode():
        return model(torch.as_tensor(ids, dtype=torch.long)[None], **kw)


def test_conformance_llm_fixture_has_sequences(ref):
    assert seq_indices(ref), "reference_tiny.npz lists no seq{i}_ids"


def test_conformance_llm_forward(llm, ref):
    model = llm.model
    cols = ref["logit_cols"]
    for i in seq_indices(ref):
        out = forward(model, ref[f"seq{i}_ids"], use_cache=False, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states)[:, 0].numpy()
        assert hidden.shape == ref[f"seq{i}_hidden_states"].shape, f"seq{i}"
        np.testing.assert_allclose(hidden, ref[f"seq{i}_hidden_states"], atol=ATOL, rtol=0, err_msg=f"seq{i}")
        logits = out.logits[0].float()
        np.testing.assert_allclose(logits[:, cols].numpy(), ref[f"seq{i}_logits_cols"], atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(logits[-1].numpy(), ref[f"seq{i}_logits_last"], atol=ATOL, rtol=RTOL)
        np.testing.assert_array_equal(logits.argmax(-1).numpy(), ref[f"seq{i}_argmax"])
        top = torch.topk(logits, 5, dim=-1)
        np.testing.assert_array_equal(top.indices.numpy(), ref[f"seq{i}_top5_ids"])
        np.testing.assert_allclose(top.values.numpy(), ref[f"seq{i}_top5_vals"], atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(
            torch.logsumexp(logits, -1).numpy(), ref[f"seq{i}_logsumexp"], atol=ATOL, rtol=RTOL
        )
        if f"seq{i}_logits" in ref:
            np.testing.assert_allclose(logits.numpy(), ref[f"seq{i}_logits"], atol=ATOL, rtol=RTOL)


def test_conformance_llm_greedy_generate(llm, ref):
    prompt = torch.as_tensor(ref["gen_prompt_ids"], dtype=torch.long)[None]
    n_new = len(ref["gen_new_ids"])
    with torch.inference_mode():
        out = llm.model.generate(
            prompt,
            max_new_tokens=n_new,
            do_sample=False,
            use_cache=True,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=llm.model.config.eos_token_id,
        )
    new = out.sequences[0, prompt.shape[1] :].numpy()
    np.testing.assert_array_equal(new, ref["gen_new_ids"])
    np.testing.assert_array_equal(new, ref["gen_new_ids_nocache"])
    step_logits = torch.stack(out.logits)[:, 0].float()
    np.testing.assert_allclose(
        step_logits[:, ref["logit_cols"]].numpy(), ref["gen_step_logits_cols"], atol=ATOL, rtol=RTOL
    )
    np.testing.assert_array_equal(step_logits.argmax(-1).numpy(), ref["gen_step_argmax"])
    np.testing.assert_allclose(step_logits[0].numpy(), ref["gen_step0_logits"], atol=ATOL, rtol=RTOL)


def test_conformance_llm_own_greedy_loop(llm, ref):
    """Our sampling loop with temperature 0 is greedy decoding with the repetition rule; the rule
    only bites when the last token repeats in the last 10, so compare up to the first such step."""
    prompt = ref["gen_prompt_ids"].tolist()
    expected = ref["gen_new_ids"].tolist()
    options = GenerationOptions(temperature=0.0, max_length=len(prompt) + len(expected))
    new, seed = llm.generate_ids(prompt, options)
    assert seed is None
    seq = prompt[:]
    for step, token in enumerate(expected):
        window = seq[-10:]
        if len(window) == 10 and window.count(window[-1]) > 1:
            break  # the repetition rule may change the choice from here on
        assert new[step] == token, f"step {step}"
        seq.append(token)


def test_conformance_llm_static_decoding(llm, ref):
    """The static decoder (models/decode.py: preallocated keys/values, fixed-shape steps, the
    protocol a CUDA graph replays) teacher-forced over the reference's greedy ids gives its step
    logits; the first bucket ends halfway through the new ids, so the steps cross into the second."""
    prompt = ref["gen_prompt_ids"].tolist()
    new = ref["gen_new_ids"].tolist()
    capacity = len(prompt) + len(new)
    decoder = StaticDecoder(llm.model, capacity, smallest=len(prompt) + len(new) // 2)
    assert len(decoder.buckets) == 2
    steps = []
    with torch.inference_mode():
        steps.append(decoder.start(prompt).clone())
        for token in new[:-1]:
            steps.append(decoder.next(torch.tensor([[token]])).clone())
    step_logits = torch.cat(steps).float()
    np.testing.assert_allclose(
        step_logits[:, ref["logit_cols"]].numpy(), ref["gen_step_logits_cols"], atol=ATOL, rtol=RTOL
    )
    np.testing.assert_array_equal(step_logits.argmax(-1).numpy(), ref["gen_step_argmax"])
    np.testing.assert_allclose(step_logits[0].numpy(), ref["gen_step0_logits"], atol=ATOL, rtol=RTOL)


def test_conformance_llm_incremental_decoding(llm, ref):
    """Prefix with cache, then a multi-token chunk, then single tokens, vs the full forward."""
    model = llm.model
    positions = ref["inc_positions"].tolist()
    seq_key = next(f"seq{i}_ids" for i in seq_indices(ref) if len(ref[f"seq{i}_ids"]) == positions[-1] + 1)
    ids = torch.as_tensor(ref[seq_key], dtype=torch.long)[None]
    first = positions[0]
    chunk = 5
    got = {}
    with torch.inference_mode():
        out = model(ids[:, : first + 1], use_cache=True)
        cache = out.past_key_values
        got[first] = out.logits[0, -1]
        start = first + 1
        while start <= positions[-1]:
            stop = min(start + chunk, positions[-1] + 1) if start == first + 1 else start + 1
            assert cache.get_seq_length() == start
            out = model(ids[:, start:stop], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            for j in range(start, stop):
                got[j] = out.logits[0, j - start]
            start = stop
    inc = torch.stack([got[p] for p in positions]).float()
    np.testing.assert_allclose(
        inc[:, ref["logit_cols"]].numpy(), ref["inc_logits_cols"], atol=ATOL, rtol=RTOL
    )
    full = forward(model, ref[seq_key], use_cache=False).logits[0, positions].float()
    np.testing.assert_allclose(inc.numpy(), full.numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(inc[-1].numpy(), ref["inc_logits_last"], atol=ATOL, rtol=RTOL)
    # The cache holds keys right after k_proj: (B, T, G*hd).
    assert list(cache.layers[0].keys.shape) == ref["inc_cache_key_shape"].tolist()


def test_conformance_llm_alibi(llm, ref):
    heads = llm.model.config.num_attention_heads
    np.testing.assert_allclose(alibi_slopes(heads).numpy(), ref["alibi_slopes_tiny"], atol=1e-7, rtol=0)
    n_real = len(ref["alibi_slopes_48"])
    np.testing.assert_allclose(alibi_slopes(n_real).numpy(), ref["alibi_slopes_48"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        alibi_slopes(n_real).numpy(), ref["alibi_slopes_48_from_code"], atol=1e-6, rtol=0
    )
    expected = ref["alibi_bias_tiny_T8"]
    t = expected.shape[-1]
    bias = alibi_bias(alibi_slopes(expected.shape[0]), t, t).numpy()
    np.testing.assert_array_equal(np.isneginf(bias), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(bias[finite], expected[finite], atol=1e-6, rtol=1e-6)


def test_conformance_llm_tokenizer(tiny_dir, ref):
    tok = StepTextTokenizer(tiny_dir / "tokenizer.model")
    texts = [str(t) for t in ref["tok_texts"]]
    expected = json.loads(str(ref["tok_ids"]))
    assert len(texts) == len(expected)
    for text, ids in zip(texts, expected, strict=True):
        assert tok.encode(text) == ids, repr(text)


def test_conformance_llm_edit_prompt_layout(tiny_dir, ref):
    """Rebuild gen_prompt_ids with our edit-prompt encoder from its own system/instruction texts."""
    tok = StepTextTokenizer(tiny_dir / "tokenizer.model")
    prompt = ref["gen_prompt_ids"].tolist()
    texts = [str(t) for t in ref["tok_texts"]]
    # The fixture's tokenizer vectors include the system text and the instruction it used.
    system_ids = prompt[2 : prompt.index(3)]
    system = next((t for t in texts if t.startswith("system\n") and tok.encode(t) == system_ids), None)
    assert system is not None, "no tok_texts entry encodes the fixture's system turn"
    first_audio = next(k for k, i in enumerate(prompt) if i >= 65536)
    human_start = prompt.index(3) + 2 + len(tok.encode("human\n"))
    instr_ids = prompt[human_start:first_audio]
    instruction = next((t for t in texts if tok.encode(t + "\n") == instr_ids), None)
    assert instruction is not None, "no tok_texts entry encodes the fixture's instruction"
    audio_str = "".join(f"<audio_{i - 65536}>" for i in prompt if i >= 65536)
    assert encode_edit_prompt(tok, system[len("system\n") :], instruction, audio_str) == prompt
    assert EDIT_SYSTEM_PROMPT.startswith("As a highly skilled audio editing")


def test_conformance_llm_lm_head_untied(llm, tiny_dir, ref):
    model = llm.model
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not model.config.tie_word_embeddings
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())
    shard = tiny_dir / index["weight_map"]["lm_head.weight"]
    with safe_open(str(shard), framework="pt") as f:
        stored = f.get_tensor("lm_head.weight").float()
    torch.testing.assert_close(model.lm_head.weight.detach(), stored, atol=0, rtol=0)
    assert not torch.equal(model.lm_head.weight.detach(), model.model.embed_tokens.weight.detach())
    assert json.loads(str(ref["meta"])).get("lm_head_tied_after_load") is False


def test_conformance_llm_sizes_from_config(llm, tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    model = llm.model
    assert model.config.hidden_size == cfg["hidden_size"]
    assert len(model.model.layers) == cfg["num_hidden_layers"]
    assert model.lm_head.weight.shape == (cfg["vocab_size"], cfg["hidden_size"])
    kv = cfg["hidden_size"] // cfg["num_attention_heads"] * cfg["num_attention_groups"]
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (kv, cfg["hidden_size"])


def test_conformance_llm_alibi_bias_large_path_matches(ref, monkeypatch):
    """The one-head-at-a-time path used for long prefills gives the same bias (fp32 and bf16)."""
    import models.step1 as step1

    slopes = alibi_slopes(len(ref["alibi_slopes_48"]))
    for dtype in (torch.float32, torch.bfloat16):
        small = alibi_bias(slopes, 9, 40, dtype)
        monkeypatch.setattr(step1, "_ALIBI_VECTOR_LIMIT", 0)
        large = alibi_bias(slopes, 9, 40, dtype)
        monkeypatch.undo()
        torch.testing.assert_close(large, small, atol=0, rtol=0)
