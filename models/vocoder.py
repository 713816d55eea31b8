"""The vocoder stage: mixed audio tokens + reference prompt -> 24 kHz waveform (CosyVoice-300M-25Hz).

    vocoder = Vocoder.load(root / "Step-Audio-EditX" / "CosyVoice-300M-25Hz")
    prompt = vocoder.prompt_features(audio, sample_rate)        # mel + CAM++ embedding, cacheable
    wave = vocoder.decode(tokens, prompt_tokens, prompt, n_steps=10, seed=0)
    with vocoder.stream(prompt_tokens, prompt, n_steps=10, seed=0) as session:   # models/vocoder_stream.py
        pieces = [session.feed(new_tokens), ..., session.feed([], last=True)]

Frontend (here): the mixed [02,02,06,06,06] stream is reshaped to time-aligned token pairs at
25 Hz, the reference mel is aligned to twice the prompt's pair count, prompt mel and speaker
embedding are rounded to bfloat16 (upstream ``tts.py`` casts both before decoding).
Networks: ``models/flow.py`` (+ ``models/dit.py``) make the mel, ``models/hift.py`` the audio.

Randomness is per request: one ``torch.Generator`` seeded with ``seed`` first draws the flow's
noise buffer (1, 80, 30000), as upstream draws its fixed buffer, sliced to the frames needed,
then the HiFT source's draws. The same seed gives the same waveform.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audio_prep import PROMPT_PEAK, SPEAKER_SAMPLE_RATE, VOCODER_SAMPLE_RATE
from audio_resample import resample
from errors import ModelFilesError
from lru import LRU
from model_layout import COSYVOICE_CONFIG_FILE, FLOW_FILE, HIFT_FILE, SPEAKER_FILE
from models.audio_tokens import AUDIO_CODES, GROUP_SIZE, VQ02_CODES, VQ06_PER_GROUP
from models.cosyvoice_config import load_cosyvoice_config
from models.device import enable_tf32, pick_device, pick_dtype
from models.flow import MEL_BINS, CausalMaskedDiffWithXvec, StepHook
from models.hift import HiFTGenerator, SineDraws, fold_weight_norm
from models.mel import MelConfig, log_mel_spectrogram, mel_filters
from models.prompt_features import PromptFeatures
from models.speaker import SpeakerEncoder

if TYPE_CHECKING:
    from models.vocoder_stream import StreamChunk, StreamOptions, VocoderStream

log = logging.getLogger(__name__)


# Mixed stream ids: vq02 in [0, VQ02_CODES), vq06 + 1024 in [VQ02_CODES, AUDIO_CODES). In the
# vocoder's vq02 column, id VQ02_CODES pads the third slot of each group (one vq02 per 3 frames).
GROUP_FRAMES = VQ06_PER_GROUP  # a group is 3 time-aligned token frames at 25 Hz (one per vq06 code)
GROUP_PAD = (0, 0, 0, VQ02_CODES, VQ02_CODES, VQ02_CODES)  # upstream pads a partial group with its tail
NOISE_FRAMES = 50 * 600  # upstream's noise buffer: 600 s of 50 Hz mel frames
NOISE_BUFFERS_KEPT = 4  # per-seed noise buffers kept (10 MB each; drawing one costs tens of ms)


def reshape_mixed_tokens(mixed: Sequence[int]) -> np.ndarray:
    """Mixed stream -> time-aligned pairs (3 * groups, 2) int64 (upstream ``_reshape``).

    A partial last group is completed with the tail of [0, 0, 0, 1024, 1024, 1024]. Per group
    [a, b, x, y, z]: column 0 is [a, b, 1024] (vq02 + pad), column 1 is [x, y, z] - 1024 + 1025.
    """
    seq = [int(t) for t in mixed]
    if len(seq) % GROUP_SIZE:
        seq += list(GROUP_PAD[-(GROUP_SIZE - len(seq) % GROUP_SIZE) :])
    groups = np.asarray(seq, dtype=np.int64).reshape(-1, GROUP_SIZE)
    vq02 = np.concatenate([groups[:, :2], np.full((len(groups), 1), VQ02_CODES, dtype=np.int64)], axis=1)
    vq06 = groups[:, 2:] - VQ02_CODES + VQ02_CODES + 1
    return np.stack([vq02.reshape(-1), vq06.reshape(-1)], axis=1)


def align_prompt_mel(prompt_mel: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(1, frames, 80) -> (1, n_frames, 80) by nearest interpolation (float32 scale, as F.interpolate)."""
    if n_frames == 0:
        return prompt_mel.new_zeros(prompt_mel.size(0), 0, prompt_mel.size(2))
    if prompt_mel.size(1) == 0:
        raise ValueError("the prompt has tokens but its mel is empty; recompute the prompt features")
    return F.interpolate(prompt_mel.transpose(1, 2), size=n_frames, mode="nearest").transpose(1, 2)


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """Round to bfloat16 and back (what upstream's ``.to(torch.bfloat16)`` does to the prompt inputs)."""
    return x.to(torch.bfloat16).to(x.dtype)


def check_mixed_tokens(tokens: Sequence[int], what: str) -> None:
    """Raise ValueError naming the first id of ``tokens`` outside [0, AUDIO_CODES)."""
    for i, t in enumerate(tokens):
        if not 0 <= int(t) < AUDIO_CODES:
            raise ValueError(
                f"{what}[{i}] = {int(t)} is not a mixed audio token id in [0, {AUDIO_CODES}); "
                "pass LLM audio ids minus 65536"
            )


def load_state_dict_checked(module: nn.Module, path: Path) -> None:
    """Load ``path`` (a plain state dict) into ``module`` strictly; errors name every bad key.

    ``module`` may live on the meta device: tensors are assigned, not copied.
    """
    if not path.is_file():
        raise ModelFilesError(
            f"vocoder checkpoint {path.name} not found in {path.parent.name}/; download "
            "the CosyVoice-300M-25Hz folder of Step-Audio-EditX again"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated download or a non-torch file
        raise ModelFilesError(
            f"{path.name} is not a readable torch state dict ({exc}); download it again"
        ) from exc
    if not isinstance(state, dict):
        raise ModelFilesError(f"{path.name} holds a {type(state).__name__}, expected a state dict")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(
            f"missing keys {missing[:8]}" + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        )
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:8]}"
            + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else "")
        )
    if wrong:
        problems.append(
            "wrong shapes " + "; ".join(wrong[:8]) + (f" (+{len(wrong) - 8} more)" if len(wrong) > 8 else "")
        )
    if problems:
        raise ValueError(
            f"{path.name} does not match the network described by cosyvoice.yaml: " + "; ".join(problems)
        )
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)


def build_networks(
    config_text: str, device: str | torch.device = "meta"
) -> tuple[CausalMaskedDiffWithXvec, HiFTGenerator, MelConfig]:
    """Flow, HiFT and mel settings from cosyvoice.yaml text, built on ``device`` (meta: no memory)."""
    with torch.device(device):
        config = load_cosyvoice_config(config_text)
    for key in ("flow", "hift"):
        if key not in config:
            raise ModelFilesError(f"cosyvoice.yaml has no top-level {key!r}")
    flow, hift = config["flow"], config["hift"]
    if not isinstance(flow, CausalMaskedDiffWithXvec) or not isinstance(hift, HiFTGenerator):
        raise ModelFilesError(
            "cosyvoice.yaml: 'flow' must be a CausalMaskedDiffWithXvec and 'hift' a HiFTGenerator"
        )
    mel_conf = MelConfig.from_mapping(config.get("mel_conf") or {})
    return flow, hift, mel_conf


def vocoder_dtype(device: torch.device, requested: str | None = "auto") -> torch.dtype:
    """The networks' dtype: float32 for "auto" (as upstream runs the vocoder) and always on the CPU
    (a half precision asked for there is logged and ignored); fp16 / bf16 / fp32 on CUDA on request."""
    if (requested or "auto") == "auto":
        return torch.float32
    dtype = pick_dtype(device, requested)
    if device.type == "cpu" and dtype != torch.float32:
        log.warning(
            "vocoder: %s requested on CPU; using float32 (half precision is CUDA-only here)", requested
        )
        return torch.float32
    return dtype


def _file_digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"absent"


class Vocoder:
    """CosyVoice-300M-25Hz flow + HiFT, and the prompt frontend (mel + CAM++)."""

    sample_rate = VOCODER_SAMPLE_RATE

    def __init__(
        self,
        flow: CausalMaskedDiffWithXvec,
        hift: HiFTGenerator,
        mel_conf: MelConfig,
        speaker: SpeakerEncoder | None,
        device: torch.device,
        dtype: torch.dtype,
        fingerprint: str,
        directory: Path | None = None,
    ):
        self.flow = flow.eval()
        self.hift = hift.eval()
        self.mel_conf = mel_conf
        self.speaker = speaker
        self.device = device
        self.dtype = dtype
        self.fingerprint = fingerprint  # identifies what prompt_features depends on (mel settings, CAM++)
        self.directory = directory
        self._noise_cache: LRU[int, tuple[torch.Tensor, torch.Tensor]] = LRU(NOISE_BUFFERS_KEPT)

    @classmethod
    def load(cls, cosyvoice_dir: Path, device: str = "auto", dtype: str = "auto") -> Vocoder:
        """Load ``cosyvoice.yaml``, ``flow.pt``, ``hift.pt`` and ``campplus.onnx`` from ``cosyvoice_dir``.

        CPU always runs float32. On CUDA ``dtype`` picks fp32, fp16 or bf16 for the networks; "auto"
        means float32 there too, as upstream runs the vocoder (``CosyVoice(..., dtype=float32)``):
        the networks are small next to the LLM and bf16 moves the mel by ~0.1. The flow's
        integration state and the HiFT source stay float32 in every mode.
        """
        start = time.perf_counter()
        cosyvoice_dir = Path(cosyvoice_dir)
        config_path = cosyvoice_dir / COSYVOICE_CONFIG_FILE
        if not config_path.is_file():
            raise ModelFilesError(
                f"{COSYVOICE_CONFIG_FILE} not found in {cosyvoice_dir.name}/: pass the CosyVoice-300M-25Hz "
                "folder of Step-Audio-EditX (it holds cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx)"
            )
        torch_device = pick_device(device)
        torch_dtype = vocoder_dtype(torch_device, dtype)
        if torch_device.type == "cuda":  # fp32 convolutions and matmuls on tensor cores
            enable_tf32()
        config_text = config_path.read_text()
        flow, hift, mel_conf = build_networks(config_text, "meta")
        load_state_dict_checked(flow, cosyvoice_dir / FLOW_FILE)
        load_state_dict_checked(hift, cosyvoice_dir / HIFT_FILE)
        fold_weight_norm(hift)  # computed once in float32, before any cast
        flow.to(torch_device, torch_dtype)
        hift.to(torch_device, torch_dtype)
        mel_filters(mel_conf)  # librosa's import and the filter bank cost ~2 s: pay it at start-up
        speaker_path = cosyvoice_dir / SPEAKER_FILE
        speaker = SpeakerEncoder(speaker_path) if speaker_path.is_file() else None
        if speaker is None:
            log.warning("vocoder: %s not found; prompt_features will fail until it is present", speaker_path)
        digest = hashlib.sha256(config_text.encode())
        digest.update(_file_digest(speaker_path))
        vocoder = cls(
            flow, hift, mel_conf, speaker, torch_device, torch_dtype, digest.hexdigest()[:16], cosyvoice_dir
        )
        log.debug(
            "vocoder loaded from %s on %s/%s in %.2f s",
            cosyvoice_dir,
            torch_device,
            str(torch_dtype).replace("torch.", ""),
            time.perf_counter() - start,
        )
        return vocoder

    # ---- prompt frontend -------------------------------------------------------------------------
    def prompt_features(self, audio: np.ndarray, sample_rate: int) -> PromptFeatures:
        """Reference clip (after ``audio_prep.prompt_prelude``; (samples,) or (channels, samples)) at
        ``sample_rate`` Hz -> mel (frames, 80) of the 24 kHz resampled clip + (192,) CAM++ embedding
        of the 16 kHz resampled clip. The prelude is re-applied idempotently (mono, peak <= 0.6).
        """
        start = time.perf_counter()
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:
            audio = audio.mean(axis=0, dtype=np.float32) if audio.shape[0] > 1 else audio[0]
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"expected a non-empty mono clip, got shape {audio.shape}")
        peak = float(np.abs(audio).max())
        if peak > PROMPT_PEAK * (1 + 1e-6):  # tolerance: the prelude's own output may round to 0.6 + 1 ulp
            audio = (torch.from_numpy(audio) / peak * PROMPT_PEAK).numpy()
        if self.speaker is None:
            raise ModelFilesError(
                f"{SPEAKER_FILE} is missing from the vocoder folder; the speaker embedding needs it "
                "(download the full CosyVoice-300M-25Hz folder)"
            )
        audio_24k = resample(audio, int(sample_rate), self.mel_conf.sampling_rate)
        mel = log_mel_spectrogram(audio_24k, self.mel_conf)[0].T.contiguous().numpy()
        embedding = self.speaker.embed(resample(audio, int(sample_rate), SPEAKER_SAMPLE_RATE))
        log.debug(
            "vocoder prompt features: %.2f s of audio -> %d mel frames + %d-d speaker embedding in %.3f s",
            audio.size / sample_rate,
            mel.shape[0],
            embedding.size,
            time.perf_counter() - start,
        )
        return PromptFeatures(mel=mel.astype(np.float32), speaker_embedding=embedding.astype(np.float32))

    # ---- decoding ----------------------------------------------------------------------------------
    def request_randomness(self, seed: int) -> tuple[torch.Tensor, torch.Generator]:
        """Noise buffer (1, 80, 30000) and the generator state after it, for one request's ``seed``.

        The last few buffers are cached (10 MB each) since drawing one costs tens of ms.
        """
        cached = self._noise_cache.get(seed)
        if cached is None:  # two threads may both draw the same buffer once: same values, no harm
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(1, MEL_BINS, NOISE_FRAMES, generator=generator)
            cached = (noise, generator.get_state())
            self._noise_cache.put(seed, cached)
        noise, state = cached
        generator = torch.Generator()
        generator.set_state(state)
        return noise, generator

    def synthesize(
        self,
        token: torch.Tensor,
        prompt_token: torch.Tensor,
        prompt_mel: torch.Tensor,
        embedding: torch.Tensor,
        noise: torch.Tensor,
        n_steps: int = 10,
        generator: torch.Generator | None = None,
        draws: SineDraws | None = None,
        on_step: StepHook | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lower-level decode with every random input explicit (the conformance tests inject them).

        token (1, T, 2), prompt_token (1, Tp, 2) int64 pairs; prompt_mel (1, 2*Tp, 80) aligned;
        embedding (1, 192); noise (1, 80, >= 2*(Tp+T)); ``draws`` or ``generator`` for the HiFT source.
        Returns waveform (1, 960*T), mel (1, 80, 2T) and source (1, 1, 960*T), float32 on the CPU.
        """
        needed = self.flow.up_rate * (token.size(1) + prompt_token.size(1))
        if needed > noise.size(2):
            raise ValueError(
                f"{needed} mel frames requested; at most {noise.size(2)} "
                f"({noise.size(2) / 50:.0f} s including the prompt) can be decoded at once"
            )
        dev = self.device
        start = time.perf_counter()
        mel = self.flow.inference(
            token.to(dev),
            prompt_token.to(dev),
            prompt_mel.to(dev),
            embedding.to(dev),
            noise[:, :, :needed].to(dev),  # only the frames used travel to the device
            n_steps,
            on_step,
        )
        flow_s = time.perf_counter() - start
        start = time.perf_counter()
        speech, source = self.hift.inference(mel, generator=generator, draws=draws)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        hift_s = time.perf_counter() - start
        seconds = speech.size(-1) / self.sample_rate
        log.debug(
            "vocoder: %d token frames -> %.2f s of audio; flow %d steps %.3f s, hift %.3f s (RTF %.3f)",
            token.size(1),
            seconds,
            n_steps,
            flow_s,
            hift_s,
            (flow_s + hift_s) / max(seconds, 1e-9),
        )
        return speech.float().cpu(), mel.float().cpu(), source.float().cpu()

    def decode(
        self,
        tokens: list[int],
        prompt_tokens: list[int],
        prompt: PromptFeatures,
        n_steps: int = 10,
        seed: int | None = 0,
    ) -> np.ndarray:
        """Mixed audio tokens in [0, 5120) (whole [02,02,06,06,06] groups; a partial group is padded as
        upstream does) -> (samples,) float32 at 24 kHz: each group of 5 tokens is 3 frames at 25 Hz, so
        ``2880 * ceil(len(tokens) / 5)`` samples. ``prompt_tokens`` are the reference's mixed tokens.
        The same ``seed`` gives the same waveform; None draws a fresh random seed.
        """
        if len(tokens) == 0:
            raise ValueError("no audio tokens to decode (the LLM produced no audio)")
        check_mixed_tokens(tokens, "tokens")
        if seed is None:
            seed = secrets.randbits(63)
        token = torch.from_numpy(reshape_mixed_tokens(tokens))[None]
        prompt_token, aligned, embedding = self.prompt_inputs(prompt_tokens, prompt)
        noise, generator = self.request_randomness(int(seed))
        speech, _, _ = self.synthesize(
            token, prompt_token, aligned, embedding, noise, n_steps, generator=generator
        )
        return speech[0].numpy()

    def prompt_inputs(
        self, prompt_tokens: Sequence[int], prompt: PromptFeatures
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The flow's prompt inputs: token pairs (1, Tp, 2) int64, mel (1, 2*Tp, 80) aligned to them and
        embedding (1, 192), both rounded to bfloat16 as upstream ``tts.py`` hands them over (CPU tensors)."""
        check_mixed_tokens(prompt_tokens, "prompt_tokens")
        prompt_token = torch.from_numpy(reshape_mixed_tokens(prompt_tokens)).reshape(1, -1, 2)
        mel = torch.as_tensor(np.asarray(prompt.mel, dtype=np.float32)).reshape(1, -1, MEL_BINS)
        embedding = torch.as_tensor(np.asarray(prompt.speaker_embedding, dtype=np.float32)).reshape(1, -1)
        aligned = align_prompt_mel(bf16_round(mel), self.flow.up_rate * prompt_token.size(1))
        return prompt_token, aligned, bf16_round(embedding)

    def stream(
        self,
        prompt_tokens: Sequence[int],
        prompt: PromptFeatures,
        n_steps: int = 10,
        seed: int | None = 0,
        options: StreamOptions | None = None,
        *,
        noise: torch.Tensor | None = None,
        sine_draws: Callable[[int, int], SineDraws] | None = None,
        on_chunk: Callable[[StreamChunk], None] | None = None,
    ) -> VocoderStream:
        """A streaming session for one request: feed it mixed tokens as they come, get audio pieces.

        See ``models/vocoder_stream.VocoderStream`` (protocol, options, the test hooks ``noise``,
        ``sine_draws`` and ``on_chunk``); ``options`` None means ``DEFAULT_STREAM_OPTIONS``.
        """
        from models.vocoder_stream import VocoderStream

        return VocoderStream(
            self,
            prompt_tokens,
            prompt,
            n_steps,
            seed,
            options,
            noise=noise,
            sine_draws=sine_draws,
            on_chunk=on_chunk,
        )
