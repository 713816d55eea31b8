"""Streaming vocoder: mixed tokens as the LLM emits them -> 24 kHz audio pieces, one session per request.

    with vocoder.stream(prompt_tokens, prompt, n_steps=10, seed=0) as session:
        for new_tokens in llm_output:                   # any count per call, zero included
            piece = session.feed(new_tokens)            # None until a chunk is ready
            ...
        rest = session.feed([], last=True)              # always an array: everything still held

Protocol (upstream ``CosyVoice.token2wav_stream``; docs/STREAMING.md has the details and the
differences). The session buffers the tokens it is fed. Once it holds one lookahead group
(``PRE_LOOKAHEAD_FRAMES`` token frames = 5 mixed tokens) it encodes the prompt plus that group
and runs the flow over the prompt to fill its caches (setup; that call returns None). Then each
call synthesises at most one chunk of ``CHUNK_FRAMES`` token frames (15, 24, then 48: 25 / 40 /
80 mixed tokens) once the chunk and its lookahead are buffered. Each chunk's mel goes to HiFT
with the last ``MEL_CACHE_FRAMES`` mel frames of the previous one in front; the first
``SOURCE_CACHE_SAMPLES`` source samples are the previous chunk's last ones, the first as many
audio samples are cross-faded with the tail held back from the previous piece, and the new tail
is held back. A call with ``last=True`` synthesises everything still buffered as the final chunk.

Differences from upstream, on purpose (the conformance tests pin everything else):
- a ``last=True`` call always flushes: it sets the session up if needed and returns all buffered
  audio (upstream returns None and keeps the tokens when the session was not set up yet, e.g.
  fewer than 5 tokens in all, or every token in one call); zero tokens give an empty array;
- the session is an object whose state is freed on the last call, on ``close()`` and on an error;
- the HiFT source draws come from a per-session generator (upstream: the process-global RNG);
- caches are sized by the request (upstream: 1000-frame buffers, so prompts over ~16 s fail);
- ``StreamOptions``: three fixes that change the sound, all on by default (chosen from the
  measurements in docs/STREAMING.md), all off in ``REFERENCE_OPTIONS``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.audio_tokens import GROUP_SIZE as GROUP
from models.dit import BlockCache
from models.flow import MEL_BINS, EncoderCache
from models.hift import SineDraws
from models.prompt_features import PromptFeatures
from models.vocoder import GROUP_FRAMES, check_mixed_tokens, reshape_mixed_tokens

if TYPE_CHECKING:
    from models.vocoder import Vocoder

log = logging.getLogger(__name__)

# Protocol sizes (upstream's values; the conformance tests check them against the fixture).
CHUNK_FRAMES = (15, 24, 48)  # token frames (25 Hz) of the 1st, 2nd, 3rd-and-later chunk: 0.6 / 0.96 / 1.92 s
PRE_LOOKAHEAD_FRAMES = 3  # token frames the flow encoder looks ahead: one group of 5 mixed tokens
MEL_CACHE_FRAMES = 8  # mel frames (50 Hz) of the previous chunk that HiFT reads again
SOURCE_CACHE_SAMPLES = 3840  # = MEL_CACHE_FRAMES x 480: source carried over, audio held back and faded
ESTIMATOR_LEFT_CONTEXT = 96  # mel frames (~2 s) the estimator cache keeps besides the prompt
SPEECH_WINDOW = np.hamming(2 * SOURCE_CACHE_SAMPLES).astype(np.float32)  # symmetric; halves fade in / out


def mixed_token_count(frames: int) -> int:
    """Token frames -> mixed tokens: 3 frames per group of 5 (15 -> 25, 3 -> 5)."""
    return frames // GROUP_FRAMES * GROUP


LOOKAHEAD_TOKENS = mixed_token_count(PRE_LOOKAHEAD_FRAMES)


def estimator_cache_keep(
    frames: torch.Tensor, prompt_frames: int, recent_context: bool
) -> torch.Tensor | None:
    """Which estimator cache entries survive the cut, or None while the cache is short enough.

    frames (n,) int64: the mel position of each entry in cache order, [newest chunk, the chunk
    before, ..., prompt] (each in time order). Beyond prompt + ``ESTIMATOR_LEFT_CONTEXT`` entries,
    upstream keeps the first ``ESTIMATOR_LEFT_CONTEXT`` entries (the newest chunk, then the *oldest*
    frames of the chunk before it) and the prompt; ``recent_context`` keeps the most recent frames.
    Returns indices (kept, prompt frames last) in cache order. With ``CHUNK_FRAMES`` the newest chunk
    is exactly 96 mel frames whenever the cache is cut, so both rules keep the same entries.
    """
    length = int(frames.numel())
    if length <= prompt_frames + ESTIMATOR_LEFT_CONTEXT:
        return None
    history = length - prompt_frames
    if recent_context:
        recent = torch.topk(frames[:history], ESTIMATOR_LEFT_CONTEXT).indices.sort().values
    else:
        recent = torch.arange(ESTIMATOR_LEFT_CONTEXT)
    return torch.cat([recent, torch.arange(history, length)])


@dataclass(frozen=True)
class StreamOptions:
    """Fixes of upstream streaming defects that change the sound (docs/STREAMING.md has the numbers).

    recent_context: when the estimator cache is cut to prompt + ``ESTIMATOR_LEFT_CONTEXT`` frames,
        keep the most recent frames (upstream keeps the newest chunk and then the *first* frames of
        the chunk before it).
    advancing_noise: each chunk reads the flow noise at its own mel position, as the non-stream path
        does (upstream reads at the estimator cache length, which stops advancing after the first
        cut: the same noise frames come back chunk after chunk).
    unity_crossfade: scale the two Hamming halves so the fade-in and fade-out sum to 1 (upstream's
        sum to ~1.08: +8 % gain over each join).

    Defaults, from ``benchmark.py vocoder_stream`` at real size (docs/STREAMING.md): advancing_noise
    brings the flow mel after the first cut from 1.23 to 0.019 (mean abs vs non-stream),
    unity_crossfade the joins' log-mel level from +0.074 to +0.001; recent_context changes nothing
    with ``CHUNK_FRAMES`` (both rules keep the same frames) and is kept on as the right rule.
    """

    recent_context: bool = True
    advancing_noise: bool = True
    unity_crossfade: bool = True


REFERENCE_OPTIONS = StreamOptions(recent_context=False, advancing_noise=False, unity_crossfade=False)
DEFAULT_STREAM_OPTIONS = StreamOptions()

# (HiFT call index within the session, source samples) -> the draws of that call (tests inject these).
SineDrawSource = Callable[[int, int], SineDraws]


@dataclass
class StreamChunk:
    """What one flow pass of a session computed, for ``on_chunk`` observers (tests, benchmarks).

    call: index of the ``feed`` call that ran it; setup: the prompt pass (no audio); last: the final chunk.
    tokens (1, T, 2): token pairs given to the encoder (lookahead included unless last).
    mu (1, M, 80): encoder output; noise_offset: first noise frame read; mel (1, 80, M) float32: flow output.
    estimator_frames: estimator cache length after the pass, before the cut.
    kept_frames (n,): absolute mel positions (prompt = 0..P-1) the estimator cache holds after the cut.
    cache_shapes: ``VocoderStream.cache_shapes()`` after the pass.
    hift_mel (1, 80, F), hift_source (1, 1, 480 F), hift_speech (1, 480 F) before the cross-fade, and
    audio (the returned piece): None for the setup pass.
    """

    call: int
    setup: bool
    last: bool
    tokens: torch.Tensor
    mu: torch.Tensor
    noise_offset: int
    mel: torch.Tensor
    estimator_frames: int
    kept_frames: torch.Tensor
    cache_shapes: dict[str, tuple[int, ...]]
    hift_mel: torch.Tensor | None = None
    hift_source: torch.Tensor | None = None
    hift_speech: torch.Tensor | None = None
    audio: np.ndarray | None = None


class CrossFade:
    """Joins waveform pieces: holds back the last ``SOURCE_CACHE_SAMPLES`` of each piece and fades
    them out over the start of the next piece, which covers the same mel frames (fading in).

    unity=False is upstream's: the two halves of ``SPEECH_WINDOW`` as they are (sum ~1.08).
    """

    def __init__(self, unity: bool = False):
        half = SOURCE_CACHE_SAMPLES
        if unity:
            window = SPEECH_WINDOW.astype(np.float64)
            total = window[:half] + window[half:]
            fade_in, fade_out = window[:half] / total, window[half:] / total
        else:
            fade_in, fade_out = SPEECH_WINDOW[:half], SPEECH_WINDOW[half:]
        self.fade_in = torch.from_numpy(np.ascontiguousarray(fade_in, dtype=np.float32))
        self.fade_out = torch.from_numpy(np.ascontiguousarray(fade_out, dtype=np.float32))
        self.tail: torch.Tensor | None = None

    def join(self, speech: torch.Tensor, last: bool) -> torch.Tensor:
        """speech (1, L) float32 -> the part to return now: (1, L - hold-back), or (1, L) when ``last``."""
        half = SOURCE_CACHE_SAMPLES
        if self.tail is not None:
            fade_in, fade_out = self.fade_in.to(speech.device), self.fade_out.to(speech.device)
            head = speech[:, :half] * fade_in + self.tail * fade_out
            speech = torch.cat([head, speech[:, half:]], dim=1)
        self.tail = speech[:, max(0, speech.size(1) - half) :]
        return speech if last else speech[:, : max(0, speech.size(1) - half)]


class VocoderStream:
    """One request's streaming session over a loaded ``Vocoder`` (create it with ``Vocoder.stream``).

    ``feed(tokens, last)`` returns None or a (samples,) float32 piece at 24 kHz; the pieces in call
    order are the request's waveform, ``2880 * ceil(n_tokens / 5)`` samples in all, as non-stream.
    Not thread-safe: one session per request and thread; sessions are independent of each other.

    Test hooks: ``noise`` (1, 80, frames) replaces the seeded flow noise buffer; ``sine_draws``
    gives each HiFT call's source draws; ``on_chunk`` receives a ``StreamChunk`` per flow pass.
    """

    def __init__(
        self,
        vocoder: Vocoder,
        prompt_tokens: Sequence[int],
        prompt: PromptFeatures,
        n_steps: int = 10,
        seed: int | None = 0,
        options: StreamOptions | None = None,
        *,
        noise: torch.Tensor | None = None,
        sine_draws: SineDrawSource | None = None,
        on_chunk: Callable[[StreamChunk], None] | None = None,
    ):
        flow, hift = vocoder.flow, vocoder.hift
        if flow.pre_lookahead_len != PRE_LOOKAHEAD_FRAMES:
            raise ValueError(
                f"the flow looks {flow.pre_lookahead_len} token frames ahead; the streaming protocol "
                f"is defined for {PRE_LOOKAHEAD_FRAMES} (one group of {GROUP} tokens)"
            )
        if hift.upsample_scale * MEL_CACHE_FRAMES != SOURCE_CACHE_SAMPLES:
            raise ValueError(
                f"HiFT makes {hift.upsample_scale} samples per mel frame; the streaming caches assume "
                f"{SOURCE_CACHE_SAMPLES // MEL_CACHE_FRAMES}"
            )
        if len(prompt_tokens) == 0:
            raise ValueError("streaming needs the reference's prompt tokens (none were given)")
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        self.options = options if options is not None else DEFAULT_STREAM_OPTIONS
        self.n_steps = int(n_steps)
        self._vocoder = vocoder
        self._device = vocoder.device
        self._dtype = flow.encoder_proj.weight.dtype
        if seed is None:
            seed = secrets.randbits(63)
        if noise is None:
            noise, self._generator = vocoder.request_randomness(int(seed))
        else:
            self._generator = torch.Generator().manual_seed(int(seed))
        self._noise = noise
        self._sine_draws = sine_draws
        self._on_chunk = on_chunk
        prompt_token, prompt_mel, embedding = vocoder.prompt_inputs(prompt_tokens, prompt)
        self._prompt_token = prompt_token
        self._prompt_mel = prompt_mel.to(self._device, self._dtype)
        with torch.inference_mode():
            self._spks = flow.speaker_projection(embedding.to(self._device, self._dtype))
        self.prompt_frames = prompt_mel.size(1)  # P: prompt mel frames (50 Hz)

        self._buffer: list[int] = []
        self._chunk_index = 0  # index into CHUNK_FRAMES of the next chunk
        self._calls = 0
        self._hift_calls = 0
        self._set_up = False
        self._closed = False
        self._encoder_cache: EncoderCache | None = None
        self._estimator_cache: list[list[BlockCache]] | None = None
        self._kept_frames = torch.zeros(0, dtype=torch.long)  # mel position of each estimator cache entry
        self._next_frame = 0  # mel position of the next frame to synthesise (prompt frames first)
        self._hift_mel = torch.zeros(1, MEL_BINS, 0, device=self._device)
        self._hift_source = torch.zeros(1, 1, 0, device=self._device)
        self._fade = CrossFade(self.options.unity_crossfade)
        self._samples = 0
        self._chunks = 0
        self._compute_s = 0.0

    # ---- public ----------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        """Mixed tokens held and not yet turned into audio (lookahead included)."""
        return len(self._buffer)

    def feed(self, tokens: Sequence[int], last: bool = False) -> np.ndarray | None:
        """Add mixed tokens in [0, 5120) (any count, zero allowed); return the audio now ready.

        Returns None while no chunk is ready, else a (samples,) float32 piece at 24 kHz. With
        ``last=True`` it returns everything still held (an empty array if the request had no
        tokens) and closes the session. Any error closes the session too.
        """
        if self._closed:
            raise RuntimeError(
                "this vocoder stream is closed (its last chunk was fed, close() was called or a call "
                "failed); start another with Vocoder.stream"
            )
        call = self._calls
        self._calls += 1
        start = time.perf_counter()
        try:
            tokens = [int(t) for t in tokens]
            check_mixed_tokens(tokens, "tokens")
            self._buffer.extend(tokens)
            with torch.inference_mode():
                piece = self._advance(call, last)
        except BaseException:
            self.close()
            raise
        self._compute_s += time.perf_counter() - start
        if piece is not None:
            self._samples += piece.size
        if last:
            self.close()
        return piece

    def close(self) -> None:
        """Free every cache and buffer of the session (idempotent); later ``feed`` calls raise."""
        if self._closed:
            return
        self._closed = True
        self._buffer = []
        self._encoder_cache = None
        self._estimator_cache = None
        self._kept_frames = torch.zeros(0, dtype=torch.long)
        self._hift_mel = self._hift_source = torch.zeros(0)
        self._fade.tail = None
        self._noise = None
        self._generator = None
        self._sine_draws = None
        self._on_chunk = None
        log.info(
            "vocoder stream closed: %d calls, %d chunks, %.2f s of audio, %.3f s of compute",
            self._calls,
            self._chunks,
            self._samples / self._vocoder.sample_rate,
            self._compute_s,
        )

    def __enter__(self) -> VocoderStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def cache_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the state the session carries between calls (frames along the time axes).

        encoder_lookahead (1, C, 2), encoder_upsample (1, C, 4), encoder_token_att (blocks, 1, H, S, 2 d_k),
        encoder_mel_att (up blocks, 1, H, 2S, 2 d_k); estimator_conv (steps, depth, 2, 2 width, 2),
        estimator_att (steps, depth, 2, heads, frames, 2 head_dim); hift_mel (1, 80, <= 8),
        hift_source (1, 1, <= 3840), speech_tail (1, <= 3840).
        """
        shapes: dict[str, tuple[int, ...]] = {}
        if self._encoder_cache is not None:
            cache = self._encoder_cache
            for name in ("lookahead", "upsample", "token_att", "mel_att"):
                shapes[f"encoder_{name}"] = tuple(getattr(cache, name).shape)
        if self._estimator_cache is not None:
            steps, depth = len(self._estimator_cache), len(self._estimator_cache[0])
            conv, att = self._estimator_cache[0][0]
            shapes["estimator_conv"] = (steps, depth, *conv.shape)
            shapes["estimator_att"] = (steps, depth, *att.shape)
        shapes["hift_mel"] = tuple(self._hift_mel.shape)
        shapes["hift_source"] = tuple(self._hift_source.shape)
        shapes["speech_tail"] = (1, 0) if self._fade.tail is None else tuple(self._fade.tail.shape)
        return shapes

    # ---- protocol --------------------------------------------------------------------------------
    def _advance(self, call: int, last: bool) -> np.ndarray | None:
        if not self._set_up:
            if len(self._buffer) >= LOOKAHEAD_TOKENS or (last and self._buffer):
                self._setup(call, self._buffer[:LOOKAHEAD_TOKENS])
            if not last:
                return None  # the setup call returns nothing, as upstream
        if last:
            if not self._buffer:
                return np.zeros(0, dtype=np.float32)
            return self._synthesize(call, self._buffer, last=True)
        size = mixed_token_count(CHUNK_FRAMES[self._chunk_index])
        if len(self._buffer) < size + LOOKAHEAD_TOKENS:
            return None
        piece = self._synthesize(call, self._buffer[: size + LOOKAHEAD_TOKENS], last=False)
        self._buffer = self._buffer[size:]
        self._chunk_index = min(self._chunk_index + 1, len(CHUNK_FRAMES) - 1)
        return piece

    def _setup(self, call: int, lookahead: list[int]) -> None:
        """Encode prompt + lookahead group and run the flow over the prompt to fill the caches.

        ``lookahead`` is a short group (padded as ``reshape_mixed_tokens`` does) only when a last
        call flushes a request of fewer than 5 tokens.
        """
        flow = self._vocoder.flow
        tokens = torch.cat([self._prompt_token, self._pairs(lookahead)], dim=1).to(self._device)
        mu, self._encoder_cache = flow.encode_chunk(tokens, last=False)
        noise = self._noise_frames(0, self.prompt_frames)
        mel, self._estimator_cache = flow.decoder.forward_chunk(
            noise,
            mu.transpose(1, 2).contiguous(),
            self._spks,
            self._prompt_mel.transpose(1, 2).contiguous(),
            self.n_steps,
        )
        self._kept_frames = torch.arange(self.prompt_frames)
        self._next_frame = self.prompt_frames
        self._set_up = True
        if self._on_chunk is not None:
            self._on_chunk(
                StreamChunk(
                    call,
                    True,
                    False,
                    tokens.cpu(),
                    mu.float().cpu(),
                    0,
                    mel.cpu(),
                    self.prompt_frames,
                    self._kept_frames.clone(),
                    self.cache_shapes(),
                )
            )

    def _synthesize(self, call: int, mixed: list[int], last: bool) -> np.ndarray:
        """One chunk: encoder -> flow (-> estimator cache cut) -> HiFT -> cross-fade; the piece to return."""
        flow = self._vocoder.flow
        tokens = self._pairs(mixed).to(self._device)
        mu, self._encoder_cache = flow.encode_chunk(tokens, last, self._encoder_cache)
        n_frames = mu.size(1)
        offset = self._next_frame if self.options.advancing_noise else int(self._kept_frames.numel())
        mu = mu.transpose(1, 2).contiguous()
        mel, cache = flow.decoder.forward_chunk(
            self._noise_frames(offset, n_frames),
            mu,
            self._spks,
            torch.zeros_like(mu),
            self.n_steps,
            self._estimator_cache,
        )
        frames = torch.cat([torch.arange(self._next_frame, self._next_frame + n_frames), self._kept_frames])
        self._next_frame += n_frames
        keep = estimator_cache_keep(frames, self.prompt_frames, self.options.recent_context)
        if keep is not None:  # cut every (Euler step, block) attention cache along time
            index = keep.to(self._device)
            cache = [[(conv, att.index_select(2, index)) for conv, att in step] for step in cache]
        self._estimator_cache, self._kept_frames = cache, frames if keep is None else frames[keep]
        mel_in, source, speech = self._vocode(mel)
        piece = self._fade.join(speech, last)
        audio = piece[0].float().cpu().numpy()
        self._chunks += 1
        log.debug("vocoder stream call %d: %d token frames -> %d samples", call, tokens.size(1), audio.size)
        if self._on_chunk is not None:
            self._on_chunk(
                StreamChunk(
                    call,
                    False,
                    last,
                    tokens.cpu(),
                    mu.transpose(1, 2).float().cpu(),
                    offset,
                    mel.cpu(),
                    int(frames.numel()),
                    self._kept_frames.clone(),
                    self.cache_shapes(),
                    mel_in.cpu(),
                    source.cpu(),
                    speech.cpu(),
                    audio,
                )
            )
        return audio

    def _vocode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """HiFT over [cached mel frames ; chunk mel] with the cached source in front.

        Returns mel_in (1, 80, F), source (1, 1, 480 F) and speech (1, 480 F) before the cross-fade.
        """
        hift = self._vocoder.hift
        mel_in = torch.cat([self._hift_mel, mel.to(self._hift_mel)], dim=2)
        samples = mel_in.size(2) * hift.upsample_scale
        if self._sine_draws is not None:
            draws = self._sine_draws(self._hift_calls, samples)
        else:
            draws = SineDraws.draw(1, samples, hift.m_source.dim, self._generator)
        self._hift_calls += 1
        speech, source = hift.inference(mel_in, draws=draws, source_prefix=self._hift_source)
        self._hift_mel = mel_in[:, :, max(0, mel_in.size(2) - MEL_CACHE_FRAMES) :]
        self._hift_source = source[:, :, max(0, source.size(2) - SOURCE_CACHE_SAMPLES) :]
        return mel_in, source, speech

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _pairs(mixed: list[int]) -> torch.Tensor:
        return torch.from_numpy(reshape_mixed_tokens(mixed))[None]

    def _noise_frames(self, offset: int, n_frames: int) -> torch.Tensor:
        """Noise frames offset .. offset + n_frames (1, 80, n_frames) on the device; positions past the
        buffer (600 s with the seeded one) wrap around."""
        total = self._noise.size(2)
        if offset + n_frames <= total:
            frames = self._noise[:, :, offset : offset + n_frames]
        else:
            frames = self._noise[:, :, torch.arange(offset, offset + n_frames) % total]
        return frames.to(self._device)
