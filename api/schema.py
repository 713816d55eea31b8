"""The REST API's bodies: OpenAI's speech request (plus our extensions), edits, voices, models, errors.

Validation of the values themselves (seed, temperature, task names, text) happens once, in the
engine's request types (``synthesis.py``); these models only describe the HTTP shapes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from audio_formats import FORMATS, MAX_SPEED, MIN_SPEED
from synthesis import MAX_BEST_OF

ResponseFormat = Literal["wav", "mp3", "flac", "opus", "aac", "pcm"]
assert set(ResponseFormat.__args__) == set(FORMATS)  # one list of formats: audio_formats.FORMATS


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object: ``{"id": "calm-narrator"}``."""

    id: str


class SpeechRequest(BaseModel):
    """``POST /v1/audio/speech``: OpenAI's body, plus our seed, temperature, top_p and best_of."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "step-audio-editx",
                    "input": "Hello from EditX Studio.",
                    "voice": "calm-narrator",
                    "response_format": "mp3",
                },
                {
                    "model": "base",
                    "input": "Streaming, as it is made.",
                    "voice": "calm-narrator",
                    "response_format": "wav",
                    "stream_format": "audio",
                    "seed": 7,
                },
            ]
        },
    )

    model: str = Field(
        "step-audio-editx",
        description="accepted for compatibility; 'base' or 'bnb-4bit' "
        "picks that LLM variant, any other name uses the loaded one",
    )
    input: str = Field(..., description="the text to speak (long text is spoken in chunks)")
    voice: str | VoiceRef = Field(..., description="a voice id from GET /v1/voices")
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description="playback speed, pitch kept")
    instructions: str | None = Field(
        None,
        description="an emotion or style name from GET /v1/models "
        "(e.g. 'happy', 'whisper') applies that edit; other text is ignored",
    )
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="'audio': chunked bytes as the audio is made; 'sse': OpenAI's server-sent events"
    )
    seed: int | None = Field(None, description="same seed, same audio (empty: random)")
    temperature: float | None = None
    top_p: float | None = None
    best_of: int = Field(
        1,
        ge=1,
        le=MAX_BEST_OF,
        description="try up to N takes per text chunk and keep "
        "the best-scored one (the first under the error-rate threshold)",
    )

    @property
    def voice_id(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class EditJSONRequest(BaseModel):
    """``POST /v1/audio/edits`` as JSON: edit a previous output again by its id."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"output_id": "out-3f2a9c", "task": "emotion", "subtask": "happy"},
                {"output_id": "out-3f2a9c", "task": "paralinguistic", "new_text": "Hello [Laughter] there."},
            ]
        },
    )

    output_id: str
    task: str
    subtask: str | None = None
    new_text: str | None = None
    response_format: ResponseFormat = "wav"
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    best_of: int = Field(1, ge=1, le=MAX_BEST_OF, description="try up to N takes, keep the best-scored one")


class PreflightWarningOut(BaseModel):
    """One problem with a reference; ``suggestion`` names the edit that may fix it ("denoise", "vad")."""

    code: str
    message: str
    suggestion: str | None = None


class PreflightOut(BaseModel):
    """``POST /v1/voices/preflight``: measurements of a reference clip and plain warnings."""

    duration_s: float
    speech_s: float | None
    sample_rate: int
    channels: int
    loudness_lufs: float | None
    peak_dbfs: float | None
    clipped_share: float
    snr_db: float | None
    text: str
    transcript: str | None
    text_error_rate: float | None
    text_metric: str | None
    text_note: str
    usable: bool
    seconds: float
    warnings: list[PreflightWarningOut]


class VoiceInfoOut(BaseModel):
    """A voice as listed: no audio or tokens (``audio_url`` serves the reference clip)."""

    id: str
    object: Literal["voice"] = "voice"
    name: str
    text: str
    created: int
    audio_url: str
    fingerprints: dict[str, str] = {}


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceInfoOut]


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "stepfun-ai"
    details: dict[str, Any] = {}


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorOut(BaseModel):
    """OpenAI's error shape."""

    error: ErrorBody
