"""The vLLM LLM backend (models/llm_vllm.py) against real vLLM servers and engines on the demo LLM.

Tests marked ``vllm`` start ``vllm.entrypoints.openai.api_server`` with the vLLM venv's python from
$EDITX_VLLM_PYTHON (bash scripts/setup_vllm_venv.sh creates the venv; CI sets the variable). Without it
they fail; ``-m "not vllm"`` deselects them where vLLM is absent. The other tests need no vLLM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from errors import GenerationCancelled
from models.audio_tokens import GroupAligner, token_str
from models.generation import GenerationOptions, GenerationResult, audio_code, parse_generated_ids
from models.llm import Step1LLM
from models.llm_vllm import VLLMStep1LLM
from models.prompts import build_clone_prompt
from models.step1 import alibi_bias, alibi_slopes
from models.vllm_options import HF_OVERRIDES, REPETITION_PROCESSOR, VLLMBackendError, VLLMEngineOptions
from models.vllm_remote import VLLMServerUnavailable
from scripts.vllm_server import PYTHON_ENV, VLLMServer, free_port, start_server

ROOT = Path(__file__).resolve().parents[1]
PROMPT_CODES = [c for g in range(12) for c in (g, 1000 - g, 1024 + g, 2048 + g, 4000 + g)]
PROMPT_TOKENS = token_str(PROMPT_CODES)
NEW_TOKENS = 120  # per generation: enough to cross the repetition rule and several audio groups
GREEDY_NEW_TOKENS = 400  # greedy decoding of the demo model cycles for a while before whole groups appear
# What the tests' engines use: fp32 on CPU (from the server helper), eager mode for a quicker start.
ENGINE = {"max_model_len": 4096, "max_num_seqs": 8, "enforce_eager": True}


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """The native backend runs with one torch thread (see conftest)."""


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = os.environ.get(PYTHON_ENV)
    if not python:
        pytest.fail(
            f"{PYTHON_ENV} is not set: point it at the vLLM venv's python (bash "
            "scripts/setup_vllm_venv.sh DIR creates one and prints it), or deselect these tests "
            "with -m 'not vllm'"
        )
    if not Path(python).is_file():
        pytest.fail(f"{PYTHON_ENV}={python} does not exist; run bash scripts/setup_vllm_venv.sh")
    return python


@pytest.fixture(scope="module")
def llm_dir(demo_llm_root) -> Path:
    return demo_llm_root / "Step-Audio-EditX"


@pytest.fixture(scope="session")
def vllm_server(vllm_python, demo_llm_root, tmp_path_factory):
    """One real vLLM server on the demo LLM for the whole session."""
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    server = start_server(
        demo_llm_root / "Step-Audio-EditX",
        vllm_python,
        options=VLLMEngineOptions(**ENGINE),
        log_path=log_path,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def remote(vllm_server, llm_dir):
    with VLLMStep1LLM.connect(vllm_server.url, llm_dir) as llm:
        yield llm


@pytest.fixture(scope="module")
def native(llm_dir):
    return Step1LLM.load(llm_dir, variant="base", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def prompt(remote) -> list[int]:
    return build_clone_prompt(remote.tokenizer, "hello there", PROMPT_TOKENS, "How are you today?")


def greedy(prompt_ids: list[int], new: int = NEW_TOKENS) -> GenerationOptions:
    return GenerationOptions(temperature=0.0, max_length=len(prompt_ids) + new)


def sampled(prompt_ids: list[int], seed: int, new: int = NEW_TOKENS) -> GenerationOptions:
    return GenerationOptions(seed=seed, max_length=len(prompt_ids) + new)


# --- no vLLM needed ------------------------------------------------------------------------------


def group(k: int) -> list[int]:
    return [2 * k % 1024, (2 * k + 1) % 1024, 1024 + 3 * k, 1025 + 3 * k, 1026 + 3 * k]


def test_engine_options_carry_the_step1_flags(tmp_path):
    options = VLLMEngineOptions(
        dtype="float32", max_model_len=2048, quantization="awq", enforce_eager=True, cpu_kvcache_space_gb=1
    )
    kwargs = options.engine_kwargs(tmp_path)
    assert kwargs["skip_tokenizer_init"] and kwargs["hf_overrides"] == HF_OVERRIDES
    assert kwargs["logits_processors"] == [REPETITION_PROCESSOR] and kwargs["quantization"] == "awq"
    args = options.cli_args(tmp_path)
    assert args[args.index("--hf-overrides") + 1] == json.dumps({"tie_word_embeddings": False})
    assert "--skip-tokenizer-init" in args and "--enforce-eager" in args
    assert args[args.index("--logits-processors") + 1] == REPETITION_PROCESSOR
    env = options.environment()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    plain = VLLMEngineOptions(repetition_rule=False)
    assert "logits_processors" not in plain.engine_kwargs(tmp_path)
    assert "--logits-processors" not in plain.cli_args(tmp_path)


@pytest.fixture(scope="module")
def alibi_math():
    """The plugin's torch math (patches/vllm_step1/editx_vllm_step1/alibi_math.py); it imports no vLLM."""
    sys.path.insert(0, str(ROOT / "patches" / "vllm_step1"))
    try:
        import editx_vllm_step1.alibi_math as module
    finally:
        sys.path.remove(str(ROOT / "patches" / "vllm_step1"))
    return module


def test_plugin_bias_is_the_reference_bias(alibi_math, reference_dir):
    with np.load(reference_dir / "llm" / "reference_tiny.npz") as z:
        slopes, expected = torch.from_numpy(z["alibi_slopes_tiny"]), z["alibi_bias_tiny_T8"]
    bias = alibi_math.sqrt_alibi_bias(slopes, expected.shape[1], expected.shape[2], torch.float32).numpy()
    np.testing.assert_array_equal(np.isneginf(bias), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(bias[finite], expected[finite], atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(alibi_slopes(len(slopes)).numpy(), slopes.numpy())


@pytest.mark.parametrize("num_queries, budget", [(1, 1 << 26), (7, 1 << 26), (23, 1 << 26), (23, 100)])
def test_plugin_attention_equals_the_native_math(alibi_math, num_queries, budget):
    """GQA (12 heads in 4 contiguous groups), queries at the end of 23 keys, any row-chunk budget."""
    g = torch.Generator().manual_seed(0)
    heads, groups, keys, hd = 12, 4, 23, 8
    q = torch.randn(heads, num_queries, hd, generator=g)
    k, v = torch.randn(groups, keys, hd, generator=g), torch.randn(groups, keys, hd, generator=g)
    slopes = alibi_slopes(heads)
    got = alibi_math.sqrt_alibi_attention(q, k, v, slopes, hd**-0.5, max_bias_elements=budget)
    # Native math (models/step1.py): each query head h reads KV group h // 3.
    kk, vv = k.repeat_interleave(3, dim=0), v.repeat_interleave(3, dim=0)
    scores = q @ kk.transpose(1, 2) * hd**-0.5 + alibi_bias(slopes, num_queries, keys)
    expected = torch.softmax(scores, dim=-1) @ vv
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_server_down_is_a_clear_error(llm_dir):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(VLLMServerUnavailable, match=r"vLLM server at .*:\d+ is not reachable") as err:
        VLLMStep1LLM.connect(url, llm_dir, timeout_s=10)
    assert url in str(err.value) and "scripts/vllm_server.py" in str(err.value)
    assert isinstance(err.value, VLLMBackendError)


def test_in_process_mode_says_what_to_do_without_vllm(llm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as in the app venv: `import vllm` fails
    with pytest.raises(VLLMBackendError, match="vLLM venv"):
        VLLMStep1LLM.start_engine(llm_dir)


# --- a real vLLM server ----------------------------------------------------------------------------

# Greedy decoding of the random demo model ends early or never makes a whole audio group for most
# texts; the test speaks the first of these whose native greedy output holds one.
GREEDY_TEXTS = ("It is a fine day.", "See you tomorrow.", "How are you today?", "Good morning.")


@pytest.mark.vllm
def test_greedy_ids_match_the_native_backend(remote, native):
    for text in GREEDY_TEXTS:
        prompt = build_clone_prompt(remote.tokenizer, "hello there", PROMPT_TOKENS, text)
        options = greedy(prompt, new=GREEDY_NEW_TOKENS)
        expected, _ = native.generate_ids(prompt, options)
        if parse_generated_ids(expected, native.eos_id)[0]:
            break
    assert parse_generated_ids(expected, native.eos_id)[0], "no greedy text made a whole audio group"
    assert remote.repetition_rule
    for _ in range(2):  # the second request hits vLLM's prefix cache
        got, seed = remote.generate_ids(prompt, options)
        assert seed is None and got == expected
    result = remote.clone("hello there", PROMPT_TOKENS, text, options)
    assert isinstance(result, GenerationResult) and result.repetition_rule
    assert result.audio_tokens == parse_generated_ids(expected, native.eos_id)[0]
    assert result.new_tokens == len(expected) and result.prompt_tokens == len(prompt)


@pytest.mark.vllm
def test_stream_is_incremental_and_equals_the_plain_request(remote, prompt):
    options = sampled(prompt, seed=5, new=200)
    plain, seed = remote.generate_ids(prompt, options)
    # A generation that stops before the cap stopped at eos, which is returned (as natively).
    assert len(plain) == 200 or (plain[-1] == remote.eos_id and remote.eos_id not in plain[:-1])
    chunks = list(remote.stream_id_chunks(prompt, options))
    assert seed == 5 and len(chunks) > 1 and all(chunks)
    assert [t for c in chunks for t in c] == plain == list(remote.stream_ids(prompt, options))
    seen: list[int] = []
    with_progress, _ = remote.generate_ids(prompt, options, progress=seen.append)
    assert with_progress == plain and seen == list(range(1, len(plain) + 1))
    result = remote.generate_audio_tokens(prompt, options)
    aligner, groups = GroupAligner(), []
    for token in remote.stream_ids(
        remote.clone_prompt("hello there", PROMPT_TOKENS, "How are you today?"), options
    ):
        code = audio_code(token)
        if token == remote.eos_id:
            break
        if code is not None and (group := aligner.push(code)):
            groups.append(group)
    groups.append(aligner.finish())
    assert len(groups) > 1 and all(len(g) % 5 == 0 for g in groups)
    assert [c for g in groups for c in g] == result.audio_tokens == parse_generated_ids(plain, 3)[0]


@pytest.mark.vllm
def test_eight_concurrent_requests_each_with_its_own_seed(remote, prompt):
    seeds = [100, 101, 102, 103, 100, 101, 102, 103]
    with ThreadPoolExecutor(len(seeds)) as pool:
        runs = list(pool.map(lambda s: remote.generate_ids(prompt, sampled(prompt, s)), seeds))
    assert [seed for _, seed in runs] == seeds
    ids = [tuple(new) for new, _ in runs]
    assert all(ids)
    for i in range(4):
        assert ids[i] == ids[i + 4]  # same seed, same ids
    assert len(set(ids[:4])) == 4  # different seeds, different ids
    alone, _ = remote.generate_ids(prompt, sampled(prompt, 101))
    assert tuple(alone) == ids[1]


@pytest.mark.vllm
def test_cancel_aborts_the_request(remote, prompt, vllm_server):
    cancel = threading.Event()
    stream = remote.stream_ids(prompt, sampled(prompt, 5, new=2000), cancel)
    assert next(stream)
    cancel.set()
    with pytest.raises(GenerationCancelled, match="cancelled after"):
        list(stream)
    with pytest.raises(GenerationCancelled, match="after 0 tokens"):
        remote.clone("hello there", PROMPT_TOKENS, "How are you?", sampled(prompt, 5), cancel=cancel)
    again, _ = remote.generate_ids(prompt, sampled(prompt, 5, new=8))  # the server is fine
    assert len(again) <= 8


def never_ending_copy(llm_dir: Path, dest: Path) -> Path:
    """A copy of the demo LLM whose eos logit is hugely negative: every request runs to its cap."""
    from safetensors.torch import load_file, save_file

    from demo.llm_assets import BIAS_CHANNEL, SHARD

    shutil.copytree(llm_dir, dest)
    weights = load_file(dest / SHARD)
    head = weights["lm_head.weight"]
    head[3] = 0
    head[3, BIAS_CHANNEL] = -1000.0  # the demo's constant positive channel: eos logit ~ -2500
    save_file(weights, dest / SHARD, metadata={"format": "pt"})
    return dest


@pytest.mark.vllm
def test_server_without_the_processor_is_flagged_and_its_death_is_a_clear_error(
    vllm_python, llm_dir, prompt, tmp_path
):
    """A server started without the repetition processor: the backend notices, results say so.

    The same server (on a demo LLM that never emits eos, so requests are surely in flight) is then
    killed (SIGKILL of its process group) during a streamed and during plain requests: each ends in
    VLLMServerUnavailable, and so does the next request.
    """
    model = never_ending_copy(llm_dir, tmp_path / "Step-Audio-EditX")
    server = start_server(
        model,
        vllm_python,
        options=VLLMEngineOptions(**ENGINE, repetition_rule=False),
        log_path=tmp_path / "server.log",
    )
    try:
        llm = VLLMStep1LLM.connect(server.url, model)
        assert not llm.repetition_rule
        result = llm.generate_audio_tokens(prompt, sampled(prompt, 5, new=100))
        assert result.repetition_rule is False and result.new_tokens == 100
        _kill_mid_request(server, llm, prompt)
    finally:
        server.stop()


def _kill_mid_request(server: VLLMServer, llm: VLLMStep1LLM, prompt: list[int]) -> None:
    stream = llm.stream_ids(prompt, sampled(prompt, 1, new=3000))
    assert next(stream)
    with ThreadPoolExecutor(4) as pool:
        plain = [pool.submit(llm.generate_ids, prompt, sampled(prompt, s, new=3000)) for s in range(4)]
        while _running(server.url) < 1 + len(plain):  # every request admitted (none can end before 3000)
            assert not any(f.done() for f in plain), [f.exception() for f in plain if f.done()]
            time.sleep(0.05)
        server.kill()
        with pytest.raises(VLLMServerUnavailable, match="stopped answering|closed the stream") as err:
            list(stream)
        assert server.url in str(err.value)
        for future in plain:
            with pytest.raises(VLLMServerUnavailable, match="stopped answering in the middle of a request"):
                future.result()
    with pytest.raises(VLLMServerUnavailable, match="not reachable"):
        llm.generate_ids(prompt, greedy(prompt))


def _running(url: str) -> float:
    """vllm:num_requests_running from the server's Prometheus metrics (0 when unavailable)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.TransportError:
        return 0.0
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:num_requests_running")
    ]
    return sum(values)


# --- in-process mode (run under the vLLM venv's python) -------------------------------------------


@pytest.fixture(scope="module")
def in_process(vllm_python, llm_dir, prompt, reference_dir, tmp_path_factory) -> dict:
    """Greedy, seeded, streamed and concurrent runs through VLLMStep1LLM.start_engine, on the demo LLM
    and on the tiny reference fixture, in one run of tests/vllm_inprocess_check.py."""
    with np.load(reference_dir / "llm" / "reference_tiny.npz") as z:
        ref_prompt = z["gen_prompt_ids"].tolist()
        ref_new = z["gen_new_ids"].tolist()
    options = {**ENGINE, "dtype": "float32", "cpu_kvcache_space_gb": 1}
    # The tiny fixture plus the Python files a real checkpoint ships for trust_remote_code; running them
    # would leave a marker file. The plugin's Step1Config is what makes them unnecessary.
    tmp = tmp_path_factory.mktemp("vllm_inprocess")
    tiny = tmp / "tiny_with_remote_code"
    shutil.copytree(reference_dir / "llm" / "tiny", tiny)
    marker = tmp / "remote_code_ran"
    payload = f"open({str(marker)!r}, 'w').write('yes')\nraise SystemExit('remote code ran')\n"
    for name in ("configuration_step1.py", "modeling_step1.py"):
        (tiny / name).write_text(payload)
    spec = {
        "engines": [
            {
                "model_dir": str(llm_dir),
                "options": options,
                "jobs": [
                    {"prompt_ids": prompt, "max_length": len(prompt) + NEW_TOKENS, "temperature": 0.0},
                    {
                        "prompt_ids": prompt,
                        "max_length": len(prompt) + NEW_TOKENS,
                        "temperature": 0.7,
                        "seed": 11,
                        "stream": True,
                    },
                    {
                        "prompt_ids": prompt,
                        "max_length": len(prompt) + 40,
                        "temperature": 0.7,
                        "seed": 200,
                        "concurrent": 8,
                    },
                ],
            },
            {
                "model_dir": str(tiny),
                "options": options,
                "jobs": [
                    {
                        "prompt_ids": ref_prompt,
                        "max_length": len(ref_prompt) + len(ref_new),
                        "temperature": 0.0,
                        "repetition_rule": False,
                    },
                    {"prompt_ids": ref_prompt, "max_length": len(ref_prompt) + 60, "temperature": 0.0},
                ],
            },
        ]
    }
    out = tmp / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [vllm_python, str(ROOT / "tests" / "vllm_inprocess_check.py"), str(out)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"in-process vLLM run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    results = json.loads(out.read_text())["engines"]
    return {
        "demo": results[0],
        "tiny": results[1],
        "ref_prompt": ref_prompt,
        "ref_new": ref_new,
        "remote_code_ran": marker.exists(),
    }


@pytest.mark.vllm
def test_in_process_greedy_and_seeded_ids_equal_the_server(in_process, remote, prompt):
    greedy_run, seeded_run, _ = in_process["demo"]
    assert greedy_run["repetition_rule"] and greedy_run["seed"] is None
    assert greedy_run["ids"] == remote.generate_ids(prompt, greedy(prompt))[0]
    assert seeded_run["ids"] == remote.generate_ids(prompt, sampled(prompt, 11))[0]
    assert [t for c in seeded_run["chunks"] for t in c] == seeded_run["ids"] and len(seeded_run["chunks"]) > 1


@pytest.mark.vllm
def test_in_process_runs_concurrent_requests(in_process):
    runs = in_process["demo"][2]["runs"]
    assert [r["seed"] for r in runs] == list(range(200, 208))
    assert all(r["ids"] for r in runs) and len({tuple(r["ids"]) for r in runs}) == len(runs)


@pytest.mark.vllm
def test_in_process_matches_the_tiny_reference_fixture(in_process, reference_dir):
    """vLLM (with the plugin's sqrt-ALiBi CPU attention) reproduces the reference's greedy ids
    exactly; with the repetition rule on it matches the native backend. The folder's own Python files
    (configuration_step1.py, modeling_step1.py) never run."""
    assert not in_process["remote_code_ran"]
    without_rule, with_rule = in_process["tiny"]
    assert not without_rule["repetition_rule"]
    assert without_rule["ids"] == in_process["ref_new"]
    native = Step1LLM.load(reference_dir / "llm" / "tiny", variant="base", device="cpu", dtype="fp32")
    prompt = in_process["ref_prompt"]
    expected, _ = native.generate_ids(prompt, greedy(prompt, new=60))
    assert with_rule["repetition_rule"] and with_rule["ids"] == expected


@pytest.mark.vllm
def test_backends_benchmark_quick_run(vllm_server, demo_llm_root):
    import argparse

    from scripts.bench import llm_backends as bench

    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path)
    bench.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model-dir",
            str(demo_llm_root),
            "--quick",
            "--threads",
            "1",
            "--concurrency",
            "1,2",
            "--llm-url",
            vllm_server.url,
        ]
    )
    result = bench.run(args)
    assert set(result["backends"]) == {"native", "vllm"} and result["demo_models"]
    for figures in result["backends"].values():
        assert set(figures["levels"]) == {"1", "2"} and figures["ratio_2_vs_1"] > 0
        for level in figures["levels"].values():
            assert level["tokens_per_s"] > 0 and level["requests_per_s"] > 0
            assert level["requests"] == 2  # --quick: as many as the highest level
        latency = figures["latency"]
        assert latency["latency_requests"] == 5 and 0 < latency["first_token_s"]
        if latency["first_chunk_tokens_s"] is not None:  # None: every request ended before 30 tokens
            assert latency["first_chunk_tokens_s"] >= latency["first_token_s"]
    assert "vllm_meets_target" in result


@pytest.mark.vllm
@pytest.mark.slow
def test_the_app_on_the_vllm_backend_streams_then_survives_the_server_dying(
    vllm_python, demo_models_root, tmp_path
):
    """app.py --llm-backend vllm --llm-url: a streamed clone through the API; then the server dies:
    a clear 503, and a request for the native backend still gets audio."""
    import io

    import soundfile as sf

    from demo.examples import synthetic_voice
    from tests.app_server import running_app

    server = start_server(
        demo_models_root / "Step-Audio-EditX",
        vllm_python,
        options=VLLMEngineOptions(**ENGINE),
        log_path=tmp_path / "vllm.log",
    )
    try:
        extra = ["--llm-backend", "vllm", "--llm-url", server.url, "--no-warmup"]
        (tmp_path / "app").mkdir()
        with (
            running_app(demo_models_root, tmp_path / "app", extra) as app,
            httpx.Client(base_url=app.url, timeout=600) as http,
        ):
            health = app.health()
            assert health["llm_backend"] == "vllm" and health["llm_repetition_rule"] is True
            assert health["llm_decode"] == "vllm"  # vLLM decodes: no native decode mode applies
            buffer = io.BytesIO()
            sf.write(buffer, synthetic_voice(3.0, 22050, seed=5), 22050, format="WAV")
            voice = http.post(
                "/v1/voices",
                files={"file": ("v.wav", buffer.getvalue(), "audio/wav")},
                data={"name": "vllm voice", "text": "a test voice"},
            ).json()["id"]
            body = {
                "model": "step-audio-editx",
                "voice": voice,
                "input": "Hello over vLLM.",
                "seed": 3,
                "response_format": "pcm",
                "stream_format": "audio",
            }
            with http.stream("POST", "/v1/audio/speech", json=body) as response:
                assert response.status_code == 200
                audio = b"".join(response.iter_bytes())
            assert len(audio) > 0
            server.kill()
            down = http.post("/v1/audio/speech", json={**body, "stream_format": None})
            assert down.status_code == 503, down.text
            error = down.json()["error"]
            assert error["code"] == "backend_unavailable" and "vLLM server" in error["message"]
            native = http.post("/v1/audio/speech", json={**body, "model": "native", "stream_format": None})
            assert native.status_code == 200 and native.headers["x-backend"] == "native"
    finally:
        server.stop()
