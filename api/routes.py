"""The REST API under /v1, compatible with OpenAI's speech API, on the same engine as the page.

    router = build_router(ApiContext(engine, outputs, api_key="..."))

Routes only translate: HTTP bodies -> the engine's request types (validated there), the engine's
events -> encoded audio (whole, chunked as it is made, or OpenAI's server-sent events:
``api/streaming.py``, which also bounds how many run at once; headers and the provenance manifest:
``api/responses.py``), errors -> ``api/errors.py``. Bodies are read within the upload limit by
``api/uploads.py``; ``api/openapi.py`` documents them.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError

from api.errors import ApiRoute
from api.openapi import EDIT_BODY, ERRORS, PREFLIGHT_BODY, VOICE_BODY
from api.schema import (
    EditJSONRequest,
    ModelList,
    ModelOut,
    PreflightOut,
    SpeechRequest,
    VoiceInfoOut,
    VoiceList,
)
from api.streaming import Slots, respond
from api.uploads import (
    DEFAULT_MAX_UPLOAD_BYTES,
    first_error,
    int_or_none,
    read_form,
    read_limited,
    upload_audio,
)
from audio_formats import FORMATS
from engine import CloneEngine
from errors import AccessError, OptionsError
from model_layout import ALL_VARIANTS, LLM_BACKENDS
from models.edit_tasks import EDIT_TASKS, LANGUAGE_TAGS, PARALINGUISTIC_TAGS
from outputs import OutputStore
from provenance import manifest_json
from synthesis import MAX_BEST_OF, CloneRequest, EditRequest, SynthesisOptions

log = logging.getLogger(__name__)

MODEL_ID = "step-audio-editx"
INSTRUCTION_TASKS = ("emotion", "style")  # instructions naming one of their options apply that edit


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
        raise AccessError(
            "deleting needs the admin key on a server open to the network: start it with "
            "--api-key and send 'Authorization: Bearer <key>'",
            status=403,
        )

    router = APIRouter(
        prefix="/v1", route_class=ApiRoute, dependencies=[Depends(require_key)], tags=["EditX Studio"]
    )
    engine = ctx.engine

    @router.get("/models", response_model=ModelList, summary="The model and its variants")
    def models() -> ModelList:
        edits = {task: options for task, options in EDIT_TASKS.items()}
        details = {
            "variants": engine.available_variants(),
            "default_variant": engine.config.variant,
            "edit_tasks": edits,
            "instructions": {t: EDIT_TASKS[t] for t in INSTRUCTION_TASKS},
            "paralinguistic_tags": list(PARALINGUISTIC_TAGS),
            "language_tags": list(LANGUAGE_TAGS),
            "scores": engine.scorer is not None,
            "best_of": {"min": 1, "max": MAX_BEST_OF},
            "demo": engine.demo,
            "sample_rate": engine.vocoder.sample_rate,
        }
        data = [ModelOut(id=MODEL_ID, details=details)]
        data += [ModelOut(id=v, details={"variant": v}) for v in engine.available_variants()]
        return ModelList(data=data)

    @router.post(
        "/audio/speech",
        summary="Speak text in a library voice (OpenAI's speech API)",
        responses={200: {"content": {f.media_type: {} for f in FORMATS.values()}}, **ERRORS},
    )
    def speech(body: SpeechRequest) -> Response:
        edit = _instruction_edit(body.instructions)
        options = _options(
            engine,
            body.model,
            body.seed,
            body.temperature,
            body.top_p,
            stream=body.stream_format is not None and edit is None,
            best_of=body.best_of,
        )
        request = CloneRequest.from_voice(body.voice_id, body.input, options)
        return respond(
            ctx.slots,
            ctx.outputs,
            engine.vocoder.sample_rate,
            lambda cancel: _speech_events(engine, request, edit, cancel),
            body.response_format,
            body.stream_format,
            body.speed,
        )

    @router.post(
        "/audio/edits",
        summary="Edit a previous output (JSON) or an uploaded clip (multipart)",
        openapi_extra=EDIT_BODY,
        responses=ERRORS,
    )
    async def edits(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            raw = await read_limited(request, ctx.max_upload_bytes)
            try:
                body = EditJSONRequest.model_validate_json(raw)
            except ValidationError as exc:
                raise OptionsError(f"invalid edit request: {first_error(exc)}") from None
            source = ctx.outputs.get(body.output_id)
            options = _options(
                engine, None, body.seed, body.temperature, body.top_p, stream=False, best_of=body.best_of
            )
            edit_request = EditRequest.from_result(
                source, body.task, body.subtask, body.new_text or "", options
            )
            fmt = body.response_format
        else:
            form = await read_form(request, ctx.max_upload_bytes)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise OptionsError(
                    "send the clip to edit as the multipart field 'file' (or JSON with an output_id)"
                )
            audio, sr = upload_audio(await upload.read(), upload.filename, engine)
            options = _options(
                engine,
                None,
                int_or_none(form.get("seed")),
                None,
                None,
                stream=False,
                best_of=int_or_none(form.get("best_of"), "best_of") or 1,
            )
            edit_request = EditRequest(
                audio,
                sr,
                str(form.get("text") or ""),
                str(form.get("task") or ""),
                str(form.get("subtask") or "") or None,
                str(form.get("new_text") or ""),
                options,
            )
            fmt = str(form.get("response_format") or "wav")
        if fmt not in FORMATS:
            raise OptionsError(f"unknown response format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return await run_in_threadpool(
            respond,
            ctx.slots,
            ctx.outputs,
            engine.vocoder.sample_rate,
            lambda cancel: engine.edit_stream(edit_request, cancel),
            fmt,
            None,
            1.0,
        )

    @router.get(
        "/outputs/{output_id}/manifest", summary="The provenance record of a recent output", responses=ERRORS
    )
    def output_manifest(output_id: str) -> Response:
        return Response(manifest_json(ctx.outputs.get(output_id).manifest), media_type="application/json")

    @router.post(
        "/voices/preflight",
        response_model=PreflightOut,
        openapi_extra=PREFLIGHT_BODY,
        summary="Check a reference clip before cloning (multipart: file, optional text)",
        responses=ERRORS,
    )
    async def preflight(request: Request) -> PreflightOut:
        form = await read_form(request, ctx.max_upload_bytes)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise OptionsError("send the reference clip as the multipart field 'file'")
        audio, sr = upload_audio(await upload.read(), upload.filename, engine)
        check = await run_in_threadpool(engine.voices.preflight, audio, sr, str(form.get("text") or ""))
        return PreflightOut(**check.to_dict())

    @router.get("/voices", response_model=VoiceList, summary="Every voice of the library")
    def voices() -> VoiceList:
        return VoiceList(data=[_voice_out(v) for v in engine.voices.list_voices()])

    @router.post(
        "/voices",
        response_model=VoiceInfoOut,
        status_code=201,
        openapi_extra=VOICE_BODY,
        summary="Create a voice from a clip (multipart: file, name, optional text)",
        responses=ERRORS,
    )
    async def create_voice(request: Request) -> VoiceInfoOut:
        form = await read_form(request, ctx.max_upload_bytes)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise OptionsError("send the reference clip as the multipart field 'file'")
        name = str(form.get("name") or "").strip() or (upload.filename or "voice").rsplit(".", 1)[0]
        audio, sr = upload_audio(await upload.read(), upload.filename, engine)
        text = str(form.get("text") or "")
        info = await run_in_threadpool(engine.voices.create_voice, name, audio, sr, text)
        return _voice_out(info)

    @router.get(
        "/voices/{voice_id}", response_model=VoiceInfoOut, summary="One voice's metadata", responses=ERRORS
    )
    def voice(voice_id: str) -> VoiceInfoOut:
        return _voice_out(engine.voices.voice_info(voice_id))

    @router.get(
        "/voices/{voice_id}/audio",
        summary="The voice's reference clip (FLAC)",
        responses={200: {"content": {"audio/flac": {}}}, **ERRORS},
    )
    def voice_audio(voice_id: str) -> Response:
        return Response(
            engine.voices.voice_audio(voice_id),
            media_type="audio/flac",
            headers={"Content-Disposition": f'attachment; filename="{voice_id}.flac"'},
        )

    @router.patch(
        "/voices/{voice_id}", response_model=VoiceInfoOut, summary="Rename a voice", responses=ERRORS
    )
    def rename_voice(voice_id: str, body: dict) -> VoiceInfoOut:
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise OptionsError('send the new name as JSON: {"name": "..."}')
        return _voice_out(engine.voices.rename_voice(voice_id, name))

    @router.delete(
        "/voices/{voice_id}",
        status_code=204,
        dependencies=[Depends(require_admin)],
        summary="Delete a voice",
        responses=ERRORS,
    )
    def delete_voice(voice_id: str) -> Response:
        engine.voices.delete_voice(voice_id)
        return Response(status_code=204)

    return router


def _speech_events(engine: CloneEngine, request: CloneRequest, edit: tuple[str, str] | None, cancel):
    """The clone's events, or (with an instruction) the clone collected and then its edit's events."""
    if edit is None:
        yield from engine.clone_stream(request, cancel)
        return
    cloned = engine.clone(request, cancel=cancel)
    yield from engine.edit_stream(
        EditRequest.from_result(cloned, edit[0], edit[1], options=request.options), cancel
    )


# ---- request parts -------------------------------------------------------------------------------


def _options(
    engine: CloneEngine,
    model: str | None,
    seed: int | None,
    temperature: float | None,
    top_p: float | None,
    stream: bool,
    best_of: int = 1,
) -> SynthesisOptions:
    variant = model if model in ALL_VARIANTS else None
    backend = model if model in LLM_BACKENDS else None
    defaults = SynthesisOptions()
    return SynthesisOptions(
        variant=variant,
        backend=backend,
        seed=seed,
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        stream=stream,
        best_of=best_of,
    ).validated()


def _instruction_edit(instructions: str | None) -> tuple[str, str] | None:
    """('emotion', 'happy') when the instructions name an emotion or a style option, else None."""
    words = (instructions or "").strip().lower()
    for task in INSTRUCTION_TASKS:
        if words in EDIT_TASKS[task] and words != "remove":
            return task, words
    return None


def _voice_out(info) -> VoiceInfoOut:
    return VoiceInfoOut(
        id=info.id,
        name=info.name,
        text=info.text,
        created=int(info.created),
        audio_url=f"/v1/voices/{info.id}/audio",
        fingerprints=dict(info.fingerprints),
    )


def _is_loopback(request: Request) -> bool:
    try:
        return ipaddress.ip_address(request.client.host).is_loopback if request.client else False
    except ValueError:
        return False
