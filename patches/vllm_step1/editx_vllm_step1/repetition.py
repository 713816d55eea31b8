"""Step-Audio-EditX's repetition-aware rule as a vLLM logits processor (V1 model-runner interface).

The rule (upstream ``RepetitionAwareLogitsProcessor``, models/llm.py in the app): once the sequence,
prompt included, holds at least ``window`` tokens, a last token that fills more than ``threshold``
of the last ``window`` tokens is forbidden (logit -inf) as the next token. Defaults 10 and 0.1: a
token seen twice in the last 10 may not come a third time in a row of that window.

A request opts in through its sampling params' ``extra_args`` (``vllm_xargs`` over HTTP)::

    {"repetition_window": 10, "repetition_threshold": 0.1}

Load it with ``vllm serve ... --logits-processors editx_vllm_step1.repetition:RepetitionAwareLogitsProcessor``
(or ``logits_processors=[...]`` in the engine arguments). It implements the interface of vLLM's V1
model runner, which vLLM uses on CPU; on a GPU start vLLM with ``VLLM_USE_V2_MODEL_RUNNER=0`` (the
V2 runner loads only processors written for its own interface and refuses this one at start-up).
Requests without the keys are left alone.

When to drop: never on its own; it is the model's sampling rule, not a workaround.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

WINDOW_KEY = "repetition_window"
THRESHOLD_KEY = "repetition_threshold"
DEFAULT_THRESHOLD = 0.1


@dataclass
class _RequestState:
    prompt_tail: list[int]  # the last `window` prompt ids
    output: list[int]  # vLLM's live list of the request's generated ids
    window: int
    threshold: float


def _settings(params: SamplingParams) -> tuple[int, float] | None:
    extra = params.extra_args or {}
    if WINDOW_KEY not in extra:
        return None
    return extra[WINDOW_KEY], extra.get(THRESHOLD_KEY, DEFAULT_THRESHOLD)


class RepetitionAwareLogitsProcessor(LogitsProcessor):
    """Batch-level processor: masks the repeated last token of each opted-in request's row."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.requests: dict[int, _RequestState] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject a bad window or threshold at admission (the HTTP server answers 400)."""
        settings = _settings(sampling_params)
        if settings is None:
            return
        window, threshold = settings
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"{WINDOW_KEY} must be an integer >= 1, got {window!r}")
        if not isinstance(threshold, int | float) or not 0 <= threshold < 1:
            raise ValueError(f"{THRESHOLD_KEY} must be a number in [0, 1), got {threshold!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes greedy choices too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_state(
            params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]
        ) -> _RequestState | None:
            settings = _settings(params)
            if settings is None:
                return None
            window, threshold = settings
            return _RequestState(list(prompt_ids or [])[-window:], output_ids, window, float(threshold))

        process_dict_updates(self.requests, batch_update, new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (batch, vocab): set -inf at the repeated last token of each opted-in row."""
        rows: list[int] = []
        cols: list[int] = []
        for row, state in self.requests.items():
            out = state.output
            tail = out[-state.window :]
            need = state.window - len(tail)
            if need > 0:
                tail = state.prompt_tail[-need:] + tail
            if len(tail) < state.window:
                continue
            last = tail[-1]
            if tail.count(last) / state.window > state.threshold:
                rows.append(row)
                cols.append(last)
        if rows:
            logits[rows, cols] = float("-inf")
        return logits
