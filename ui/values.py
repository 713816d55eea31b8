"""Plain conversions between the page's values and the engine's: options, audio, errors, status line.

    options = synthesis_options(variant, seed, temperature, top_p, flow_steps, max_new, stream, best_of)
    raise public_error("clone", exc)      # a gr.Error with the engine's public message

The run handlers (ui/adapter.py) and the small panels (ui/voices.py, ui/reference_check.py,
ui/cache_panel.py, ui/outcomes.py) all speak through these, so a UI number is parsed and an engine
error worded in one place.
"""

from __future__ import annotations

import html
import logging
import math
import time

import gradio as gr
import numpy as np

from errors import (
    AccessError,
    EditXError,
    EmptyGenerationError,
    InputError,
    NotFoundError,
    OptionsError,
    public_message,
)
from synthesis import SynthesisOptions

log = logging.getLogger(__name__)

RANDOM_SEED = -1  # the page's "random seed" value (the API uses null)
PCM16_MAX = 32767


def synthesis_options(
    variant: str | None,
    seed: float | None,
    temperature: float,
    top_p: float,
    flow_steps: float,
    max_new_tokens: float | None = None,
    stream: bool = False,
    best_of: float | None = 1,
) -> SynthesisOptions:
    """UI numbers (floats, maybe blank) -> validated ``SynthesisOptions``; a blank seed or -1 = random,
    a blank or 0 max-new-tokens = no cap, a blank best-of = 1 take."""
    if seed is not None and (isinstance(seed, str) or not math.isfinite(float(seed))):
        raise OptionsError(f"the seed must be a whole number, got {seed!r}")
    if seed is not None and float(seed) != int(float(seed)):
        raise OptionsError(f"the seed must be a whole number, got {seed}")
    if seed is not None and seed < RANDOM_SEED:
        raise OptionsError(f"the seed must be -1 (random) or a whole number from 0, got {int(seed)}")
    random_seed = seed is None or seed == RANDOM_SEED
    cap = None
    if max_new_tokens not in (None, "", 0):
        if not math.isfinite(float(max_new_tokens)) or float(max_new_tokens) != int(float(max_new_tokens)):
            raise OptionsError(f"max new tokens must be a whole number, got {max_new_tokens}")
        cap = int(float(max_new_tokens))
    return SynthesisOptions(
        variant=variant or None,
        seed=None if random_seed else int(seed),
        temperature=float(temperature),
        top_p=float(top_p),
        flow_steps=int(round(float(flow_steps))),
        max_new_tokens=cap,
        stream=stream,
        best_of=int(round(float(best_of or 1))),
    ).validated()


def to_pcm16(audio: np.ndarray, sample_rate: int) -> tuple[int, np.ndarray]:
    """Float audio in [-1, 1] -> Gradio's (rate, int16 samples)."""
    pcm = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * PCM16_MAX
    return sample_rate, np.round(pcm).astype(np.int16)


def status_html(text: str, state: str = "idle") -> str:
    """The line under the Clone / Edit button (the page's one progress and outcome indicator)."""
    return (
        f'<div class="run-status" data-state="{state}" data-at="{time.time():.3f}">{html.escape(text)}</div>'
    )


def public_error(what: str, exc: BaseException) -> gr.Error:
    """An engine exception as the message a person sees (details stay in the log)."""
    if isinstance(exc, InputError):
        log.warning("%s refused: %s", what, exc)
        return gr.Error(public_message(exc), title="Please check the input", print_exception=False)
    if isinstance(exc, EmptyGenerationError):
        log.warning("%s produced no audio: %s", what, exc)
        return gr.Error(public_message(exc), title="No audio was generated", print_exception=False)
    if isinstance(exc, AccessError | NotFoundError | EditXError):
        log.warning("%s refused: %s", what, exc)
        return gr.Error(public_message(exc), title="Not done", print_exception=False)
    log.error("%s failed", what, exc_info=exc)
    return gr.Error(
        "Something went wrong inside the app; the server log has the details. Try again, or "
        "try another clip.",
        title="Internal error",
        print_exception=False,
    )
