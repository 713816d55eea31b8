"""In-process mode of the vLLM backend: vLLM's ``AsyncLLM`` in this process, on a loop thread of its own.

    transport = EngineTransport(model_dir, VLLMEngineOptions(dtype="float32"))
    ids = transport.complete(request)
    for chunk in transport.stream(request):  # closing the generator aborts the request
        ...
    transport.close()                        # shuts the engine and its loop down

``AsyncLLM`` is the engine ``vllm serve`` uses; it batches the requests that arrive from many
threads. vllm is imported only when a transport is made, so this module also imports in the app's
venv, which has no vllm; it then says how to get it (the vLLM venv, or a server).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.vllm_options import REPETITION_XARGS, VLLMBackendError, VLLMEngineOptions, VLLMRequest

log = logging.getLogger(__name__)


class EngineTransport:
    """vLLM's AsyncLLM in this process, driven from a private asyncio loop thread."""

    def __init__(self, model_dir: Path, options: VLLMEngineOptions) -> None:
        try:
            import vllm  # noqa: F401  (only this mode needs vllm)
        except ImportError as exc:
            raise VLLMBackendError(
                "in-process vLLM needs the vllm package, which this Python lacks; run "
                "it with the vLLM venv's python (scripts/setup_vllm_venv.sh), or start a "
                "server with scripts/vllm_server.py and use VLLMStep1LLM.connect"
            ) from exc
        if options.repetition_rule:
            try:
                import editx_vllm_step1  # noqa: F401
            except ImportError as exc:
                raise VLLMBackendError(
                    "the repetition-aware rule needs the editx_vllm_step1 plugin in this "
                    "venv: pip install patches/vllm_step1 (scripts/setup_vllm_venv.sh "
                    "does), or pass VLLMEngineOptions(repetition_rule=False)"
                ) from exc
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

    def _params(self, request: VLLMRequest, delta: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            seed=request.seed,
            stop_token_ids=[request.eos_id],
            detokenize=False,
            extra_args=dict(REPETITION_XARGS) if request.repetition_rule else None,
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
        )

    def _error(self, exc: BaseException) -> VLLMBackendError:
        return VLLMBackendError(f"the {self.description} failed the request ({type(exc).__name__}: {exc})")

    def complete(self, request: VLLMRequest) -> list[int]:
        params = self._params(request, delta=False)

        async def run() -> list[int]:
            ids: list[int] = []
            async for out in self._engine.generate(
                {"prompt_token_ids": request.prompt_ids}, params, uuid.uuid4().hex
            ):
                ids = list(out.outputs[0].token_ids)
            return ids

        try:
            return self._call(run())
        except Exception as exc:
            raise self._error(exc) from exc

    def stream(self, request: VLLMRequest) -> Iterator[list[int]]:
        """Generated ids as the engine produces them; closing the generator aborts the request."""
        params = self._params(request, delta=True)
        chunks: queue.Queue = queue.Queue()

        async def pump() -> None:
            try:
                async for out in self._engine.generate(
                    {"prompt_token_ids": request.prompt_ids}, params, uuid.uuid4().hex
                ):
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
