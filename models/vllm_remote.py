"""Remote mode of the vLLM backend: vLLM's OpenAI-compatible server over HTTP, prompts as token ids.

    transport = HTTPTransport("http://127.0.0.1:8000", model=None, timeout_s=READ_TIMEOUT_S)
    ids = transport.complete(request)        # one plain completion: every generated id
    for chunk in transport.stream(request):  # server-sent events, each chunk's generated ids
        ...

``scripts/vllm_server.py`` starts a server with the right flags. Requests go to ``POST
/v1/completions`` with the prompt as a token-id list, ``return_token_ids`` for the generated ids,
``top_k`` and ``seed`` as vLLM's extra sampling fields and ``stream`` for streaming. On connecting,
the transport reads the served model and its ``max_model_len`` from ``/v1/models`` and probes
whether the server runs the repetition-aware logits processor (``repetition_rule``). A server that
cannot be reached, or stops answering mid-request, is a ``VLLMServerUnavailable``. The server
batches concurrent requests; the client keeps a pool of connections for them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx

from models.prompts import BOS_ID
from models.vllm_options import REPETITION_PROCESSOR, REPETITION_XARGS, VLLMBackendError, VLLMRequest

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0  # a whole non-streamed generation, or the gap between two streamed chunks


class VLLMServerUnavailable(VLLMBackendError):
    """The vLLM server cannot be reached, or stopped answering in the middle of a request."""


class HTTPTransport:
    """vLLM's OpenAI-compatible server: /v1/models, /v1/completions (plain and streamed)."""

    def __init__(self, url: str, model: str | None, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.description = f"vLLM server at {self.url}"
        timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        self._client = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
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
                "`python scripts/vllm_server.py --model-dir DIR` or point --llm-url at a running one"
            )
        return VLLMServerUnavailable(
            f"the vLLM server at {self.url} stopped answering {during} ({type(exc).__name__}: {exc}); "
            "check that it is still running (its log says why it stopped) and try again"
        )

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            message = response.json().get("error", {}).get("message") or response.text
        except (ValueError, AttributeError):
            message = response.text
        raise VLLMBackendError(
            f"the vLLM server at {self.url} refused the request "
            f"(HTTP {response.status_code}): {message.strip()[:500]}"
        )

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
            raise VLLMBackendError(
                f"the vLLM server at {self.url} serves no model {wanted or ''}".rstrip()
                + "; check its --served-model-name"
            )
        return cards[0]

    def _probe_repetition_rule(self) -> bool:
        """Whether the server runs the plugin's processor: it rejects an invalid window with HTTP 400."""
        body = {
            "model": self.model,
            "prompt": [BOS_ID],
            "max_tokens": 1,
            "temperature": 0.0,
            "vllm_xargs": {"repetition_window": 0},
        }
        try:
            response = self._client.post("/v1/completions", json=body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc, "while being probed") from exc
        if response.status_code == 400 and "repetition_window" in response.text:
            return True
        self._raise_for_status(response)
        log.warning(
            "the vLLM server at %s does not run the repetition-aware logits processor (start it with "
            "--logits-processors %s, as scripts/vllm_server.py does); results are flagged "
            "repetition_rule=False",
            self.url,
            REPETITION_PROCESSOR,
        )
        return False

    def _body(self, request: VLLMRequest, stream: bool) -> dict:
        body = {
            "model": self.model,
            "prompt": request.prompt_ids,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "seed": request.seed,
            "stop_token_ids": [request.eos_id],
            "return_token_ids": True,
            "stream": stream,
        }
        if request.repetition_rule:
            body["vllm_xargs"] = dict(REPETITION_XARGS)
        return body

    def complete(self, request: VLLMRequest) -> list[int]:
        """All generated ids of one request (eos included when produced)."""
        try:
            response = self._client.post("/v1/completions", json=self._body(request, stream=False))
        except httpx.TransportError as exc:
            raise self._unreachable(exc, "in the middle of a request") from exc
        self._raise_for_status(response)
        return list(response.json()["choices"][0]["token_ids"])

    def stream(self, request: VLLMRequest) -> Iterator[list[int]]:
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
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise VLLMBackendError(
                            f"the vLLM server at {self.url} failed the request: "
                            f"{chunk['error'].get('message', chunk['error'])}"
                        )
                    choice = chunk["choices"][0]
                    if choice.get("token_ids"):
                        yield list(choice["token_ids"])
                    if choice.get("finish_reason") is not None:
                        finished = True
        except httpx.TransportError as exc:
            raise self._unreachable(exc, "in the middle of a streamed request") from exc
        if not finished:
            raise VLLMServerUnavailable(
                f"the vLLM server at {self.url} closed the stream before the "
                "generation finished; check that it is still running"
            )

    def close(self) -> None:
        self._client.close()
