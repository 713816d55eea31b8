"""What every LLM backend shares: sampling options, the token stream, and parsing it into audio groups.

    class MyBackend(TokenStreamLLM):
        def stream_ids(self, prompt_ids, options, cancel=None): ...   # yields each new token id

    result = backend.clone(prompt_text, prompt_token_str, target_text, GenerationOptions(seed=0))
    for token_id in backend.stream_ids(prompt_ids, options, cancel):   # the streaming form

A backend only has to turn prompt ids into a stream of new ids (eos included when produced).
Prompts are built here from the checkpoint's own tokenizer (models/prompts.py) and travel as ids;
the output is parsed into whole [02, 02, 06, 06, 06] groups the same way for every backend.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from errors import EmptyGenerationError
from models.audio_tokens import AUDIO_CODES, AUDIO_ID_OFFSET, realign_groups
from models.prompts import StepTextTokenizer, build_clone_prompt, build_edit_prompt

log = logging.getLogger(__name__)

# transformers' default top_k, which upstream's generate() call inherits (it sets no top_k).
DEFAULT_TOP_K = 50
# Upstream's repetition-aware rule: if the last token fills more than THRESHOLD of the last WINDOW
# tokens, it is forbidden next (the native processor and the vLLM plugin both read these).
REPETITION_WINDOW = 10
REPETITION_THRESHOLD = 0.1


@dataclass
class GenerationOptions:
    """Sampling settings (upstream: do_sample, temperature 0.7, max_length 8192 incl. the prompt).

    ``temperature`` <= 0 means greedy decoding. ``top_k`` 50 is transformers' default, which the
    upstream call inherits; 0 disables it.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    max_length: int = 8192
    top_k: int = DEFAULT_TOP_K
    max_new_tokens: int | None = None  # stop after this many new tokens (None: only max_length)


@dataclass
class GenerationResult:
    audio_tokens: list[int]  # mixed stream in [0, 5120): whole [02,02,06,06,06] groups (LLM id - 65536)
    prompt_tokens: int
    new_tokens: int  # tokens sampled, eos included
    seconds: float
    tokens_per_s: float
    dropped_tokens: int  # new tokens (eos excluded) that are not in audio_tokens
    seed: int | None = None  # the seed actually used (None for greedy)


def audio_code(token_id: int) -> int | None:
    """The mixed-stream code of an LLM id (``id - 65536``), or None for a text or other added id."""
    code = int(token_id) - AUDIO_ID_OFFSET
    return code if 0 <= code < AUDIO_CODES else None


def parse_generated_ids(new_ids: list[int], eos_id: int) -> tuple[list[int], int]:
    """Generated LLM ids -> (whole-group audio codes in [0, 5120), dropped count).

    Stops at the first eos, subtracts 65536, keeps only audio codes (text ids and the other added
    tokens above 5120 are dropped) and realigns to whole 2+3 groups.
    """
    if eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id)]
    codes = [c for c in map(audio_code, new_ids) if c is not None]
    tokens, dropped = realign_groups(codes)
    return tokens, dropped + len(new_ids) - len(codes)


class TokenStreamLLM:
    """Base of the LLM backends: ``clone``/``edit``/``generate_audio_tokens`` on top of ``stream_ids``.

    Subclasses set ``tokenizer``, ``eos_id``, ``variant``, ``backend`` and ``applies_repetition_rule``
    and implement ``stream_ids``.
    """

    tokenizer: StepTextTokenizer
    eos_id: int
    variant: str
    backend: str = "native"
    applies_repetition_rule: bool = True  # upstream's repetition-aware logits rule is applied

    def stream_ids(
        self, prompt_ids: list[int], options: GenerationOptions, cancel: threading.Event | None = None
    ) -> Iterator[int]:
        """Yield each new token id after ``prompt_ids`` (eos last, when produced); stops at the
        length limits. Setting ``cancel`` raises GenerationCancelled at the next token."""
        raise NotImplementedError

    @staticmethod
    def with_seed(options: GenerationOptions) -> GenerationOptions:
        """``options`` with a fresh random seed when sampling without one (greedy needs none)."""
        if options.temperature > 0 and options.seed is None:
            return replace(options, seed=random.randrange(2**31))
        return options

    def clone_prompt(
        self, prompt_text: str, prompt_token_str: str, target_text: str, speaker: str | None = None
    ) -> list[int]:
        """Prompt ids to speak ``target_text`` in the voice of the reference (transcript + tokens)."""
        return build_clone_prompt(self.tokenizer, prompt_text, prompt_token_str, target_text, speaker)

    def edit_prompt(
        self,
        audio_text: str,
        audio_token_str: str,
        task: str,
        subtask: str | None,
        new_text: str | None = None,
    ) -> list[int]:
        """Prompt ids for an edit ("paralinguistic" needs ``new_text``, the text with tags inserted)."""
        return build_edit_prompt(self.tokenizer, audio_text, audio_token_str, task, subtask, new_text)

    def clone(
        self,
        prompt_text: str,
        prompt_token_str: str,
        target_text: str,
        options: GenerationOptions | None = None,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
        speaker: str | None = None,
    ) -> GenerationResult:
        """Speak ``target_text`` in the voice of the reference (its transcript and ``<audio_N>`` tokens)."""
        ids = self.clone_prompt(prompt_text, prompt_token_str, target_text, speaker)
        return self.generate_audio_tokens(ids, options or GenerationOptions(), progress, cancel)

    def edit(
        self,
        audio_text: str,
        audio_token_str: str,
        task: str,
        subtask: str | None,
        options: GenerationOptions | None = None,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
        new_text: str | None = None,
    ) -> GenerationResult:
        """Edit audio given as tokens: ``task`` in EDIT_TASKS, ``subtask`` one of its options."""
        ids = self.edit_prompt(audio_text, audio_token_str, task, subtask, new_text)
        return self.generate_audio_tokens(ids, options or GenerationOptions(), progress, cancel)

    def generate_ids(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[list[int], int | None]:
        """All new ids (eos included when produced) and the seed used; ``progress(n)`` after each."""
        options = self.with_seed(options)
        new: list[int] = []
        for token in self.stream_ids(prompt_ids, options, cancel):
            new.append(token)
            if progress is not None:
                progress(len(new))
        return new, options.seed if options.temperature > 0 else None

    def generate_audio_tokens(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Generate and parse: whole audio-token groups, or EmptyGenerationError."""
        start = time.perf_counter()
        new, seed = self.generate_ids(prompt_ids, options, progress, cancel)
        seconds = time.perf_counter() - start
        tokens, dropped = parse_generated_ids(new, self.eos_id)
        rate = len(new) / seconds if seconds > 0 else 0.0
        log.debug(
            "LLM %s: prompt %d tokens, %d new tokens in %.2f s (%.1f tokens/s), %d audio tokens "
            "kept, %d dropped, seed %s",
            self.backend,
            len(prompt_ids),
            len(new),
            seconds,
            rate,
            len(tokens),
            dropped,
            seed,
        )
        if not tokens:
            ended = "at eos" if new and new[-1] == self.eos_id else "at the length limit"
            raise EmptyGenerationError(
                f"the LLM produced no complete audio-token group ({len(new)} tokens, stopped {ended}); "
                "try another seed or a clearer reference clip"
            )
        return GenerationResult(
            audio_tokens=tokens,
            prompt_tokens=len(prompt_ids),
            new_tokens=len(new),
            seconds=seconds,
            tokens_per_s=rate,
            dropped_tokens=dropped,
            seed=seed,
        )
