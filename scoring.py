"""Output checks: how much an output sounds like its reference and how well it says its text.

    scorer = OutputScorer(tokenizer.vq02, vocoder.speaker)
    score = scorer.score(audio, 24000, "Hello there.", voice.features.speaker_embedding)
    score.similarity, score.error_rate, score.metric, score.transcript, score.seconds

    error_rate("今天是3月1日。", "今天是三月一日")      # ErrorRate(rate=0.0, metric="cer", ...)
    error_rate("Dr. Smith paid $3.", "doctor smith paid three dollars")   # WER, after normalisation

Speaker similarity is the cosine of two 192-d CAM++ embeddings, each computed exactly as the
vocoder computes its prompt embedding (``audio_prep.prompt_prelude``, resampled to 16 kHz, Kaldi
fbank, CAM++), so a reference's cached ``PromptFeatures.speaker_embedding`` is reused as is.
Intelligibility is the streaming Paraformer's transcript of the output (the same model and 16 kHz
preparation as auto-transcription) against the text it should say: CER for Chinese, WER for
English, after the same normalisation on both sides (tags dropped, NFKC for full/half width, case,
punctuation, numbers spelled out). The Paraformer knows Mandarin, Cantonese and English only:
Japanese and Korean are "not scored". Error rates come from ``jiwer``.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from audio_prep import SPEAKER_SAMPLE_RATE, prepare_for_tokenizer, prompt_prelude
from audio_resample import resample

log = logging.getLogger(__name__)

LANGUAGES = ("zh", "en", "ja", "ko")
METRICS = {"zh": "cer", "en": "wer"}  # the error rate of each language the Paraformer transcribes
NOT_SCORED = {
    "ja": "the Paraformer does not transcribe Japanese: not scored",
    "ko": "the Paraformer does not transcribe Korean: not scored",
}
# A leading tag that names the language of the whole text (the model's dialect/language tags).
LANGUAGE_TAGS = {"[sichuanese]": "zh", "[cantonese]": "zh", "[japanese]": "ja", "[korean]": "ko"}
MIN_SCORED_SAMPLES_16K = 400  # one 25 ms fbank frame: shorter output has no speaker embedding

TAG_RE = re.compile(r"\[[^\[\]\n]{1,40}\]")  # [Laughter], [clears throat], [Sichuanese] (as text_split)
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_KANA_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL_RE = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_HAN_RE = re.compile(f"[{_HAN}]")
_TOKEN_RE = re.compile(f"[{_HAN}]|[^\\s{_HAN}]+")  # one Han character, or a run of anything else
_NUMBER_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(?![\w])")
# between a letter and a digit (mp3 -> mp 3, 4k -> 4 k), but not before an ordinal's suffix (21st)
_LETTER_DIGIT_RE = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])(?!(?:st|nd|rd|th)\b)")
_APOSTROPHES_RE = re.compile(r"(?<=\w)['’](?=\w)")  # don't -> dont on both sides
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 1,000 -> 1000
_DIGIT_TO_HAN = str.maketrans("0123456789", "零一二三四五六七八九")


# ---- text --------------------------------------------------------------------------------------


def detect_language(text: str) -> str:
    """ "zh", "en", "ja" or "ko" from the text's script: kana -> ja, Hangul -> ko, Han -> zh, else en.

    A leading language tag ([Cantonese], [Sichuanese], [Japanese], [Korean]) decides first.
    """
    stripped = (text or "").lstrip()
    match = TAG_RE.match(stripped)
    if match and match.group(0).lower() in LANGUAGE_TAGS:
        return LANGUAGE_TAGS[match.group(0).lower()]
    plain = unicodedata.normalize("NFKC", TAG_RE.sub(" ", text or ""))
    if _KANA_RE.search(plain):
        return "ja"
    if _HANGUL_RE.search(plain):
        return "ko"
    if _HAN_RE.search(plain):
        return "zh"
    return "en"


def _english_number(match: re.Match) -> str:
    from num2words import num2words  # here: only English text with digits needs it

    whole, fraction, ordinal = match.group(1).replace(",", ""), match.group(2), match.group(3)
    if ordinal and not fraction:
        return f" {num2words(int(whole), to='ordinal')} "
    words = num2words(int(whole))
    if fraction:  # "3.14" -> "three point one four", as it is read
        words += " point " + " ".join(num2words(int(d)) for d in fraction)
    return f" {words} "


def _chinese_numbers(text: str) -> str:
    """Arabic numerals read the Chinese way (3.14 -> 三点一四, 50% -> 百分之五十, 2024年 -> 二零二四年)."""
    if not re.search(r"\d", text):
        return text
    import cn2an  # here: only Chinese text with digits needs it

    try:
        return cn2an.transform(text, "an2cn")
    except (ValueError, KeyError, IndexError) as exc:  # an odd number form: read digit by digit
        log.debug("cn2an could not convert %r (%s); digits read one by one", text[:40], exc)
        return text.translate(_DIGIT_TO_HAN)


def normalize_text(text: str, language: str) -> list[str]:
    """The tokens an error rate compares: tags dropped, NFKC (full/half width), lower case, numbers
    in words, punctuation and symbols removed. Chinese gives one token per Han character (a Latin
    word or number inside it stays one token); other languages give words."""
    text = unicodedata.normalize("NFKC", TAG_RE.sub(" ", text or "")).lower()
    if language == "zh":
        text = _chinese_numbers(_THOUSANDS_RE.sub("", text))
    else:
        text = _LETTER_DIGIT_RE.sub(" ", text.replace("%", " percent ").replace("&", " and "))
        text = _NUMBER_RE.sub(_english_number, text)
    text = _APOSTROPHES_RE.sub("", text)
    text = "".join(" " if unicodedata.category(ch)[0] in "PSC" else ch for ch in text)
    return _TOKEN_RE.findall(text)


@dataclass(frozen=True)
class ErrorRate:
    """How far a transcript is from the text it should say.

    ``rate`` is (substitutions + deletions + insertions) / reference tokens (can exceed 1), or None
    with ``reason`` when the text cannot be scored; ``metric`` is "cer" or "wer" (None then).
    """

    rate: float | None
    metric: str | None
    language: str
    reference_tokens: int
    reason: str = ""


def error_rate(reference: str, hypothesis: str, language: str | None = None) -> ErrorRate:
    """CER (Chinese) or WER (English) of ``hypothesis`` against ``reference`` after ``normalize_text``.

    ``language`` defaults to ``detect_language(reference)``; Japanese and Korean are not scored.
    """
    import jiwer  # here: importing it costs ~0.1 s and most modules only need the types

    language = language or detect_language(reference)
    if language in NOT_SCORED:
        return ErrorRate(None, None, language, 0, NOT_SCORED[language])
    ref = normalize_text(reference, language)
    if not ref:
        return ErrorRate(None, None, language, 0, "the text has no words to check (only tags or punctuation)")
    hyp = normalize_text(hypothesis, language)
    rate = 1.0 if not hyp else float(jiwer.wer(" ".join(ref), " ".join(hyp)))
    return ErrorRate(rate, METRICS[language], language, len(ref))


def speaker_similarity(embedding_a: np.ndarray, embedding_b: np.ndarray) -> float | None:
    """Cosine similarity in [-1, 1] of two speaker embeddings (computed in float64); None when
    either is all zeros or not finite."""
    a = np.asarray(embedding_a, dtype=np.float64).reshape(-1)
    b = np.asarray(embedding_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"speaker embeddings differ in size: {a.shape} vs {b.shape}")
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return float(np.clip(np.dot(a, b) / norm, -1.0, 1.0))


# ---- audio -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """The checks of one output (or one take of one chunk).

    similarity: cosine to the reference's CAM++ embedding, or None (no reference, too short).
    error_rate / metric: see ``ErrorRate``; transcript: what the Paraformer heard.
    reason: why a check is missing; seconds: wall time of the checks.
    """

    similarity: float | None
    error_rate: float | None
    metric: str | None
    transcript: str
    language: str
    reference_tokens: int = 0
    reason: str = ""
    seconds: float = 0.0


class Scorer(Protocol):
    """What the chunk loop calls to check a take (``OutputScorer``, or a test's forced scores)."""

    def score(
        self, audio: np.ndarray, sample_rate: int, text: str, reference_embedding: np.ndarray | None
    ) -> Score: ...


class _Transcriber(Protocol):
    def encode(self, audio_16k: np.ndarray, transcribe: bool = False): ...


class _SpeakerModel(Protocol):
    def embed(self, audio_16k: np.ndarray) -> np.ndarray: ...


class OutputScorer:
    """Scores audio with the models already loaded: the tokenizer's Paraformer (``vq02``) and the
    vocoder's CAM++ (``speaker``). Thread-safe: both keep no state between calls."""

    def __init__(self, transcriber: _Transcriber, speaker: _SpeakerModel):
        self.transcriber, self.speaker = transcriber, speaker

    def speaker_embedding(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """(192,) float32 CAM++ embedding of (samples,) or (channels, samples) audio at
        ``sample_rate`` Hz, computed as ``Vocoder.prompt_features`` computes the prompt's."""
        mono = prompt_prelude(audio, sample_rate)
        return self.speaker.embed(resample(mono, int(sample_rate), SPEAKER_SAMPLE_RATE))

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
        """The Paraformer transcript of audio at any rate (the 16 kHz preparation of the tokenizer)."""
        clip = prepare_for_tokenizer(prompt_prelude(audio, sample_rate), int(sample_rate))
        return (self.transcriber.encode(clip, transcribe=True).transcript or "").strip()

    def score(
        self, audio: np.ndarray, sample_rate: int, text: str, reference_embedding: np.ndarray | None
    ) -> Score:
        """Similarity to ``reference_embedding`` and error rate against ``text`` of (samples,) audio
        at ``sample_rate`` Hz. A check that cannot run is None with its reason, never an error."""
        start = time.perf_counter()
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        language = detect_language(text)
        reasons: list[str] = []
        similarity = None
        audible = audio.size * SPEAKER_SAMPLE_RATE >= MIN_SCORED_SAMPLES_16K * sample_rate and bool(
            np.any(audio)
        )
        if not audible:
            reasons.append("the output is too short or silent to score")
        elif reference_embedding is None:
            reasons.append("no reference embedding to compare with")
        else:
            similarity = speaker_similarity(self.speaker_embedding(audio, sample_rate), reference_embedding)
        transcript = self.transcribe(audio, sample_rate) if audible and language not in NOT_SCORED else ""
        rate = error_rate(text, transcript, language)  # silence says none of the words: rate 1
        if rate.reason:
            reasons.append(rate.reason)
        seconds = time.perf_counter() - start
        return Score(
            similarity,
            rate.rate,
            rate.metric,
            transcript,
            language,
            rate.reference_tokens,
            "; ".join(reasons),
            seconds,
        )
