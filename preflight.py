"""Reference preflight: what a reference clip is like before Clone, and plain warnings about it.

    check = preflight(audio, sample_rate, text="what the clip says", transcript=paraformer_text)
    check.duration_s, check.loudness_lufs, check.clipped_share, check.snr_db, check.text_error_rate
    [w.message for w in check.warnings]      # "clipped: 3.0% of the samples are at full scale; ..."
    check.to_dict()                          # JSON for the API and the page

Measurements: duration and speech span (the tokenizer's silence trim), integrated loudness
(ITU-R BS.1770-4 LUFS with ``pyloudnorm``), peak, the share of clipped samples, a rough SNR
estimate (quiet versus loud 20 ms frames at 16 kHz), and, when a text was typed, its error rate
against the Paraformer transcript (``scoring.error_rate``). Each problem becomes a warning a person
can act on; those an edit can fix name it (``suggestion`` "denoise" or "vad"), so the page can offer
a button that runs that edit on the reference. The thresholds are the constants below.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from audio_prep import TOKENIZER_SAMPLE_RATE, speech_seconds
from audio_resample import resample
from scoring import NOT_SCORED, detect_language, error_rate

log = logging.getLogger(__name__)

MIN_REFERENCE_SECONDS = 3.0  # shorter references give a weaker voice likeness
CLIP_LEVEL = 0.99  # |sample| at or above this (of full scale 1.0) counts as clipped
MAX_CLIPPED_SHARE = 0.001  # more than 0.1% clipped samples is audible distortion
MIN_SNR_DB = 15.0  # below this the noise is cloned with the voice
MIN_LOUDNESS_LUFS = -40.0  # quieter recordings are mostly noise floor
MAX_TEXT_ERROR_RATE = 0.3  # a typed text further than this from the transcript is not what is said
MAX_SILENCE_SHARE = 0.4  # more silence than this (and at least MIN_SILENCE_SECONDS) is worth trimming
MIN_SILENCE_SECONDS = 1.0
SNR_FRAME_SAMPLES = 320  # 20 ms at 16 kHz
SNR_NOISE_QUANTILE = 0.1  # the quietest 10% of frames stand for the noise ...
SNR_SPEECH_QUANTILE = 0.5  # ... and the loudest half for speech plus noise
MAX_SNR_DB = 100.0  # digital silence between words has no measurable noise: reported as this
LOUDNESS_BLOCK_S = 0.4  # BS.1770 gating block: shorter clips have no integrated loudness


@dataclass(frozen=True)
class PreflightWarning:
    """One problem with the reference: a stable ``code``, a sentence for a person, and the edit
    ("denoise" or "vad") that may fix it, or None."""

    code: str
    message: str
    suggestion: str | None = None


@dataclass
class Preflight:
    """Measurements of a reference clip and the warnings they raise (see the module docstring)."""

    duration_s: float
    speech_s: float | None
    sample_rate: int
    channels: int
    loudness_lufs: float | None
    peak_dbfs: float | None
    clipped_share: float
    snr_db: float | None
    text: str = ""
    transcript: str | None = None
    text_error_rate: float | None = None
    text_metric: str | None = None
    text_note: str = ""
    usable: bool = True  # False: the clone refuses this clip (the warning "unusable" says why)
    seconds: float = 0.0  # time the checks took (the transcript included)
    warnings: list[PreflightWarning] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-safe form (floats rounded for display)."""
        out = asdict(self)
        for name in ("duration_s", "speech_s", "loudness_lufs", "peak_dbfs", "snr_db", "seconds"):
            out[name] = None if out[name] is None else round(float(out[name]), 3)
        for name in ("clipped_share", "text_error_rate"):
            out[name] = None if out[name] is None else round(float(out[name]), 5)
        return out


def clipped_share(audio: np.ndarray) -> float:
    """Share of samples (every channel) whose magnitude is at least ``CLIP_LEVEL``."""
    a = np.asarray(audio, dtype=np.float32)
    return float(np.count_nonzero(np.abs(a) >= CLIP_LEVEL)) / a.size if a.size else 0.0


def loudness_lufs(mono: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770-4, LUFS) of (samples,) audio; None when shorter than one
    400 ms block or gated away entirely (silence)."""
    if mono.size < LOUDNESS_BLOCK_S * sample_rate:
        return None
    import pyloudnorm  # here: only the preflight measures loudness

    value = float(pyloudnorm.Meter(int(sample_rate)).integrated_loudness(mono.astype(np.float64)))
    return value if math.isfinite(value) else None


def snr_estimate_db(mono_16k: np.ndarray) -> float | None:
    """Rough SNR (dB) of speech with pauses: the mean power of the loudest half of the 20 ms frames
    (less the noise) over the mean power of the quietest 10%. None for less than 10 frames."""
    frames = mono_16k.size // SNR_FRAME_SAMPLES
    if frames < 10:
        return None
    power = np.sort(
        np.mean(
            np.square(mono_16k[: frames * SNR_FRAME_SAMPLES].astype(np.float64)).reshape(
                frames, SNR_FRAME_SAMPLES
            ),
            axis=1,
        )
    )
    noise = float(np.mean(power[: max(1, int(frames * SNR_NOISE_QUANTILE))]))
    speech = float(np.mean(power[int(frames * (1 - SNR_SPEECH_QUANTILE)) :])) - noise
    if speech <= 0:
        return 0.0
    if noise <= 0:
        return MAX_SNR_DB
    return float(min(MAX_SNR_DB, 10 * math.log10(speech / noise)))


def preflight(
    audio: np.ndarray,
    sample_rate: int,
    text: str = "",
    transcript: str | None = None,
    unusable: str | None = None,
) -> Preflight:
    """Measure a reference ((samples,) or (channels, samples) float32 at ``sample_rate`` Hz) and
    turn its problems into warnings. ``transcript`` is the Paraformer's (compared with ``text`` when
    both are given); ``unusable`` is why the clone would refuse the clip (a blocking warning)."""
    a = np.asarray(audio, dtype=np.float32)
    channels = 1 if a.ndim == 1 else int(a.shape[0])
    mono = a if a.ndim == 1 else a.mean(axis=0, dtype=np.float32)
    duration = mono.size / float(sample_rate)
    peak = float(np.abs(a).max()) if a.size else 0.0
    check = Preflight(
        duration_s=duration,
        speech_s=speech_seconds(a, sample_rate) if unusable is None else None,
        sample_rate=int(sample_rate),
        channels=channels,
        loudness_lufs=loudness_lufs(mono, sample_rate),
        peak_dbfs=20 * math.log10(peak) if peak > 0 else None,
        clipped_share=clipped_share(a),
        snr_db=snr_estimate_db(resample(mono, int(sample_rate), TOKENIZER_SAMPLE_RATE)),
        text=text or "",
        transcript=transcript,
        usable=unusable is None,
    )
    warn = check.warnings.append
    if unusable is not None:
        warn(PreflightWarning("unusable", unusable))
    if duration < MIN_REFERENCE_SECONDS:
        warn(
            PreflightWarning(
                "short",
                f"{duration:.1f} s: use at least {MIN_REFERENCE_SECONDS:.0f} s "
                "(3-10 s of clear speech works best)",
            )
        )
    if check.clipped_share > MAX_CLIPPED_SHARE:
        warn(
            PreflightWarning(
                "clipped",
                f"clipped {check.clipped_share:.1%} of samples: the recording "
                "was too loud and is distorted; record again a little quieter",
            )
        )
    if check.snr_db is not None and check.snr_db < MIN_SNR_DB:
        warn(
            PreflightWarning(
                "noisy",
                f"noisy recording (SNR about {check.snr_db:.0f} dB): the noise is "
                "cloned with the voice; denoise it or record somewhere quieter",
                "denoise",
            )
        )
    if check.loudness_lufs is not None and check.loudness_lufs < MIN_LOUDNESS_LUFS:
        warn(
            PreflightWarning(
                "quiet",
                f"very quiet ({check.loudness_lufs:.0f} LUFS): move closer to the "
                "microphone or raise its level",
            )
        )
    silence = duration - check.speech_s if check.speech_s is not None else 0.0
    if silence >= MIN_SILENCE_SECONDS and silence > MAX_SILENCE_SHARE * duration:
        warn(
            PreflightWarning(
                "silence",
                f"{silence:.1f} s of the {duration:.1f} s clip is silence; trim "
                "it (vad) so the voice prompt is all speech",
                "vad",
            )
        )
    if check.text and transcript is not None:
        language = detect_language(check.text)
        rate = error_rate(check.text, transcript, language)
        check.text_error_rate, check.text_metric = rate.rate, rate.metric
        check.text_note = rate.reason if language not in NOT_SCORED else NOT_SCORED[language]
        if rate.rate is not None and rate.rate > MAX_TEXT_ERROR_RATE:
            warn(
                PreflightWarning(
                    "text_mismatch",
                    f"the text you typed does not match what is said "
                    f"({rate.metric.upper()} {min(rate.rate, 9.99):.0%}); "
                    "the clone will follow the audio, fix the text or "
                    "leave it empty",
                )
            )
    return check
