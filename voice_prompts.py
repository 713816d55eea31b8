"""Where a request's voice prompt comes from: a clip, a previous version, or the voice library.

    prompts = VoicePrompts(tokenizer, vocoder, cache, library, config)
    voice = prompts.from_clip(audio, sr, text, transcribe, report)   # tokenizer + prompt cache
    voices = prompts.from_version(result, report)                     # a version's own tokens
    voice = prompts.from_library("calm-narrator", report)             # stored tokens + features
    info = prompts.create_voice("Calm narrator", audio, sr)           # keep a clip as a named voice
    check = prompts.preflight(audio, sr, "what the clip says")        # measurements + warnings
    stats = prompts.cache_stats()                                     # prompt-cache counters

A voice prompt is everything the LLM and the vocoder need about a clip: its ``<audio_N>`` tokens,
its mixed-stream codes, its text and the vocoder's features (reference mel + speaker embedding).
Features are cached in the clip's prompt-cache entry under the vocoder's fingerprint; library
voices keep theirs in the library and are re-encoded once when the model files change.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from audio_formats import reference_flac
from audio_prep import check_samples, prompt_prelude, validate_reference
from audio_read import read_audio, to_float
from errors import AudioInputError, NotFoundError, OptionsError, TextInputError
from models.audio_tokens import interleave, token_str
from models.prompt_features import PromptFeatures, audio_digest, decode_features, encode_features
from models.text_input import clean_text
from models.vocoder import Vocoder
from preflight import Preflight, preflight
from prompt_cache import PromptCache
from reports import StageReport
from synthesis import EngineConfig, Segment, SynthesisResult, VoicePrompt
from tokenizer import StepAudioTokenizer, TokenizedAudio
from voices import Voice, VoiceInfo, VoiceLibrary

log = logging.getLogger(__name__)

VOCODER_FIELD_PREFIX = "vocoder:"  # prompt-cache field holding the vocoder prompt features
# shared counters (in the store, so replicas add up and Clear resets them)
VOCODER_HITS, VOCODER_MISSES, VOCODER_SAVED = (
    "vocoder_prompt_hits",
    "vocoder_prompt_misses",
    "vocoder_prompt_time_saved_s",
)


class VoicePrompts:
    """Voice prompts from clips, versions and the library, and the library's management."""

    def __init__(
        self,
        tokenizer: StepAudioTokenizer,
        vocoder: Vocoder,
        cache: PromptCache | None,
        library: VoiceLibrary | None,
        config: EngineConfig,
    ):
        self.tokenizer, self.vocoder, self.cache = tokenizer, vocoder, cache
        self.library, self.config = library, config

    # ---- input checks shared by every path -----------------------------------------------------

    def needs_transcription(self, text: str, what: str) -> bool:
        if text:
            return False
        if not self.config.auto_transcribe:
            raise TextInputError(
                f"the {what} text is empty and auto-transcription is off "
                "(--no-auto-transcribe); type what the clip says"
            )
        return True

    def validated_audio(self, audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
        audio = to_float(np.asarray(audio))
        if sample_rate is None or int(sample_rate) <= 0:
            raise AudioInputError(f"the sample rate must be a positive number of Hz, got {sample_rate}")
        validate_reference(audio, int(sample_rate), self.config.max_reference_seconds)
        return audio, int(sample_rate)

    def from_clip(
        self, audio: np.ndarray, sr: int, text: str, transcribe: bool, report: StageReport
    ) -> VoicePrompt:
        """Tokens (prompt cache), transcript when asked, and vocoder features (same cache entry)."""
        t0 = time.perf_counter()
        tokens: TokenizedAudio = self.tokenizer.encode(audio, sr, transcribe=transcribe)
        report.tokenizer_s = time.perf_counter() - t0
        report.cache_hit = bool(tokens.from_cache)
        report.tokens_from = "cache hit" if tokens.from_cache else "encoded"
        report.encode_s_saved = float(tokens.encode_seconds) if tokens.from_cache else 0.0
        log.info(
            "tokenizer: %s in %.3f s (%d vq02 + %d vq06 codes, key %s)",
            "cache hit" if tokens.from_cache else "encoded",
            report.tokenizer_s,
            len(tokens.vq02),
            len(tokens.vq06),
            tokens.cache_key[:12],
        )
        if transcribe:
            text = (tokens.transcript or "").strip()
            report.transcribed = True
            log.info("transcription (with the encode): %r", text[:80])
        features = self._prompt_features(audio, sr, tokens, report)
        return VoicePrompt(
            tokens.token_str, tokens.mixed, features, text, tokens.cache_key, tokens.vq02, tokens.vq06
        )

    def from_version(self, version: SynthesisResult, report: StageReport) -> list[VoicePrompt]:
        """A previous output as prompts, one per segment: the tokens each segment was rendered from
        and the vocoder features of that segment's own samples.

        The vocoder made each segment from exactly its tokens (whole 2+3 groups), so they stand for
        the audio without re-encoding; the features are computed once and kept on the version.
        """
        report.tokens_from, report.cache_hit = "kept", True
        if version.voices:
            report.vocoder_prompt_cached = True
            log.info("edit tokens: kept from the previous version, features reused (0.000 s)")
            return version.voices
        segments = version.segments or [
            Segment(version.text, list(version.audio_tokens), 0, len(version.audio))
        ]
        t0 = time.perf_counter()
        voices = []
        for segment in segments:
            clip = version.audio[segment.start : segment.end]
            features = self.vocoder.prompt_features(
                prompt_prelude(clip, version.sample_rate), version.sample_rate
            )
            tokens = list(segment.tokens)
            voices.append(VoicePrompt(token_str(tokens), tokens, features, segment.text, cache_key=""))
        report.vocoder_prompt_s = time.perf_counter() - t0
        version.voices = voices
        log.info(
            "edit tokens: kept %d tokens in %d segment(s) of the previous version; vocoder prompts "
            "computed in %.3f s",
            sum(len(v.mixed_tokens) for v in voices),
            len(voices),
            report.vocoder_prompt_s,
        )
        return voices

    def preflight(self, audio: np.ndarray, sample_rate: int, text: str = "") -> Preflight:
        """Check a reference before Clone: duration, loudness, clipping, SNR and (when ``text`` is
        given) how far it is from the Paraformer transcript, with plain warnings. The transcript comes
        from the tokenizer's encode, so the clone that follows is a prompt-cache hit. Raises
        AudioInputError only when nothing can be measured (empty, damaged, silent, too long)."""
        start = time.perf_counter()
        text = clean_text(text, "reference text", self.config.max_text_chars, [], allow_empty=True)
        audio = to_float(np.asarray(audio))
        if sample_rate is None or int(sample_rate) <= 0:
            raise AudioInputError(f"the sample rate must be a positive number of Hz, got {sample_rate}")
        check_samples(audio, int(sample_rate), self.config.max_reference_seconds)
        unusable, transcript = None, None
        try:
            validate_reference(audio, int(sample_rate), self.config.max_reference_seconds)
        except AudioInputError as exc:
            unusable = str(exc)
        if unusable is None:
            tokens = self.tokenizer.encode(audio, int(sample_rate), transcribe=True)
            transcript = (tokens.transcript or "").strip()
        check = preflight(audio, int(sample_rate), text, transcript, unusable)
        check.seconds = time.perf_counter() - start
        log.info(
            "preflight: %.2f s clip in %.3f s; %s",
            check.duration_s,
            check.seconds,
            "; ".join(w.code for w in check.warnings) or "no warnings",
        )
        return check

    # ---- the prompt cache ----------------------------------------------------------------------

    def cache_stats(self) -> dict:
        """Prompt-cache statistics plus the vocoder-feature hits kept in the same entries."""
        stats = (
            dict(self.cache.stats())
            if self.cache is not None
            else {
                "hits": 0,
                "misses": 0,
                "hit_rate": 0.0,
                "entries": 0,
                "bytes": 0,
                "time_saved_s": 0.0,
                "directory": None,
                "persistent": False,
            }
        )
        for name in (VOCODER_HITS, VOCODER_MISSES, VOCODER_SAVED):  # shared counters, 0 until counted
            stats.setdefault(name, 0)
        return stats

    def clear_cache(self) -> dict:
        """Empty the prompt cache and reset its counters (library voices stay); returns what was removed
        ({"entries", "bytes", "aliases", "counters"}, see ``PromptCache.clear``)."""
        if self.cache is None:
            return {"entries": 0, "bytes": 0, "aliases": 0, "counters": {}}
        return self.cache.clear()

    # ---- the voice library ---------------------------------------------------------------------

    def _library(self) -> VoiceLibrary:
        if self.library is None:
            raise OptionsError("this server has no voice library (it runs without a cache folder or store)")
        return self.library

    def fingerprints(self) -> dict[str, str]:
        """What a voice's stored tokens and features depend on (a change re-encodes the voice)."""
        return {"tokenizer": self.tokenizer.fingerprint, "vocoder": self.vocoder.fingerprint}

    def create_voice(self, name: str, audio: np.ndarray, sample_rate: int, text: str = "") -> VoiceInfo:
        """Encode a reference clip once and keep it as a named voice (a prompt-cache hit when the clip
        was used before). An empty ``text`` is transcribed when auto-transcription is on."""
        library = self._library()
        start = time.perf_counter()
        text = clean_text(text, "reference text", self.config.max_text_chars, [], allow_empty=True)
        transcribe = self.needs_transcription(text, "reference")
        audio, sr = self.validated_audio(audio, sample_rate)
        report = StageReport()
        voice = self.from_clip(audio, sr, text, transcribe, report)
        info = library.create(
            name,
            voice.text,
            reference_flac(audio, sr),
            voice.vq02,
            voice.vq06,
            encode_features(voice.features, audio_digest(audio, sr), 0.0),
            self.fingerprints(),
        ).info
        log.info(
            "voice %s created in %.3f s (tokens %s)", info.id, time.perf_counter() - start, report.tokens_from
        )
        return info

    def list_voices(self) -> list[VoiceInfo]:
        return self._library().list() if self.library is not None else []

    def voice_info(self, voice_id: str) -> VoiceInfo:
        info = self._library().info(voice_id)
        if info is None:
            raise NotFoundError(f"there is no voice {voice_id!r}; GET /v1/voices lists them")
        return info

    def voice_audio(self, voice_id: str) -> bytes:
        """The voice's reference clip as FLAC bytes."""
        return self._stored_voice(voice_id).audio_flac

    def rename_voice(self, voice_id: str, name: str) -> VoiceInfo:
        info = self._library().rename(voice_id, name)
        if info is None:
            raise NotFoundError(f"there is no voice {voice_id!r}")
        return info

    def delete_voice(self, voice_id: str) -> None:
        if not self._library().delete(voice_id):
            raise NotFoundError(f"there is no voice {voice_id!r}")
        log.info("voice %s deleted", voice_id)

    def refresh_voices(self) -> int:
        """Re-encode every voice made with other model files (once, logged); returns how many."""
        if self.library is None:
            return 0
        stale = self.library.stale(self.fingerprints())
        for info in stale:
            try:
                self._reencode(self._stored_voice(info.id))
            except Exception as exc:  # noqa: BLE001 - one damaged voice must not stop the others
                log.warning("voice %s could not be re-encoded (%s); it keeps its old tokens", info.id, exc)
        return len(stale)

    def _stored_voice(self, voice_id: str) -> Voice:
        voice = self._library().get(voice_id)
        if voice is None:
            raise NotFoundError(f"there is no voice {voice_id!r}; GET /v1/voices lists them")
        return voice

    def from_library(self, voice_id: str, report: StageReport) -> VoicePrompt:
        """A library voice as a prompt: stored tokens and features (re-encoded if the models changed)."""
        t0 = time.perf_counter()
        voice = self._stored_voice(voice_id)
        if voice.fingerprints != self.fingerprints() or not voice.vocoder_features:
            voice = self._reencode(voice)
        mixed = interleave(voice.vq02, voice.vq06)
        features = decode_features(voice.vocoder_features)
        report.tokens_from, report.cache_hit, report.vocoder_prompt_cached = "voice", True, True
        report.tokenizer_s = time.perf_counter() - t0
        log.info(
            "tokenizer: voice %s from the library in %.3f s (%d tokens)",
            voice_id,
            report.tokenizer_s,
            len(mixed),
        )
        return VoicePrompt(token_str(mixed), mixed, features, voice.text, "", voice.vq02, voice.vq06)

    def _reencode(self, voice: Voice) -> Voice:
        t0 = time.perf_counter()
        audio, sr = read_audio(voice.audio_flac)
        prompt = self.from_clip(audio, sr, voice.text, False, StageReport())
        updated = self._library().update(
            voice.id,
            vq02=prompt.vq02,
            vq06=prompt.vq06,
            fingerprints=self.fingerprints(),
            vocoder_features=encode_features(prompt.features, audio_digest(audio, sr), 0.0),
        )
        log.info(
            "voice %s re-encoded for the current model files in %.2f s", voice.id, time.perf_counter() - t0
        )
        return updated or voice

    # ---- internals ------------------------------------------------------------------------------

    def _prompt_features(
        self, audio: np.ndarray, sr: int, tokens: TokenizedAudio, report: StageReport
    ) -> PromptFeatures:
        t0 = time.perf_counter()
        prelude = prompt_prelude(audio, sr)
        digest = audio_digest(prelude, sr)
        field_name = VOCODER_FIELD_PREFIX + self.vocoder.fingerprint
        stored = (tokens.cache_entry or {}).get(field_name)
        if isinstance(stored, dict) and stored.get("audio_hash") == digest:
            try:
                features = decode_features(stored)
                report.vocoder_prompt_s = time.perf_counter() - t0
                report.vocoder_prompt_cached = True
                self._count({VOCODER_HITS: 1, VOCODER_SAVED: float(stored.get("seconds", 0.0))})
                log.info(
                    "vocoder prompt: cache hit in %.3f s (mel %s)",
                    report.vocoder_prompt_s,
                    features.mel.shape,
                )
                return features
            except (KeyError, ValueError, TypeError) as exc:  # a damaged field is recomputed, not fatal
                log.warning("vocoder prompt: cached features unreadable (%s); recomputing", exc)
        t1 = time.perf_counter()
        features = self.vocoder.prompt_features(prelude, sr)
        seconds = time.perf_counter() - t1
        if self.cache is not None and tokens.cache_key:
            try:
                self.cache.update(tokens.cache_key, {field_name: encode_features(features, digest, seconds)})
            except Exception as exc:  # an unwritable cache costs speed, never the request
                log.warning("vocoder prompt: could not store features in the prompt cache (%s)", exc)
        report.vocoder_prompt_s = time.perf_counter() - t0
        self._count({VOCODER_MISSES: 1})
        log.info(
            "vocoder prompt: computed in %.3f s (mel %s, speaker %s)",
            report.vocoder_prompt_s,
            np.shape(features.mel),
            np.shape(features.speaker_embedding),
        )
        return features

    def _count(self, amounts: dict[str, float]) -> None:
        if self.cache is not None:
            for name, amount in amounts.items():
                self.cache.incr(name, amount)
