"""One server for the page and the HTTP routes: Gradio's app with our routes and the request queue.

    serve(page, engine, ServeOptions(host="127.0.0.1", port=7860))

``GET /health`` reports the loaded models and the prompt cache. Requests through the page wait
in Gradio's queue, ``concurrency`` of them running over the models at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from fastapi.routing import APIRoute

from engine import CloneEngine
from ui.page import CSS, THEME

MAX_UPLOAD = "100mb"  # a 30 s reference is a few MB even as 48 kHz float WAV
QUEUE_SIZE = 64  # requests waiting beyond this are refused with "queue full"


@dataclass(frozen=True)
class ServeOptions:
    """Where and how to serve (from settings.py)."""

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    concurrency: int = 1
    allowed_paths: tuple[Path, ...] = field(default_factory=tuple)


def health_route(engine: CloneEngine) -> APIRoute:
    """``GET /health``: models loaded, device, variants, demo flag and prompt-cache statistics (JSON)."""

    def health() -> dict:
        return engine.status()

    return APIRoute("/health", health, methods=["GET"], name="health")


def serve(page: gr.Blocks, engine: CloneEngine, options: ServeOptions) -> None:
    """Queue requests (``options.concurrency`` at a time over the models) and serve until interrupted."""
    page.queue(default_concurrency_limit=options.concurrency, max_size=QUEUE_SIZE)
    page.launch(server_name=options.host, server_port=options.port, share=options.share, theme=THEME,
                css=CSS, app_kwargs={"routes": [health_route(engine)]}, show_error=False,
                footer_links=["api"], allowed_paths=[str(p) for p in options.allowed_paths],
                max_file_size=MAX_UPLOAD)
