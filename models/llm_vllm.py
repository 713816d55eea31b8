"""The Step1 LLM stage on vLLM: the call surface of ``Step1LLM``, served by a vLLM server or engine.

    llm = VLLMStep1LLM.connect("http://127.0.0.1:8000", root / "Step-Audio-EditX")   # remote server
    llm = VLLMStep1LLM.start_engine(root / "Step-Audio-EditX", VLLMEngineOptions())  # in this process
    result = llm.clone(prompt_text, prompt_token_str, target_text, GenerationOptions(seed=0))
    for codes in llm.clone_stream(prompt_text, prompt_token_str, target_text, cancel=event):
        ...   # whole [02, 02, 06, 06, 06] groups of audio codes in [0, 5120), as they are generated

Prompts are built here with models.prompts (our sentencepiece tokenizer) and sent as token ids; the
outputs come back as token ids and are parsed with ``parse_generated_ids``, so results are the same
``GenerationResult`` as the native backend's (plus a ``repetition_rule`` flag, below).

Remote mode talks to vLLM's OpenAI-compatible server (``models/vllm_remote.py``); in-process mode runs
vLLM's ``AsyncLLM`` on an event loop thread of its own (``models/vllm_inprocess.py``); how an engine
is started is ``VLLMEngineOptions`` (``models/vllm_options.py``). Both modes take many requests at once
(the engine batches them); every request carries its own seed.

Sampling matches the native backend: temperature (<= 0 is greedy), top-p, top-k 50, a seed per
request (drawn when none is given), length cap ``max_length`` counting the prompt, stop at eos.
The reference's repetition-aware rule (forbid the last token when it fills more than 10% of the
last 10) runs as a vLLM logits processor from the ``editx_vllm_step1`` plugin
(patches/vllm_step1). A server started without it cannot apply the rule: the backend finds that
out when it connects, logs a warning, and every result says ``repetition_rule=False``. Sampled ids
are not those of the native backend for the same seed (different random streams); greedy ids are.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from errors import GenerationCancelled, ModelFilesError, TextInputError
from models.generation import GenerationOptions, GenerationResult, TokenStreamLLM
from models.prompts import EOT_ID, StepTextTokenizer
from models.vllm_inprocess import EngineTransport
from models.vllm_options import VLLMEngineOptions, VLLMRequest
from models.vllm_remote import READ_TIMEOUT_S, HTTPTransport

log = logging.getLogger(__name__)


@dataclass
class VLLMGenerationResult(GenerationResult):
    """A ``GenerationResult``; ``repetition_rule`` says whether the repetition-aware rule was applied."""

    repetition_rule: bool = True


class VLLMStep1LLM(TokenStreamLLM):
    """The LLM stage on vLLM (``TokenStreamLLM``: clone, edit, stream_ids ...); safe to call from many
    threads at once (the server or engine batches concurrent requests)."""

    backend = "vllm"

    def __init__(
        self,
        transport: HTTPTransport | EngineTransport,
        tokenizer: StepTextTokenizer,
        model_dir: Path,
        mode: str,
    ) -> None:
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
            raise ModelFilesError(
                f"no config.json in {model_dir.name}/; pass the Step-Audio-EditX folder "
                "the vLLM server serves (its tokenizer.model builds the prompts)"
            )
        return int(json.loads(path.read_text()).get("eos_token_id", EOT_ID))

    @classmethod
    def connect(
        cls, url: str, model_dir: Path, model: str | None = None, timeout_s: float = READ_TIMEOUT_S
    ) -> VLLMStep1LLM:
        """Use the vLLM server at ``url`` (``http://host:port``) serving the folder ``model_dir``.

        ``model_dir`` gives the tokenizer and eos id; ``model`` picks a served model name (default:
        the server's first). Raises VLLMServerUnavailable when nothing answers at ``url``.
        """
        model_dir = Path(model_dir)
        tokenizer = StepTextTokenizer(model_dir / "tokenizer.model")
        transport = HTTPTransport(url, model, timeout_s)
        log.info(
            "LLM: using the %s (model %s, max_model_len %s, repetition rule %s)",
            transport.description,
            transport.model,
            transport.max_model_len,
            "on" if transport.repetition_rule else "OFF",
        )
        return cls(transport, tokenizer, model_dir, "remote")

    @classmethod
    def start_engine(cls, model_dir: Path, options: VLLMEngineOptions | None = None) -> VLLMStep1LLM:
        """Start vLLM's async engine in this process on ``model_dir`` (needs vllm: the vLLM venv)."""
        model_dir = Path(model_dir)
        tokenizer = StepTextTokenizer(model_dir / "tokenizer.model")
        transport = EngineTransport(model_dir, options or VLLMEngineOptions())
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

    def _request(self, prompt_ids: list[int], options: GenerationOptions) -> VLLMRequest:
        if len(prompt_ids) >= options.max_length:
            raise TextInputError(
                f"the prompt is {len(prompt_ids)} tokens, which leaves no room under the "
                f"length limit of {options.max_length}; use a shorter reference or text"
            )
        limit = options.max_length
        server_len = self._transport.max_model_len
        if server_len is not None and server_len < limit:
            if len(prompt_ids) >= server_len:
                raise TextInputError(
                    f"the prompt is {len(prompt_ids)} tokens, which leaves no room under "
                    f"the vLLM engine's max_model_len of {server_len}; use a shorter "
                    "reference or text, or start vLLM with a larger --max-model-len"
                )
            limit = server_len
        if options.max_new_tokens is not None:
            limit = min(limit, len(prompt_ids) + options.max_new_tokens)
        options = self.with_seed(options)
        greedy = options.temperature <= 0
        return VLLMRequest(
            prompt_ids=list(prompt_ids),
            max_tokens=limit - len(prompt_ids),
            temperature=0.0 if greedy else float(options.temperature),
            top_p=1.0 if greedy else float(options.top_p),
            top_k=0 if greedy or not options.top_k or options.top_k < 0 else int(options.top_k),
            seed=None if greedy else options.seed,
            eos_id=self.eos_id,
            repetition_rule=self.repetition_rule,
        )

    def stream_id_chunks(
        self,
        prompt_ids: list[int],
        options: GenerationOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[list[int]]:
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

    def stream_ids(
        self,
        prompt_ids: list[int],
        options: GenerationOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[int]:
        """Each generated LLM id as it arrives (eos last when produced); see ``stream_id_chunks``."""
        for chunk in self.stream_id_chunks(prompt_ids, options, cancel):
            yield from chunk

    def generate_ids(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[list[int], int | None]:
        """``TokenStreamLLM.generate_ids``; without ``progress`` and ``cancel`` the request is one plain
        (non-streamed) completion."""
        options = self.with_seed(options)
        if progress is not None or cancel is not None:
            return super().generate_ids(prompt_ids, options, progress, cancel)
        request = self._request(prompt_ids, options)
        return self._transport.complete(request), request.seed

    def generate_audio_tokens(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> VLLMGenerationResult:
        """``TokenStreamLLM.generate_audio_tokens``, flagged with whether the repetition rule ran."""
        result = super().generate_audio_tokens(prompt_ids, options, progress, cancel)
        return VLLMGenerationResult(**vars(result), repetition_rule=self.repetition_rule)
