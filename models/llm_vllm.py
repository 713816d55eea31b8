"""The Step1 LLM stage on vLLM: the call surface of ``Step1LLM``, served by a vLLM server or engine.

    llm = VLLMStep1LLM.connect("http://127.0.0.1:8000", root / "Step-Audio-EditX")   # remote server
    llm = VLLMStep1LLM.start_engine(root / "Step-Audio-EditX", VLLMEngineOptions())  # in this process
    result = llm.clone(prompt_text, prompt_token_str, target_text, GenerationOptions(seed=0))
    for codes in llm.clone_stream(prompt_text, prompt_token_str, target_text, cancel=event):
        ...   # whole [02, 02, 06, 06, 06] groups of audio codes in [0, 5120), as they are generated

Prompts are built here with models.prompts (our sentencepiece tokenizer) and sent as token ids; the
outputs come back as token ids and are parsed with ``parse_generated_ids``, so results are the same
``GenerationResult`` as the native backend's (plus a ``repetition_rule`` flag, below).

Remote mode talks to vLLM's OpenAI-compatible server (``scripts/vllm_server.py`` starts one with the
right flags): ``POST /v1/completions`` with the prompt as a token-id list, ``return_token_ids`` for
the generated ids, ``top_k`` and ``seed`` as vLLM's extra sampling fields and ``stream`` for
streaming. In-process mode runs vLLM's ``AsyncLLM`` (the engine ``vllm serve`` uses) on an event
loop thread of its own; vllm is imported only then, so this module also imports in the app's venv,
which has no vllm. Both modes take many requests at once (the engine batches them); every request
carries its own seed.

Sampling matches the native backend: temperature (<= 0 is greedy), top-p, top-k 50, a seed per
request (drawn when none is given), length cap ``max_length`` counting the prompt, stop at eos.
The reference's repetition-aware rule (forbid the last token when it fills more than 10% of the
last 10) runs as a vLLM logits processor from the ``editx_vllm_step1`` plugin
(patches/vllm_step1). A server started without it cannot apply the rule: the backend finds that
out when it connects, logs a warning, and every result says ``repetition_rule=False``. Sampled ids
are not those of the native backend for the same seed (different random streams); greedy ids are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from errors import BackendUnavailable, GenerationCancelled, ModelFilesError, TextInputError
from models.generation import (
    REPETITION_THRESHOLD,
    REPETITION_WINDOW,
    GenerationOptions,
    GenerationResult,
    TokenStreamLLM,
)
from models.prompts import BOS_ID, EOT_ID, StepTextTokenizer

log = logging.getLogger(__name__)

# The plugin's logits processor (patches/vllm_step1) and the per-request switch it reads.
REPETITION_PROCESSOR = "editx_vllm_step1.repetition:RepetitionAwareLogitsProcessor"
REPETITION_XARGS = {"repetition_window": REPETITION_WINDOW, "repetition_threshold": REPETITION_THRESHOLD}
# The checkpoint's lm_head is not the embedding; vLLM's Step1 ties them when config.json lacks the key.
HF_OVERRIDES = {"tie_word_embeddings": False}
DEFAULT_MODEL_NAME = "step-audio-editx"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0  # a whole non-streamed generation, or the gap between two streamed chunks


class VLLMBackendError(BackendUnavailable):
    """The vLLM backend failed: the server refused the request, or the engine stopped."""


class VLLMServerUnavailable(VLLMBackendError):
    """The vLLM server cannot be reached, or stopped answering in the middle of a request."""


@dataclass
class VLLMGenerationResult(GenerationResult):
    """A ``GenerationResult``; ``repetition_rule`` says whether the repetition-aware rule was applied."""

    repetition_rule: bool = True


@dataclass
class VLLMEngineOptions:
    """How a vLLM engine is started, in-process or as a server (``scripts/vllm_server.py``).

    ``dtype`` "auto" is the checkpoint's bf16; use "float32" on CPU (the numbers then match the native
    backend's fp32). ``max_model_len`` caps prompt + generated tokens (the app's cap is 8192).
    ``quantization`` names a vLLM method ("awq", "compressed-tensors", ...) for a pre-quantized
    folder; None reads it from config.json. ``cpu_kvcache_space_gb`` sets VLLM_CPU_KVCACHE_SPACE (CPU
    builds only). ``repetition_rule`` loads the plugin's logits processor.
    """

    dtype: str = "auto"
    max_model_len: int = 8192
    max_num_seqs: int = 16
    gpu_memory_utilization: float = 0.9
    quantization: str | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    repetition_rule: bool = True
    cpu_kvcache_space_gb: float | None = None
    served_model_name: str = DEFAULT_MODEL_NAME
    extra: dict[str, Any] = field(default_factory=dict)  # any other AsyncEngineArgs field

    def engine_kwargs(self, model_dir: Path) -> dict[str, Any]:
        """Keyword arguments of vllm's ``AsyncEngineArgs`` for the Step1 folder ``model_dir``."""
        kwargs: dict[str, Any] = {
            "model": str(model_dir), "served_model_name": [self.served_model_name],
            "skip_tokenizer_init": True, "hf_overrides": dict(HF_OVERRIDES), "dtype": self.dtype,
            "max_model_len": self.max_model_len, "max_num_seqs": self.max_num_seqs,
            "gpu_memory_utilization": self.gpu_memory_utilization, "quantization": self.quantization,
            "enforce_eager": self.enforce_eager, "tensor_parallel_size": self.tensor_parallel_size,
        }
        if self.repetition_rule:
            kwargs["logits_processors"] = [REPETITION_PROCESSOR]
        kwargs.update(self.extra)
        return kwargs

    def cli_args(self, model_dir: Path) -> list[str]:
        """The same settings as ``vllm serve`` / ``vllm.entrypoints.openai.api_server`` flags."""
        args = ["--model", str(model_dir), "--served-model-name", self.served_model_name,
                "--skip-tokenizer-init", "--hf-overrides", json.dumps(HF_OVERRIDES), "--dtype", self.dtype,
                "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs),
                "--gpu-memory-utilization", str(self.gpu_memory_utilization),
                "--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.quantization:
            args += ["--quantization", self.quantization]
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.repetition_rule:
            args += ["--logits-processors", REPETITION_PROCESSOR]
        for key, value in self.extra.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is not False and value is not None:
                args += [flag, value if isinstance(value, str) else json.dumps(value)]
        return args

    def environment(self) -> dict[str, str]:
        """Variables vLLM reads at start-up (set them before the engine or server starts).

        Usage statistics and hub look-ups are turned off (the model is a local folder). The
        repetition processor implements vLLM's V1 model-runner interface (the runner vLLM uses on CPU),
        so the V1 runner is asked for where the V2 one would be the default (GPUs).
        """
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
        if self.repetition_rule:
            env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        if self.cpu_kvcache_space_gb is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = f"{self.cpu_kvcache_space_gb:g}"
        return env


@dataclass
class _Request:
    """One generation request in backend-neutral form."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    eos_id: int
    repetition_rule: bool


class _HTTPTransport:
    """vLLM's OpenAI-compatible server: /v1/models, /v1/completions (plain and streamed)."""

    def __init__(self, url: str, model: str | None, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.description = f"vLLM server at {self.url}"
        timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        self._client = httpx.Client(base_url=self.url, timeout=timeout,
                                    limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        try:
            card = self._first_model(model)
            self.model = card["id"]
            self.max_model_len: int | None = card.get("max_model_len")
            self.repetition_rule = self._probe_repetition_rule()
        except BaseException:
            self._client.close()
            raise

    def _unreachable(self, exc: Exception, during: str) -> VLLMServerUnavailable:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return VLLMServerUnavailable(
                f"the vLLM server at {self.url} is not reachable ({exc}); start it with "
                "`python scripts/vllm_server.py --model-dir DIR` or point --llm-url at a running one")
        return VLLMServerUnavailable(
            f"the vLLM server at {self.url} stopped answering {during} ({type(exc).__name__}: {exc}); "
            "check that it is still running (its log says why it stopped) and try again")

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            message = response.json().get("error", {}).get("message") or response.text
        except (ValueError, AttributeError):
            message = response.text
        raise VLLMBackendError(f"the vLLM server at {self.url} refused the request "
                               f"(HTTP {response.status_code}): {message.strip()[:500]}")

    def _first_model(self, wanted: str | None) -> dict:
        try:
            response = self._client.get("/v1/models")
        except httpx.TransportError as exc:
            raise self._unreachable(exc, "while listing its models") from exc
        self._raise_for_status(response)
        cards = response.json().get("data") or []
        if wanted is not None:
            cards = [c for c in cards if c.get("id") == wanted]
        if not cards:
            raise VLLMBackendError(f"the vLLM server at {self.url} serves no model "
                                   f"{wanted or ''}".rstrip() + "; check its --served-model-name")
        return cards[0]

    def _probe_repetition_rule(self) -> bool:
        """Whether the server runs the plugin's processor: it rejects an invalid window with HTTP 400."""
        body = {"model": self.model, "prompt": [BOS_ID], "max_tokens": 1, "temperature": 0.0,
                "vllm_xargs": {"repetition_window": 0}}
        try:
            response = self._client.post("/v1/completions", json=body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc, "while being probed") from exc
        if response.status_code == 400 and "repetition_window" in response.text:
            return True
        self._raise_for_status(response)
        log.warning("the vLLM server at %s does not run the repetition-aware logits processor (start it with "
                    "--logits-processors %s, as scripts/vllm_server.py does); results are flagged "
                    "repetition_rule=False", self.url, REPETITION_PROCESSOR)
        return False

    def _body(self, request: _Request, stream: bool) -> dict:
        body = {"model": self.model, "prompt": request.prompt_ids, "max_tokens": request.max_tokens,
                "temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k,
                "seed": request.seed, "stop_token_ids": [request.eos_id], "return_token_ids": True,
                "stream": stream}
        if request.repetition_rule:
            body["vllm_xargs"] = dict(REPETITION_XARGS)
        return body

    def complete(self, request: _Request) -> list[int]:
        """All generated ids of one request (eos included when produced)."""
        try:
            response = self._client.post("/v1/completions", json=self._body(request, stream=False))
        except httpx.TransportError as exc:
            raise self._unreachable(exc, "in the middle of a request") from exc
        self._raise_for_status(response)
        return list(response.json()["choices"][0]["token_ids"])

    def stream(self, request: _Request) -> Iterator[list[int]]:
        """Generated ids as the server sends them; closing the generator closes the connection,
        which makes the server abort the request."""
        finished = False
        try:
            body = self._body(request, stream=True)
            with self._client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for_status(resp)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise VLLMBackendError(f"the vLLM server at {self.url} failed the request: "
                                               f"{chunk['error'].get('message', chunk['error'])}")
                    choice = chunk["choices"][0]
                    if choice.get("token_ids"):
                        yield list(choice["token_ids"])
                    if choice.get("finish_reason") is not None:
                        finished = True
        except httpx.TransportError as exc:
            raise self._unreachable(exc, "in the middle of a streamed request") from exc
        if not finished:
            raise VLLMServerUnavailable(f"the vLLM server at {self.url} closed the stream before the "
                                        "generation finished; check that it is still running")

    def close(self) -> None:
        self._client.close()


class _EngineTransport:
    """vLLM's AsyncLLM in this process, driven from a private asyncio loop thread."""

    def __init__(self, model_dir: Path, options: VLLMEngineOptions) -> None:
        try:
            import vllm  # noqa: F401  (only this mode needs vllm)
        except ImportError as exc:
            raise VLLMBackendError("in-process vLLM needs the vllm package, which this Python lacks; run "
                                   "it with the vLLM venv's python (scripts/setup_vllm_venv.sh), or start a "
                                   "server with scripts/vllm_server.py and use VLLMStep1LLM.connect") from exc
        if options.repetition_rule:
            try:
                import editx_vllm_step1  # noqa: F401
            except ImportError as exc:
                raise VLLMBackendError("the repetition-aware rule needs the editx_vllm_step1 plugin in this "
                                       "venv: pip install patches/vllm_step1 (scripts/setup_vllm_venv.sh "
                                       "does), or pass VLLMEngineOptions(repetition_rule=False)") from exc
        for key, value in options.environment().items():
            os.environ.setdefault(key, value)  # vLLM reads these in the processes it starts
        self.description = f"in-process vLLM engine on {model_dir}"
        self.repetition_rule = options.repetition_rule
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        start = time.perf_counter()
        try:
            self._engine = self._call(self._create(model_dir, options))
        except BaseException:
            self._stop_loop()
            raise
        self.max_model_len = int(self._engine.model_config.max_model_len)
        log.info("LLM: vLLM engine on %s started in %.1f s", model_dir, time.perf_counter() - start)

    @staticmethod
    async def _create(model_dir: Path, options: VLLMEngineOptions):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**options.engine_kwargs(model_dir)))

    def _call(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _params(self, request: _Request, delta: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
            top_k=request.top_k, seed=request.seed, stop_token_ids=[request.eos_id], detokenize=False,
            extra_args=dict(REPETITION_XARGS) if request.repetition_rule else None,
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY)

    def _error(self, exc: BaseException) -> VLLMBackendError:
        return VLLMBackendError(f"the {self.description} failed the request ({type(exc).__name__}: {exc})")

    def complete(self, request: _Request) -> list[int]:
        params = self._params(request, delta=False)

        async def run() -> list[int]:
            ids: list[int] = []
            async for out in self._engine.generate({"prompt_token_ids": request.prompt_ids}, params,
                                                   uuid.uuid4().hex):
                ids = list(out.outputs[0].token_ids)
            return ids

        try:
            return self._call(run())
        except Exception as exc:
            raise self._error(exc) from exc

    def stream(self, request: _Request) -> Iterator[list[int]]:
        """Generated ids as the engine produces them; closing the generator aborts the request."""
        params = self._params(request, delta=True)
        chunks: queue.Queue = queue.Queue()

        async def pump() -> None:
            try:
                async for out in self._engine.generate({"prompt_token_ids": request.prompt_ids}, params,
                                                       uuid.uuid4().hex):
                    chunks.put(("ids", list(out.outputs[0].token_ids)))
                chunks.put(("done", None))
            except Exception as exc:
                chunks.put(("error", exc))

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                kind, value = chunks.get()
                if kind == "ids":
                    if value:
                        yield value
                elif kind == "done":
                    return
                else:
                    raise self._error(value) from value
        finally:
            if not future.done():
                future.cancel()  # cancels generate(), which aborts the request in the engine

    def _stop_loop(self) -> None:
        async def cancel_pending() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_pending(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def close(self) -> None:
        try:
            self._engine.shutdown()
        finally:
            self._stop_loop()


class VLLMStep1LLM(TokenStreamLLM):
    """The LLM stage on vLLM (``TokenStreamLLM``: clone, edit, stream_ids ...); safe to call from many
    threads at once (the server or engine batches concurrent requests)."""

    backend = "vllm"

    def __init__(self, transport: _HTTPTransport | _EngineTransport, tokenizer: StepTextTokenizer,
                 model_dir: Path, mode: str) -> None:
        self._transport = transport
        self.tokenizer = tokenizer
        self.model_dir = Path(model_dir)
        self.mode = mode  # "remote" or "in-process"
        self.variant = "vllm"
        self.device = transport.description
        self.eos_id = self._read_eos_id(self.model_dir)
        # Whether requests ask for the repetition-aware rule; only honoured where the server runs it.
        self.apply_repetition_rule = True

    @staticmethod
    def _read_eos_id(model_dir: Path) -> int:
        path = model_dir / "config.json"
        if not path.is_file():
            raise ModelFilesError(f"no config.json in {model_dir.name}/; pass the Step-Audio-EditX folder "
                                  "the vLLM server serves (its tokenizer.model builds the prompts)")
        return int(json.loads(path.read_text()).get("eos_token_id", EOT_ID))

    @classmethod
    def connect(cls, url: str, model_dir: Path, model: str | None = None,
                timeout_s: float = READ_TIMEOUT_S) -> VLLMStep1LLM:
        """Use the vLLM server at ``url`` (``http://host:port``) serving the folder ``model_dir``.

        ``model_dir`` gives the tokenizer and eos id; ``model`` picks a served model name (default:
        the server's first). Raises VLLMServerUnavailable when nothing answers at ``url``.
        """
        model_dir = Path(model_dir)
        tokenizer = StepTextTokenizer(model_dir / "tokenizer.model")
        transport = _HTTPTransport(url, model, timeout_s)
        log.info("LLM: using the %s (model %s, max_model_len %s, repetition rule %s)", transport.description,
                 transport.model, transport.max_model_len, "on" if transport.repetition_rule else "OFF")
        return cls(transport, tokenizer, model_dir, "remote")

    @classmethod
    def start_engine(cls, model_dir: Path, options: VLLMEngineOptions | None = None) -> VLLMStep1LLM:
        """Start vLLM's async engine in this process on ``model_dir`` (needs vllm: the vLLM venv)."""
        model_dir = Path(model_dir)
        tokenizer = StepTextTokenizer(model_dir / "tokenizer.model")
        transport = _EngineTransport(model_dir, options or VLLMEngineOptions())
        return cls(transport, tokenizer, model_dir, "in-process")

    @property
    def repetition_rule(self) -> bool:
        """Whether generations apply the repetition-aware rule (asked for, and run by the server)."""
        return self.apply_repetition_rule and self._transport.repetition_rule

    @property
    def applies_repetition_rule(self) -> bool:  # TokenStreamLLM's name for it
        return self.repetition_rule

    def close(self) -> None:
        """Release the HTTP connections, or shut the in-process engine down."""
        self._transport.close()

    def __enter__(self) -> VLLMStep1LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- generation ----------------------------------------------------------------------------

    def _request(self, prompt_ids: list[int], options: GenerationOptions) -> _Request:
        if len(prompt_ids) >= options.max_length:
            raise TextInputError(f"the prompt is {len(prompt_ids)} tokens, which leaves no room under the "
                                 f"length limit of {options.max_length}; use a shorter reference or text")
        limit = options.max_length
        server_len = self._transport.max_model_len
        if server_len is not None and server_len < limit:
            if len(prompt_ids) >= server_len:
                raise TextInputError(f"the prompt is {len(prompt_ids)} tokens, which leaves no room under "
                                     f"the vLLM engine's max_model_len of {server_len}; use a shorter "
                                     "reference or text, or start vLLM with a larger --max-model-len")
            limit = server_len
        if options.max_new_tokens is not None:
            limit = min(limit, len(prompt_ids) + options.max_new_tokens)
        options = self.with_seed(options)
        greedy = options.temperature <= 0
        return _Request(prompt_ids=list(prompt_ids), max_tokens=limit - len(prompt_ids),
                        temperature=0.0 if greedy else float(options.temperature),
                        top_p=1.0 if greedy else float(options.top_p),
                        top_k=0 if greedy or not options.top_k or options.top_k < 0 else int(options.top_k),
                        seed=None if greedy else options.seed, eos_id=self.eos_id,
                        repetition_rule=self.repetition_rule)

    def stream_id_chunks(self, prompt_ids: list[int], options: GenerationOptions | None = None,
                         cancel: threading.Event | None = None) -> Iterator[list[int]]:
        """Generated LLM ids in chunks as the server sends them (eos included at the end when produced).

        Setting ``cancel`` (checked at every chunk) raises GenerationCancelled and aborts the request;
        so does closing the generator.
        """
        request = self._request(prompt_ids, options or GenerationOptions())
        done = 0
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("generation cancelled after 0 tokens")
        stream = self._transport.stream(request)
        try:
            for chunk in stream:
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelled(f"generation cancelled after {done} tokens")
                done += len(chunk)
                yield chunk
        finally:
            stream.close()  # a stream left early aborts its request on the server / engine

    def stream_ids(self, prompt_ids: list[int], options: GenerationOptions | None = None,
                   cancel: threading.Event | None = None) -> Iterator[int]:
        """Each generated LLM id as it arrives (eos last when produced); see ``stream_id_chunks``."""
        for chunk in self.stream_id_chunks(prompt_ids, options, cancel):
            yield from chunk

    def generate_ids(self, prompt_ids: list[int], options: GenerationOptions,
                     progress: Callable[[int], None] | None = None,
                     cancel: threading.Event | None = None) -> tuple[list[int], int | None]:
        """``TokenStreamLLM.generate_ids``; without ``progress`` and ``cancel`` the request is one plain
        (non-streamed) completion."""
        options = self.with_seed(options)
        if progress is not None or cancel is not None:
            return super().generate_ids(prompt_ids, options, progress, cancel)
        request = self._request(prompt_ids, options)
        return self._transport.complete(request), request.seed

    def generate_audio_tokens(self, prompt_ids: list[int], options: GenerationOptions,
                              progress: Callable[[int], None] | None = None,
                              cancel: threading.Event | None = None) -> VLLMGenerationResult:
        """``TokenStreamLLM.generate_audio_tokens``, flagged with whether the repetition rule ran."""
        result = super().generate_audio_tokens(prompt_ids, options, progress, cancel)
        return VLLMGenerationResult(**vars(result), repetition_rule=self.repetition_rule)
