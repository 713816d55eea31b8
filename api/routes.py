"""The REST API under /v1, compatible with OpenAI's speech API, on the same engine as the page.

    router = build_router(ApiContext(engine, outputs, api_key="..."))

Routes only translate: HTTP bodies -> the engine's request types (validated there), the engine's
events -> encoded audio (whole, chunked as it is made, or OpenAI's server-sent events), errors ->
``api/errors.py``. Generation runs in a bounded set of slots: ``concurrency`` at a time, up to
``queue_size`` waiting, and a 429 beyond that.

Every output's provenance record (``provenance.py``) travels with it: whole responses carry it in
``X-Render-Manifest`` (base64url of the compact JSON, without padding) when it fits in
``MAX_MANIFEST_HEADER_BYTES``, and always name ``X-Render-Manifest-Url``
(``GET /v1/outputs/{id}/manifest``); a whole WAV embeds it in a LIST/INFO ICMT chunk; the SSE
``speech.audio.done`` event carries it as ``manifest``.
"""

from __future__ import annotations

import base64
import hmac
import io
import ipaddress
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from api.errors import ApiRoute, error_response
from api.schema import (
    EditJSONRequest,
    ModelList,
    ModelOut,
    PreflightOut,
    SpeechRequest,
    VoiceInfoOut,
    VoiceList,
)
from audio_formats import FORMATS, StreamEncoder, TempoFilter, encode_audio
from audio_prep import load_audio
from engine import CloneEngine
from errors import AccessError, BusyError, OptionsError, TooLargeError
from model_layout import ALL_VARIANTS, LLM_BACKENDS
from models.edit_tasks import EDIT_TASKS, LANGUAGE_TAGS, PARALINGUISTIC_TAGS
from outputs import OutputStore
from provenance import manifest_json
from synthesis import MAX_BEST_OF, AudioPiece, CloneRequest, EditRequest, SynthesisOptions, SynthesisResult
from wav_info import write_wav

log = logging.getLogger(__name__)

MODEL_ID = "step-audio-editx"
DEFAULT_MAX_UPLOAD_BYTES = 50 << 20  # a 30 s reference is a few MB even as 48 kHz float WAV
DEFAULT_QUEUE_SIZE = 64
INSTRUCTION_TASKS = ("emotion", "style")  # instructions naming one of their options apply that edit
MAX_MANIFEST_HEADER_BYTES = 8 << 10  # larger records are only served at X-Render-Manifest-Url


class Slots:
    """At most ``concurrency`` generations at once and ``queue_size`` waiting; more is a BusyError."""

    def __init__(self, concurrency: int = 1, queue_size: int = DEFAULT_QUEUE_SIZE):
        self.concurrency, self.queue_size = max(1, concurrency), max(0, queue_size)
        self._running = threading.Semaphore(self.concurrency)
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting

    def acquire(self) -> None:
        """Wait for a slot; refuse at once when the queue is already full."""
        with self._lock:
            if self._admitted >= self.concurrency + self.queue_size:
                raise BusyError(f"the server is busy ({self.queue_size} requests are already waiting); "
                                "try again in a moment")
            self._admitted += 1
        self._running.acquire()

    def release(self) -> None:
        self._running.release()
        with self._lock:
            self._admitted -= 1

    @property
    def in_use(self) -> int:
        """Requests admitted (running or waiting)."""
        return self._admitted


@dataclass
class ApiContext:
    """What the routes need: the engine, recent outputs, the queue and the access settings."""

    engine: CloneEngine
    outputs: OutputStore = field(default_factory=OutputStore)
    slots: Slots = field(default_factory=Slots)
    api_key: str | None = None
    loopback_only: bool = True  # the server listens on loopback only: destructive calls need no key
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES


def build_router(ctx: ApiContext) -> APIRouter:
    """Every /v1 route (they all require the API key when one is set)."""

    def require_key(request: Request) -> None:
        if not ctx.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        valid = hmac.compare_digest(token.strip().encode(), ctx.api_key.encode())
        if scheme.lower() != "bearer" or not valid:
            raise AccessError("a valid API key is required: send 'Authorization: Bearer <key>'")

    def require_admin(request: Request) -> None:
        if ctx.api_key or ctx.loopback_only or _is_loopback(request):
            return  # with a key set, require_key already checked it; on loopback it is one's own machine
        raise AccessError("deleting needs the admin key on a server open to the network: start it with "
                          "--api-key and send 'Authorization: Bearer <key>'", status=403)

    router = APIRouter(prefix="/v1", route_class=ApiRoute, dependencies=[Depends(require_key)],
                       tags=["EditX Studio"])
    engine = ctx.engine

    @router.get("/models", response_model=ModelList, summary="The model and its variants")
    def models() -> ModelList:
        edits = {task: options for task, options in EDIT_TASKS.items()}
        details = {"variants": engine.available_variants(), "default_variant": engine.config.variant,
                   "edit_tasks": edits, "instructions": {t: EDIT_TASKS[t] for t in INSTRUCTION_TASKS},
                   "paralinguistic_tags": list(PARALINGUISTIC_TAGS), "language_tags": list(LANGUAGE_TAGS),
                   "scores": engine.scorer is not None, "best_of": {"min": 1, "max": MAX_BEST_OF},
                   "demo": engine.demo, "sample_rate": engine.vocoder.sample_rate}
        data = [ModelOut(id=MODEL_ID, details=details)]
        data += [ModelOut(id=v, details={"variant": v}) for v in engine.available_variants()]
        return ModelList(data=data)

    @router.post("/audio/speech", summary="Speak text in a library voice (OpenAI's speech API)",
                 responses={200: {"content": {f.media_type: {} for f in FORMATS.values()}},
                            **_ERRORS})
    def speech(body: SpeechRequest) -> Response:
        edit = _instruction_edit(body.instructions)
        options = _options(engine, body.model, body.seed, body.temperature, body.top_p,
                           stream=body.stream_format is not None and edit is None, best_of=body.best_of)
        request = CloneRequest.from_voice(body.voice_id, body.input, options)
        return _respond(ctx, lambda cancel: _speech_events(engine, request, edit, cancel),
                        body.response_format, body.stream_format, body.speed)

    @router.post("/audio/edits", summary="Edit a previous output (JSON) or an uploaded clip (multipart)",
                 openapi_extra=_EDIT_BODY, responses=_ERRORS)
    async def edits(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            raw = await _read_limited(request, ctx.max_upload_bytes)
            try:
                body = EditJSONRequest.model_validate_json(raw)
            except ValidationError as exc:
                raise OptionsError(f"invalid edit request: {_first_error(exc)}") from None
            source = ctx.outputs.get(body.output_id)
            options = _options(engine, None, body.seed, body.temperature, body.top_p, stream=False,
                               best_of=body.best_of)
            edit_request = EditRequest.from_result(source, body.task, body.subtask, body.new_text or "",
                                                   options)
            fmt = body.response_format
        else:
            form = await _form(request, ctx.max_upload_bytes)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise OptionsError("send the clip to edit as the multipart field 'file' (or JSON with an "
                                   "output_id)")
            audio, sr = _upload_audio(await upload.read(), upload.filename, engine)
            options = _options(engine, None, _int_or_none(form.get("seed")), None, None, stream=False,
                               best_of=_int_or_none(form.get("best_of"), "best_of") or 1)
            edit_request = EditRequest(audio, sr, str(form.get("text") or ""), str(form.get("task") or ""),
                                       str(form.get("subtask") or "") or None,
                                       str(form.get("new_text") or ""), options)
            fmt = str(form.get("response_format") or "wav")
        if fmt not in FORMATS:
            raise OptionsError(f"unknown response format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return await run_in_threadpool(_respond, ctx, lambda cancel: engine.edit_stream(edit_request, cancel),
                                       fmt, None, 1.0)

    @router.get("/outputs/{output_id}/manifest", summary="The provenance record of a recent output",
                responses=_ERRORS)
    def output_manifest(output_id: str) -> Response:
        return Response(manifest_json(ctx.outputs.get(output_id).manifest), media_type="application/json")

    @router.post("/voices/preflight", response_model=PreflightOut, openapi_extra=_PREFLIGHT_BODY,
                 summary="Check a reference clip before cloning (multipart: file, optional text)",
                 responses=_ERRORS)
    async def preflight(request: Request) -> PreflightOut:
        form = await _form(request, ctx.max_upload_bytes)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise OptionsError("send the reference clip as the multipart field 'file'")
        audio, sr = _upload_audio(await upload.read(), upload.filename, engine)
        check = await run_in_threadpool(engine.voices.preflight, audio, sr, str(form.get("text") or ""))
        return PreflightOut(**check.to_dict())

    @router.get("/voices", response_model=VoiceList, summary="Every voice of the library")
    def voices() -> VoiceList:
        return VoiceList(data=[_voice_out(v) for v in engine.voices.list_voices()])

    @router.post("/voices", response_model=VoiceInfoOut, status_code=201, openapi_extra=_VOICE_BODY,
                 summary="Create a voice from a clip (multipart: file, name, optional text)",
                 responses=_ERRORS)
    async def create_voice(request: Request) -> VoiceInfoOut:
        form = await _form(request, ctx.max_upload_bytes)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise OptionsError("send the reference clip as the multipart field 'file'")
        name = str(form.get("name") or "").strip() or (upload.filename or "voice").rsplit(".", 1)[0]
        audio, sr = _upload_audio(await upload.read(), upload.filename, engine)
        text = str(form.get("text") or "")
        info = await run_in_threadpool(engine.voices.create_voice, name, audio, sr, text)
        return _voice_out(info)

    @router.get("/voices/{voice_id}", response_model=VoiceInfoOut, summary="One voice's metadata",
                responses=_ERRORS)
    def voice(voice_id: str) -> VoiceInfoOut:
        return _voice_out(engine.voices.voice_info(voice_id))

    @router.get("/voices/{voice_id}/audio", summary="The voice's reference clip (FLAC)",
                responses={200: {"content": {"audio/flac": {}}}, **_ERRORS})
    def voice_audio(voice_id: str) -> Response:
        return Response(engine.voices.voice_audio(voice_id), media_type="audio/flac",
                        headers={"Content-Disposition": f'attachment; filename="{voice_id}.flac"'})

    @router.patch("/voices/{voice_id}", response_model=VoiceInfoOut, summary="Rename a voice",
                  responses=_ERRORS)
    def rename_voice(voice_id: str, body: dict) -> VoiceInfoOut:
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise OptionsError("send the new name as JSON: {\"name\": \"...\"}")
        return _voice_out(engine.voices.rename_voice(voice_id, name))

    @router.delete("/voices/{voice_id}", status_code=204, dependencies=[Depends(require_admin)],
                   summary="Delete a voice", responses=_ERRORS)
    def delete_voice(voice_id: str) -> Response:
        engine.voices.delete_voice(voice_id)
        return Response(status_code=204)

    return router


# ---- speech and edit responses ----------------------------------------------------------------

def _speech_events(engine: CloneEngine, request: CloneRequest, edit: tuple[str, str] | None, cancel):
    """The clone's events, or (with an instruction) the clone collected and then its edit's events."""
    if edit is None:
        yield from engine.clone_stream(request, cancel)
        return
    cloned = engine.clone(request, cancel=cancel)
    yield from engine.edit_stream(EditRequest.from_result(cloned, edit[0], edit[1], options=request.options),
                                  cancel)


def _respond(ctx: ApiContext, make_events, fmt: str, stream_format: str | None, speed: float) -> Response:
    """Run a request in a slot; answer whole, as chunked audio, or as server-sent events."""
    ctx.slots.acquire()
    cancel = threading.Event()
    try:
        events = make_events(cancel)
        first = next(events)  # validation and prep happen here, so their errors still get a status
    except BaseException:
        ctx.slots.release()
        raise
    output_id = ctx.outputs.new_id()
    if stream_format is None:
        try:
            result = _last(first, events)
        finally:
            ctx.slots.release()
        ctx.outputs.add(result, output_id)
        audio = TempoFilter(speed, result.sample_rate)
        samples = audio.push(result.audio)
        samples = np.concatenate([samples, audio.finish()])
        data = (write_wav(samples, result.sample_rate, manifest_json(result.manifest)) if fmt == "wav"
                else encode_audio(samples, result.sample_rate, fmt))
        return Response(data, media_type=FORMATS[fmt].media_type, headers=_headers(result, output_id))
    body = _stream_body(ctx, first, events, cancel, fmt, stream_format, speed, output_id)
    media = "text/event-stream" if stream_format == "sse" else FORMATS[fmt].media_type
    return StreamingResponse(body, media_type=media, headers={"X-Output-Id": output_id,
                                                              "Cache-Control": "no-cache"})


def _stream_body(ctx: ApiContext, first, events, cancel: threading.Event, fmt: str, stream_format: str,
                 speed: float, output_id: str) -> Iterator[bytes]:
    """Encoded audio as the engine makes it; the slot is freed however the stream ends."""
    encoder = StreamEncoder(fmt, ctx.engine.vocoder.sample_rate)
    tempo = TempoFilter(speed, ctx.engine.vocoder.sample_rate)
    sse = stream_format == "sse"
    try:
        for event in _chain(first, events):
            if isinstance(event, AudioPiece):
                data = encoder.write(tempo.push(event.audio))
                if data:
                    yield _sse_delta(data) if sse else data
            elif isinstance(event, SynthesisResult):
                ctx.outputs.add(event, output_id)
                data = encoder.write(tempo.finish()) + encoder.finish()
                if data:
                    yield _sse_delta(data) if sse else data
                if sse:
                    done = {"type": "speech.audio.done", "output_id": output_id, "mode": event.mode,
                            "audio_s": event.report.audio_s, "seed": event.report.seed,
                            "usage": {"input_tokens": event.report.prompt_tokens,
                                      "output_tokens": event.report.new_tokens,
                                      "total_tokens": event.report.prompt_tokens + event.report.new_tokens},
                            "timings": _timings(event), "scores": _scores(event), "warnings": event.warnings,
                            "manifest": event.manifest}
                    yield f"data: {json.dumps(done)}\n\n".encode()
    except Exception as exc:  # the status line is gone: SSE clients get an error event, audio ends early
        if sse:
            body = json.loads(error_response(exc).body)
            yield f"data: {json.dumps({'type': 'error', **body})}\n\n".encode()
    finally:
        cancel.set()  # a client that went away stops the generation at its next token
        events.close()
        ctx.slots.release()


def _sse_delta(data: bytes) -> bytes:
    event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
    return f"data: {json.dumps(event)}\n\n".encode()


def _chain(first, events):
    yield first
    yield from events


def _last(first, events) -> SynthesisResult:
    result = first
    for event in events:
        result = event
    if not isinstance(result, SynthesisResult):  # the engine's streams always end with their result
        raise RuntimeError("the request ended without a result")
    return result


def _headers(result: SynthesisResult, output_id: str) -> dict[str, str]:
    report = result.report
    headers = {f"X-Timing-{k.title()}": f"{v:.3f}" for k, v in _timings(result).items()}
    headers.update({"X-Output-Id": output_id, "X-Seed": str(report.seed),
                    "X-Cache": {"cache hit": "hit", "kept": "kept", "voice": "voice"}.get(report.tokens_from,
                                                                                            "miss"),
                    "X-Audio-Seconds": f"{report.audio_s:.3f}", "X-Chunks": str(len(report.chunks)),
                    "X-Variant": result.variant, "X-Backend": result.backend, "X-Mode": result.mode,
                    "X-Render-Manifest-Url": f"/v1/outputs/{output_id}/manifest"})
    headers.update({f"X-Score-{k.replace('_', '-').title()}": str(v) for k, v in _scores(result).items()
                    if v is not None})
    encoded = base64.urlsafe_b64encode(manifest_json(result.manifest).encode()).rstrip(b"=").decode()
    if len(encoded) <= MAX_MANIFEST_HEADER_BYTES:
        headers["X-Render-Manifest"] = encoded
    if result.warnings:
        headers["X-Warnings"] = _ascii("; ".join(result.warnings))[:1000]
    return headers


def _timings(result: SynthesisResult) -> dict[str, float]:
    r = result.report
    return {"total": r.total_s, "prep": r.prep_s, "tokenizer": r.tokenizer_s, "llm": r.llm_s,
            "vocoder": r.vocoder_s, "scores": r.score_s, "ttfa": r.ttfa_s}


def _scores(result: SynthesisResult) -> dict:
    """The output's scores as the manifest states them (None: not scored)."""
    scores = result.manifest.get("scores") or {}
    return {name: scores.get(name) for name in ("similarity", "error_rate", "metric")}


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


# ---- request parts -------------------------------------------------------------------------------

def _options(engine: CloneEngine, model: str | None, seed: int | None, temperature: float | None,
             top_p: float | None, stream: bool, best_of: int = 1) -> SynthesisOptions:
    variant = model if model in ALL_VARIANTS else None
    backend = model if model in LLM_BACKENDS else None
    defaults = SynthesisOptions()
    return SynthesisOptions(variant=variant, backend=backend, seed=seed,
                            temperature=defaults.temperature if temperature is None else temperature,
                            top_p=defaults.top_p if top_p is None else top_p, stream=stream,
                            best_of=best_of).validated()


def _instruction_edit(instructions: str | None) -> tuple[str, str] | None:
    """('emotion', 'happy') when the instructions name an emotion or a style option, else None."""
    words = (instructions or "").strip().lower()
    for task in INSTRUCTION_TASKS:
        if words in EDIT_TASKS[task] and words != "remove":
            return task, words
    return None


def _upload_audio(data: bytes, filename: str | None, engine: CloneEngine) -> tuple[np.ndarray, int]:
    """An uploaded clip, decoded within the reference limits; messages name the upload's file name."""
    upload = io.BytesIO(data)
    upload.name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return load_audio(upload, max_seconds=engine.config.max_reference_seconds)


def _voice_out(info) -> VoiceInfoOut:
    return VoiceInfoOut(id=info.id, name=info.name, text=info.text, created=int(info.created),
                        audio_url=f"/v1/voices/{info.id}/audio", fingerprints=dict(info.fingerprints))


def _is_loopback(request: Request) -> bool:
    try:
        return ipaddress.ip_address(request.client.host).is_loopback if request.client else False
    except ValueError:
        return False


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the request is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise TooLargeError(f"the request is over the {limit / 1e6:.0f} MB limit")
    return data


async def _form(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"the upload is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise OptionsError("send this request as multipart/form-data")
    return await request.form(max_files=1, max_fields=16, max_part_size=limit)


def _int_or_none(value, name: str = "seed") -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(str(value))
    except ValueError:
        raise OptionsError(f"{name} must be a whole number, got {value!r}") from None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', 'invalid')}"


_ERRORS = {status: {"description": text, "content": {"application/json": {"example": {"error": {
    "message": text, "type": kind, "param": None, "code": code}}}}}
    for status, text, kind, code in (
        (400, "The input cannot be used (the message says why)", "invalid_request_error", "invalid_request"),
        (401, "A valid API key is required", "invalid_request_error", "invalid_api_key"),
        (404, "No voice or output with that id", "invalid_request_error", "not_found"),
        (413, "The upload is over the size limit", "invalid_request_error", "too_large"),
        (429, "The queue is full; try again in a moment", "rate_limit_error", "queue_full"),
        (503, "The models are still loading or a backend is down", "server_error", "loading"))}
_EDIT_BODY = {"requestBody": {"content": {
    "application/json": {"schema": EditJSONRequest.model_json_schema(),
                         "example": {"output_id": "out-3f2a9c1b7d0e", "task": "emotion", "subtask": "happy"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file", "task"], "properties": {
        "file": {"type": "string", "format": "binary"}, "text": {"type": "string"},
        "task": {"type": "string", "example": "style"}, "subtask": {"type": "string", "example": "whisper"},
        "new_text": {"type": "string"}, "response_format": {"type": "string", "example": "wav"},
        "seed": {"type": "integer"},
        "best_of": {"type": "integer", "minimum": 1, "maximum": MAX_BEST_OF}}}}}}}
_PREFLIGHT_BODY = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "text": {"type": "string",
                 "description": "what the clip says, if typed (compared with the transcript)"}}}}}}}
_VOICE_BODY = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "name": {"type": "string", "example": "Calm narrator"},
        "text": {"type": "string", "description": "what the clip says (empty: transcribed)"}}}}}}}
