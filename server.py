"""One server for the page, the REST API and the health check, on one port.

    serve(page, engine, ServeOptions(host="127.0.0.1", port=7860, api_key=None))

* ``/``          the Gradio page (its requests wait in Gradio's queue, ``concurrency`` at a time)
* ``/v1/...``    the OpenAI-compatible REST API (api/routes.py), with its own bounded slots
* ``/docs``      the OpenAPI page of every route, with examples
* ``/health``    models, device, variants, backend, store, queue and cache statistics (JSON)
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from fastapi.routing import APIRoute

from api.routes import ApiContext, build_router
from api.streaming import DEFAULT_QUEUE_SIZE, Slots
from api.uploads import DEFAULT_MAX_UPLOAD_BYTES
from engine import CloneEngine
from outputs import OutputStore
from ui.page import CSS, PAGE_JS, THEME

MAX_UPLOAD = "100mb"  # the page's uploads (a 30 s reference is a few MB even as 48 kHz float WAV)


@dataclass(frozen=True)
class ServeOptions:
    """Where and how to serve (from settings.py)."""

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    concurrency: int = 1
    queue_size: int = DEFAULT_QUEUE_SIZE
    api_key: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    allowed_paths: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def loopback_only(self) -> bool:
        """True when only this machine can reach the server (destructive calls need no key then)."""
        try:
            return ipaddress.ip_address(self.host).is_loopback and not self.share
        except ValueError:
            return self.host == "localhost" and not self.share


def health_route(engine: CloneEngine, slots: Slots) -> APIRoute:
    """``GET /health``: models, device, variants, demo flag, replica, queue and cache statistics."""

    def health() -> dict:
        status = engine.status()
        status["replica"] = socket.gethostname()
        status["api_queue"] = {
            "admitted": slots.in_use,
            "concurrency": slots.concurrency,
            "queue_size": slots.queue_size,
        }
        return status

    return APIRoute("/health", health, methods=["GET"], name="health", tags=["health"])


def api_context(engine: CloneEngine, options: ServeOptions, outputs: OutputStore) -> ApiContext:
    return ApiContext(
        engine,
        outputs,
        Slots(options.concurrency, options.queue_size),
        options.api_key,
        options.loopback_only,
        options.max_upload_bytes,
    )


def serve(
    page: gr.Blocks, engine: CloneEngine, options: ServeOptions, outputs: OutputStore | None = None
) -> None:
    """Queue the page's requests, add the API and health routes, and serve until interrupted."""
    # "is None", not "or": an empty store is falsy (it has a length), and the page must share this one
    ctx = api_context(engine, options, outputs if outputs is not None else OutputStore())
    routes = [health_route(engine, ctx.slots), *build_router(ctx).routes]
    page.queue(default_concurrency_limit=options.concurrency, max_size=options.queue_size)
    # quiet: Gradio's own start-up lines tell to "set share=True in launch()"; app.py logs the address and
    # the --share flag instead (with --share, Gradio prints the public link itself)
    page.launch(
        server_name=options.host,
        server_port=options.port,
        share=options.share,
        theme=THEME,
        css=CSS,
        js=PAGE_JS,
        show_error=False,
        footer_links=["api"],
        quiet=not options.share,
        app_kwargs={"routes": routes, "docs_url": "/docs", "title": "EditX Studio API"},
        allowed_paths=[str(p) for p in options.allowed_paths],
        max_file_size=MAX_UPLOAD,
    )
