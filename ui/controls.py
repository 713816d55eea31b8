"""What both tabs share: the run and Stop buttons with their status line, and how events queue.

run, stop, status = run_buttons("clone")            # elem ids clone-button, clone-stop, clone-status
button.click(handler, ..., concurrency_id=GPU_QUEUE, **PRIVATE)
field.change(handler, ..., **QUICK)                 # never waits behind a running clone
"""

from __future__ import annotations

import gradio as gr

from ui.values import status_html

GPU_QUEUE = "models"  # one concurrency group: clone, edit, reference prep and saving voices share the models
PAGE_QUEUE = "page"  # quick page updates and Stop: never wait behind a running clone
PRIVATE = {"api_visibility": "private"}  # page-only events: not in the API docs
QUICK = {"api_visibility": "private", "concurrency_limit": None, "concurrency_id": PAGE_QUEUE}
MANIFEST_LABEL = "Provenance: JSON manifest (the WAV carries it in its comment)"


def run_buttons(action: str, interactive: bool = True) -> tuple[gr.Button, gr.Button, gr.HTML]:
    """The run and Stop buttons of one tab and the status line under them (elem ids ``<action>-...``)."""
    with gr.Row():
        run = gr.Button(
            action.title(), variant="primary", elem_id=f"{action}-button", scale=4, interactive=interactive
        )
        stop = gr.Button("Stop", variant="secondary", elem_id=f"{action}-stop", scale=1)
    status = gr.HTML(status_html("Ready."), elem_id=f"{action}-status")
    return run, stop, status


def output_audio(action: str, label: str) -> gr.Audio:
    """A tab's result player (downloadable; elem id ``<action>-output``)."""
    return gr.Audio(
        label=label, type="filepath", interactive=False, buttons=["download"], elem_id=f"{action}-output"
    )


def result_panels(action: str) -> tuple[gr.File, gr.HTML, gr.JSON]:
    """What follows a tab's result: the provenance file, the timing table and the API's details
    (elem ids ``<action>-manifest``, ``<action>-timing``, ``<action>-details``)."""
    manifest = gr.File(label=MANIFEST_LABEL, interactive=False, elem_id=f"{action}-manifest")
    timing = gr.HTML(label="Time per stage", elem_id=f"{action}-timing")
    with gr.Accordion("Details (as the API returns them)", open=False):
        details = gr.JSON(label="Details", elem_id=f"{action}-details")
    return manifest, timing, details
