"""The LLM stage on the demo model: variants, memory, sampling, cancellation, output parsing."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from errors import EmptyGenerationError, GenerationCancelled, ModelFilesError, OptionsError, TextInputError
from models.audio_tokens import AUDIO_ID_OFFSET, GroupAligner, realign_groups, token_str
from models.generation import GenerationOptions, parse_generated_ids
from models.llm import (
    RepetitionAwareLogitsProcessor,
    Step1LLM,
    estimate_weight_bytes,
    load_step1_model,
    measured_weight_bytes,
    sample_from_scores,
)
from models.prompts import build_clone_prompt
from models.step1 import Step1Config

PROMPT_CODES = [c for g in range(12) for c in (g, 1000 - g, 1024 + g, 2048 + g, 4000 + g)]
PROMPT_TOKENS = token_str(PROMPT_CODES)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs with one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def llm_dir(demo_llm_root):
    return demo_llm_root / "Step-Audio-EditX"


@pytest.fixture(scope="module")
def base(llm_dir):
    return Step1LLM.load(llm_dir, variant="base", device="cpu")


@pytest.fixture(scope="module")
def q4(llm_dir):
    return Step1LLM.load(llm_dir, variant="bnb-4bit", device="cpu")


def logits(llm: Step1LLM, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return llm.model(torch.tensor([ids]), use_cache=False).logits[0].float()


def is_whole_groups(tokens: list[int]) -> bool:
    kinds = [0 if t < 1024 else 1 for t in tokens]
    return len(tokens) % 5 == 0 and all(kinds[k : k + 5] == [0, 0, 1, 1, 1] for k in range(0, len(kinds), 5))


# --- demo files, loading and variants --------------------------------------------------------------


def test_demo_llm_files_have_the_real_layout(llm_dir):
    from safetensors import safe_open

    cfg = json.loads((llm_dir / "config.json").read_text())
    assert cfg["model_type"] == "step1" and "tie_word_embeddings" not in cfg
    assert cfg["vocab_size"] == 74752 and cfg["eos_token_id"] == 3
    heads = cfg["num_attention_heads"]
    assert heads & (heads - 1) != 0  # not a power of two: the second ALiBi slope series is used
    index = json.loads((llm_dir / "model.safetensors.index.json").read_text())
    with safe_open(str(llm_dir / "model-00001.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.bfloat16}
    assert keys == set(index["weight_map"]) and len(keys) == 9 * cfg["num_hidden_layers"] + 3
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"} <= keys
    assert json.loads((llm_dir / "tokenizer_config.json").read_text())["add_bos_token"] is False


def test_base_loads_fp32_on_cpu_untied_with_sizes_from_config(base, llm_dir):
    cfg = json.loads((llm_dir / "config.json").read_text())
    model = base.model
    assert model.dtype == torch.float32 and base.variant == "base"
    assert model.config.num_hidden_layers == cfg["num_hidden_layers"] == len(model.model.layers)
    assert model.config.num_attention_heads == cfg["num_attention_heads"]
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_fp16_is_selectable(llm_dir, base):
    half = Step1LLM.load(llm_dir, variant="base", device="cpu", dtype="fp16")
    assert half.model.dtype == torch.float16
    ids = [1, 4, 300, 78, 3] + [AUDIO_ID_OFFSET + c for c in PROMPT_CODES[:20]]
    np.testing.assert_allclose(logits(half, ids).numpy(), logits(base, ids).numpy(), atol=0.1)


def test_bnb_4bit_is_nf4_double_quant_and_matches_its_dequantized_weights(q4, base):
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    layer = q4.model.model.layers[0].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    state = layer.weight.quant_state
    assert state.quant_type == "nf4" and state.nested and state.dtype == torch.float32
    assert q4.variant == "bnb-4bit"
    assert isinstance(q4.model.lm_head, torch.nn.Linear) and q4.model.lm_head.weight.dtype == torch.float32
    # Put the dequantized NF4 weights into a copy of the base model: the logits must then agree.
    ref = load_step1_model(base.model_dir, "base", "cpu")
    for name, module in q4.model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state)
            ref.get_submodule(name).weight.data.copy_(w)
            assert (w - base.model.get_submodule(name).weight).abs().max() < 0.5
    ids = [1, 4, 300, 78, 3] + [AUDIO_ID_OFFSET + c for c in PROMPT_CODES]
    with torch.inference_mode():
        expected = ref(torch.tensor([ids]), use_cache=False).logits[0]
    np.testing.assert_allclose(logits(q4, ids).numpy(), expected.numpy(), atol=1e-4, rtol=1e-4)


def test_prequantized_bnb_folder_is_detected(q4, llm_dir, tmp_path):
    saved = tmp_path / "Step-Audio-EditX-bnb-4bit"
    q4.model.save_pretrained(saved)
    shutil.copy(llm_dir / "tokenizer.model", saved / "tokenizer.model")
    saved_config = json.loads((saved / "config.json").read_text())
    assert saved_config["quantization_config"]["quant_method"] == "bitsandbytes"
    again = Step1LLM.load(saved, variant="base", device="cpu")  # the folder decides: it is 4-bit
    assert again.variant == "bnb-4bit"
    ids = [1, 4, 300, 78] + [AUDIO_ID_OFFSET + c for c in PROMPT_CODES[:10]]
    np.testing.assert_allclose(logits(again, ids).numpy(), logits(q4, ids).numpy(), atol=1e-5)


def test_memory_estimate_matches_loaded_models(base, q4):
    cfg = base.model.config
    assert measured_weight_bytes(base.model) == estimate_weight_bytes(cfg, "base", torch.float32)
    assert measured_weight_bytes(q4.model) == estimate_weight_bytes(cfg, "bnb-4bit", torch.float32)


def test_memory_estimate_for_the_real_model():
    real = Step1Config()  # defaults are the real checkpoint's config.json values
    assert estimate_weight_bytes(real, "base") == 3_529_706_496 * 2  # STEP1_FACTS parameter count, bf16
    q = estimate_weight_bytes(real, "bnb-4bit")
    embed_and_head = 2 * 74752 * 3072 * 2
    linear = 32 * 95_944_704
    assert embed_and_head + linear // 2 < q < embed_and_head + linear // 2 * 1.05
    assert 0.3 < q / estimate_weight_bytes(real, "base") < 0.4


def test_no_code_from_the_model_folder_is_executed(llm_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.step1 import Step1ForCausalLM

    folder = tmp_path / "Step-Audio-EditX"
    shutil.copytree(llm_dir, folder)
    marker = tmp_path / "executed"
    payload = f"open({str(marker)!r}, 'w').write('yes')\nraise SystemExit('remote code ran')\n"
    for name in ("modeling_step1.py", "configuration_step1.py"):
        (folder / name).write_text(payload)
    llm = Step1LLM.load(folder, device="cpu")
    assert isinstance(llm.model, Step1ForCausalLM)
    assert isinstance(AutoConfig.from_pretrained(folder), type(llm.model.config))
    assert isinstance(AutoModelForCausalLM.from_pretrained(folder), Step1ForCausalLM)
    assert not marker.exists()


def test_loader_refuses_unknown_model_types_and_awq(llm_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(llm_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "mystery"}))
    with pytest.raises(ModelFilesError, match="model_type 'mystery'"):
        load_step1_model(other, "base", "cpu")
    (other / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "awq"}}))
    with pytest.raises(ModelFilesError, match="awq"):
        load_step1_model(other, "base", "cpu")
    with pytest.raises(ModelFilesError, match="config.json"):
        load_step1_model(tmp_path, "base", "cpu")
    with pytest.raises(ValueError, match="variant"):
        load_step1_model(llm_dir, "int3", "cpu")


# --- generation -----------------------------------------------------------------------------------


def test_clone_generates_whole_groups_and_logs(base, caplog):
    caplog.set_level(logging.DEBUG, logger="models.generation")
    seen: list[int] = []
    result = base.clone(
        "hello there", PROMPT_TOKENS, "How are you today?", GenerationOptions(seed=1), progress=seen.append
    )
    assert result.audio_tokens and is_whole_groups(result.audio_tokens)
    assert all(0 <= t < 5120 for t in result.audio_tokens)
    assert seen == list(range(1, result.new_tokens + 1))
    assert result.new_tokens == len(result.audio_tokens) + result.dropped_tokens + 1  # + eos
    assert result.tokens_per_s > 0 and result.seed == 1
    assert any("new tokens" in r.getMessage() and "tokens/s" in r.getMessage() for r in caplog.records)
    again = base.clone("hello there", PROMPT_TOKENS, "How are you today?", GenerationOptions(seed=1))
    assert again.audio_tokens == result.audio_tokens
    other = base.clone("hello there", PROMPT_TOKENS, "How are you today?", GenerationOptions(seed=0))
    assert other.audio_tokens != result.audio_tokens


def test_edit_runs_for_each_task(base):
    for task, option, new_text in [
        ("emotion", "happy", None),
        ("paralinguistic", None, "hi [Laughter]"),
        ("denoise", None, None),
    ]:
        result = base.edit(
            "hi there", PROMPT_TOKENS, task, option, GenerationOptions(seed=3), new_text=new_text
        )
        assert is_whole_groups(result.audio_tokens)


def test_bnb_variant_generates(q4):
    result = q4.clone("hello there", PROMPT_TOKENS, "How are you?", GenerationOptions(seed=3))
    assert is_whole_groups(result.audio_tokens)


def test_length_cap_and_empty_generation(base):
    ids = build_clone_prompt(base.tokenizer, "hello there", PROMPT_TOKENS, "How are you?")
    new, _ = base.generate_ids(ids, GenerationOptions(seed=1, max_length=len(ids) + 7))
    assert len(new) <= 7
    with pytest.raises(EmptyGenerationError, match="no complete audio-token group"):
        base.generate_audio_tokens(ids, GenerationOptions(seed=1, max_length=len(ids) + 3))
    with pytest.raises(TextInputError, match="length limit"):
        base.generate_ids(ids, GenerationOptions(max_length=len(ids)))


def test_cancel_stops_generation(base):
    cancel = threading.Event()

    def progress(n: int) -> None:
        if n == 3:
            cancel.set()

    with pytest.raises(GenerationCancelled, match="after 3 tokens"):
        base.clone(
            "hello there",
            PROMPT_TOKENS,
            "How are you?",
            GenerationOptions(seed=0, max_length=8192),
            progress=progress,
            cancel=cancel,
        )
    cancel.set()
    with pytest.raises(GenerationCancelled):
        base.clone("hello there", PROMPT_TOKENS, "How are you?", cancel=cancel)


def test_repetition_aware_processor():
    proc = RepetitionAwareLogitsProcessor()
    scores = torch.zeros(3, 20)
    ids = torch.tensor(
        [
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # 11 once in the last 10: allowed
            [0, 2, 3, 4, 5, 6, 7, 8, 9, 7, 7],  # 7 three times: forbidden
            [7, 2, 3, 4, 5, 6, 9, 8, 9, 10, 7],  # the earlier 7 is outside the window: allowed
        ]
    )
    out = proc(ids, scores.clone())
    assert torch.isneginf(out[1, 7]) and torch.isneginf(out).sum() == 1
    short = torch.tensor([[7, 7, 7]])  # fewer than 10 ids: untouched
    assert not torch.isneginf(proc(short, torch.zeros(1, 20))).any()
    two = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 5, 5]])  # twice in 10 = 20% > 10%
    assert torch.isneginf(proc(two, torch.zeros(1, 20))[0, 5])


def test_sampler_matches_softmax_and_never_picks_masked_ids():
    g = torch.Generator().manual_seed(0)
    scores = torch.full((1, 1000), float("-inf"))
    scores[0, [3, 500, 999]] = torch.tensor([0.0, 1.0, 2.0])
    draws = torch.cat([sample_from_scores(scores, g) for _ in range(4000)]).flatten()
    assert set(draws.tolist()) <= {3, 500, 999}
    freq = torch.bincount(draws, minlength=1000)[[3, 500, 999]].float() / len(draws)
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0).numpy()
    np.testing.assert_allclose(freq.numpy(), expected, atol=0.03)


# --- parsing --------------------------------------------------------------------------------------


def group(k: int) -> list[int]:
    return [2 * k % 1024, (2 * k + 1) % 1024, 1024 + 3 * k, 1025 + 3 * k, 1026 + 3 * k]


def ids_of(codes: list[int]) -> list[int]:
    return [AUDIO_ID_OFFSET + c for c in codes]


def test_parse_drops_eos_text_and_other_added_tokens():
    stream = ids_of(group(0)) + [500] + ids_of(group(1)) + [AUDIO_ID_OFFSET + 6000] + ids_of(group(2)) + [3]
    tokens, dropped = parse_generated_ids(stream, eos_id=3)
    assert tokens == group(0) + group(1) + group(2) and dropped == 2
    tokens, _ = parse_generated_ids(ids_of(group(0)) + [3] + ids_of(group(1)), eos_id=3)
    assert tokens == group(0)


@pytest.mark.parametrize("stray", [7, 2000])
def test_stray_token_at_start_middle_end_does_not_shift_groups(stray):
    clean = group(0) + group(1) + group(2)
    for noisy in ([stray] + clean, group(0) + [stray] + group(1) + group(2), clean + [stray]):
        out, dropped = realign_groups(noisy)
        assert is_whole_groups(out) and len(out) == len(clean) and dropped == 1
        # Between groups a vq02 cannot be told from the group's first code: that group may keep the
        # stray instead of its own first vq02, but no other group changes.
        assert sum(out[k : k + 5] != clean[k : k + 5] for k in range(0, 15, 5)) <= 1
        assert sum(a != b for a, b in zip(out, clean, strict=True)) <= 2
    # Inside a group (in the vq06 run, or after the first vq02) the stray is dropped exactly.
    inside = [group(0)[:3] + [stray] + group(0)[3:], group(0)[:1] + [stray] + group(0)[1:]]
    for noisy in inside:
        out, dropped = realign_groups(noisy + group(1))
        if (stray < 1024) != (noisy.index(stray) == 1):  # a vq06 in a vq06 run is undetectable
            assert out == group(0) + group(1) and dropped == 1


def test_truncated_group_is_dropped_and_next_groups_kept():
    out, dropped = realign_groups(group(0) + group(1)[:4] + group(2) + group(3)[:2])
    assert out == group(0) + group(2) and dropped == 6


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 6), pos=st.integers(0, 40), stray=st.integers(0, 5119))
def test_one_stray_token_costs_at_most_one_group(n, pos, stray):
    groups = [group(k + 10) for k in range(n)]
    clean = [c for g in groups for c in g]
    pos = min(pos, len(clean))
    out, dropped = realign_groups(clean[:pos] + [stray] + clean[pos:])
    assert is_whole_groups(out)
    got = [out[k : k + 5] for k in range(0, len(out), 5)]
    assert len(got) in (n, n - 1)
    assert sum(g in got for g in groups) >= n - 1
    hit = pos // 5  # groups after the one the stray landed in are intact and at the end
    after = groups[hit + 1 :]
    assert not after or got[-len(after) :] == after
    assert len(out) + dropped == len(clean) + 1


def test_benchmark_quick_run_on_demo_models(demo_llm_root):
    from scripts.bench import llm as bench

    result = bench.run(bench_args(bench, "--model-dir", str(demo_llm_root), "--quick", "--threads", "1"))
    assert set(result["variants"]) == {"base", "bnb-4bit"} and "real_shape" not in result
    for figures in result["variants"].values():
        assert figures["prefill_tokens_per_s"] > 0 and figures["decode_tokens_per_s"] > 0
    assert result["variants"]["bnb-4bit"]["weight_bytes"] < result["variants"]["base"]["weight_bytes"]


def test_group_aligner_releases_each_group_by_the_next_token():
    aligner = GroupAligner()
    released: list[list[int]] = []
    stream = group(0) + [7] + group(1) + group(2)  # a stray vq02 between groups
    for code in stream:
        released.append(aligner.push(code))
    released.append(aligner.finish())
    # group 0 is out once the token after it arrived; nothing is ever released twice
    assert released[5] == group(0)
    flat = [c for part in released for c in part]
    assert (flat, aligner.dropped) == realign_groups(stream)
    assert all(len(part) % 5 == 0 for part in released)


def test_bnb_variant_needs_widths_in_multiples_of_32(llm_dir, tmp_path):
    from models.llm import bnb_shape_problem, variant_problem

    cfg = json.loads((llm_dir / "config.json").read_text())
    assert bnb_shape_problem(cfg) is None and variant_problem(llm_dir, "bnb-4bit") is None
    narrow = {**cfg, "hidden_size": 48}  # 48 / 12 heads * 4 groups = 16-wide keys: not multiples of 32
    problem = bnb_shape_problem(narrow)
    assert "multiples of 32" in problem and "hidden_size 48" in problem
    other = tmp_path / "narrow"
    shutil.copytree(llm_dir, other)
    (other / "config.json").write_text(json.dumps(narrow))
    assert "multiples of 32" in variant_problem(other, "bnb-4bit")
    assert variant_problem(other, "base") is None
    with pytest.raises(OptionsError, match="bnb-4bit variant cannot run this model"):
        load_step1_model(other, "bnb-4bit", "cpu")


def test_demo_weights_of_other_shapes_keep_their_logit_biases(tmp_path):
    # A deeper residual stream divides the bias channel by a larger RMS after the final norm; the
    # writer measures that and rescales lm_head's bias column, so the audio/eos/text biases hold
    # (a real-width random LLM otherwise samples text ids and few audio groups: scripts/bench/ttfa.py).
    from demo.llm_assets import AUDIO_ID_OFFSET, BIAS_CHANNEL, EOT_ID, LOGIT_BIAS_AUDIO, LOGIT_BIAS_EOS
    from demo.llm_assets import write as write_llm

    write_llm(tmp_path, 0, {"num_hidden_layers": 12})
    model = load_step1_model(tmp_path / "Step-Audio-EditX", "base", "cpu")
    seen: list[torch.Tensor] = []
    hook = model.model.norm.register_forward_hook(lambda _m, _i, out: seen.append(out[0, :, BIAS_CHANNEL]))
    with torch.no_grad():
        model(input_ids=torch.arange(100, 164)[None])
    hook.remove()
    channel = float(seen[0].float().mean())
    head = model.lm_head.weight[:, BIAS_CHANNEL].detach().float()
    assert abs(float(head[AUDIO_ID_OFFSET]) * channel - LOGIT_BIAS_AUDIO) < 0.1 * LOGIT_BIAS_AUDIO
    assert abs(float(head[EOT_ID]) * channel - LOGIT_BIAS_EOS) < 0.1 * LOGIT_BIAS_EOS


def test_ttfa_benchmark_quick_run_on_demo_models(demo_models_root):
    from scripts.bench import ttfa as bench

    result = bench.run(bench_args(bench, "--model-dir", str(demo_models_root), "--quick", "--device", "cpu"))
    assert result["models"] == "real" and result["device"] == "cpu"  # the given folder, not a new demo
    long = result["long"]
    assert long["chunks"] > 1 and long["generated"] > 0 and long["runs"] == 1
    assert long["ttfa_s"] is None or 0 < long["ttfa_s"] <= long["total_s"]
    assert result["targets"]["ttfa_max_s"] == 0.3
    assert result["decode"] == "dynamic"  # the CPU's default
    rates = result["llm"]["decode_tokens_per_s"]
    assert rates["dynamic"] > 0 and rates["static"] > 0
    assert rates["static_vs_dynamic"] == pytest.approx(rates["static"] / rates["dynamic"], abs=0.01)
    first = result["llm"]["first_token_s"]
    assert first["new_voice"] > 0 and first["known_voice"] > 0
    assert first["speedup"] == pytest.approx(first["new_voice"] / first["known_voice"], rel=0.02)


def bench_args(stage, *argv: str):
    """``argv`` parsed as ``scripts/benchmark.py <stage>`` parses it (common options included)."""
    import argparse

    from scripts.benchmark import add_common_arguments

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    stage.add_arguments(parser)
    return parser.parse_args(list(argv))
