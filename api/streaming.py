"""Running a request in a slot and answering it: whole, as chunked audio, or as server-sent events.

Generation runs in a bounded set of slots (``Slots``): ``concurrency`` at a time, up to ``queue_size``
waiting, and a BusyError (429) beyond that. ``respond`` holds a slot while the engine works and frees
it however the answer ends: a whole response once encoded, a stream when it finishes, fails or the
client goes away (which also cancels the generation at its next token). The SSE stream follows
OpenAI's speech events: ``speech.audio.delta`` with base64 audio, then ``speech.audio.done`` with the
output id, usage, timings, scores, warnings and the provenance manifest, or ``error``.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator

import numpy as np
from fastapi.responses import Response, StreamingResponse

from api.errors import error_response
from api.responses import result_headers, scores, timings
from audio_formats import FORMATS, StreamEncoder, TempoFilter, encode_audio
from errors import BusyError
from outputs import OutputStore
from provenance import manifest_json
from synthesis import AudioPiece, SynthesisResult
from wav_info import write_wav

DEFAULT_QUEUE_SIZE = 64


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
                raise BusyError(
                    f"the server is busy ({self.queue_size} requests are already waiting); "
                    "try again in a moment"
                )
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


def respond(
    slots: Slots,
    outputs: OutputStore,
    sample_rate: int,
    make_events,
    fmt: str,
    stream_format: str | None,
    speed: float,
) -> Response:
    """Run a request in a slot; answer whole, as chunked audio, or as server-sent events.

    ``make_events(cancel)`` starts the engine's event stream; ``sample_rate`` (Hz) is the vocoder's, at
    which streamed audio is encoded; the result is kept in ``outputs`` under the id the answer names.
    """
    slots.acquire()
    cancel = threading.Event()
    try:
        events = make_events(cancel)
        first = next(events)  # validation and prep happen here, so their errors still get a status
    except BaseException:
        slots.release()
        raise
    output_id = outputs.new_id()
    if stream_format is None:
        try:
            result = _last(first, events)
        finally:
            slots.release()
        outputs.add(result, output_id)
        audio = TempoFilter(speed, result.sample_rate)
        samples = audio.push(result.audio)
        samples = np.concatenate([samples, audio.finish()])
        data = (
            write_wav(samples, result.sample_rate, manifest_json(result.manifest))
            if fmt == "wav"
            else encode_audio(samples, result.sample_rate, fmt)
        )
        return Response(data, media_type=FORMATS[fmt].media_type, headers=result_headers(result, output_id))
    body = _stream_body(
        slots, outputs, sample_rate, first, events, cancel, fmt, stream_format, speed, output_id
    )
    media = "text/event-stream" if stream_format == "sse" else FORMATS[fmt].media_type
    return StreamingResponse(
        body, media_type=media, headers={"X-Output-Id": output_id, "Cache-Control": "no-cache"}
    )


def _stream_body(
    slots: Slots,
    outputs: OutputStore,
    sample_rate: int,
    first,
    events,
    cancel: threading.Event,
    fmt: str,
    stream_format: str,
    speed: float,
    output_id: str,
) -> Iterator[bytes]:
    """Encoded audio as the engine makes it; the slot is freed however the stream ends."""
    encoder = StreamEncoder(fmt, sample_rate)
    tempo = TempoFilter(speed, sample_rate)
    sse = stream_format == "sse"
    try:
        for event in _chain(first, events):
            if isinstance(event, AudioPiece):
                data = encoder.write(tempo.push(event.audio))
                if data:
                    yield _sse_delta(data) if sse else data
            elif isinstance(event, SynthesisResult):
                outputs.add(event, output_id)
                data = encoder.write(tempo.finish()) + encoder.finish()
                if data:
                    yield _sse_delta(data) if sse else data
                if sse:
                    done = {
                        "type": "speech.audio.done",
                        "output_id": output_id,
                        "mode": event.mode,
                        "audio_s": event.report.audio_s,
                        "seed": event.report.seed,
                        "usage": {
                            "input_tokens": event.report.prompt_tokens,
                            "output_tokens": event.report.new_tokens,
                            "total_tokens": event.report.prompt_tokens + event.report.new_tokens,
                        },
                        "timings": timings(event),
                        "scores": scores(event),
                        "warnings": event.warnings,
                        "manifest": event.manifest,
                    }
                    yield f"data: {json.dumps(done)}\n\n".encode()
    except Exception as exc:  # the status line is gone: SSE clients get an error event, audio ends early
        if sse:
            body = json.loads(error_response(exc).body)
            yield f"data: {json.dumps({'type': 'error', **body})}\n\n".encode()
    finally:
        cancel.set()  # a client that went away stops the generation at its next token
        events.close()
        slots.release()


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
