"""The Gradio page: the two tabs assembled, and the events that cross them (the Clone and Edit runs).

    demo = build_app(engine, examples, max_text_chars=1000, outputs=store, gate=AdminGate(...))

Tabs: **Clone** (a library voice or a new clip + text -> speech that plays while it is made, one
progress line under the button, a per-stage timing table, the voice library and the prompt cache;
ui/clone_tab.py, ui/panels.py) and **Edit** (emotion, style, speed, paralinguistic, denoise, vad on any
version, with the version before and after side by side; ui/edit_tab.py). The API endpoints are
``/clone`` and ``/edit`` (README "Using it"); their handlers are ui/adapter.py's, what the page shows
after a run is ui/outcomes.py's.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from demo.examples import Example
from engine import CloneEngine
from outputs import OutputStore
from ui.access import AdminGate
from ui.adapter import EngineAdapter
from ui.cache_panel import CachePanel
from ui.clone_tab import CloneTab, build_clone_tab, wire_clone_tab
from ui.controls import GPU_QUEUE, PRIVATE, QUICK
from ui.edit_tab import EditTab, build_edit_tab, wire_edit_tab
from ui.manifest_file import ManifestFiles
from ui.outcomes import Outcomes
from ui.panels import wire_cache
from ui.reference import TYPED_FOR_NEXT_CLIP, ReferencePanel
from ui.reference_check import ReferenceCheck
from ui.voices import VoicePanel

PAGE_JS = (Path(__file__).with_name("live.js")).read_text(encoding="utf-8")
DEMO_BANNER = (
    "⚠️ **Demo models: untrained weights, the output is noise.** No real checkpoints were found, so "
    "the app built tiny random-weight models to show how everything works. To hear real voices, "
    "download the models with `python scripts/download_models.py --out checkpoints` (about 10 GB) "
    "and restart with `--model-dir checkpoints`."
)
INTRO = (
    "# EditX Studio\n"
    "Zero-shot voice cloning and editing with Step-Audio-EditX. Upload or record a few seconds of a "
    "voice, type a sentence, press **Clone**. Then refine the result in the **Edit** tab."
)
CSS = """
.demo-banner { background: #fff4e5; border: 1px solid #f0a030; border-radius: 8px; padding: 4px 14px; }
.demo-banner p { color: #7a4a00; margin: 6px 0; }
#char-counter p { text-align: right; color: var(--body-text-color-subdued); margin: -6px 4px 0 0;
                  font-size: 0.85em; }
#clone-button, #edit-button, #clone-stop, #edit-stop { min-height: 48px; font-size: 1.05em; }
.hint p, #reference-note p { color: var(--body-text-color-subdued); font-size: 0.9em; margin: 2px 4px; }
.run-status { min-height: 1.5em; padding: 2px 4px; color: var(--body-text-color); }
.run-status[data-state="running"], .run-status[data-state="finishing"] { color: var(--color-accent); }
.run-status[data-state="error"] { color: var(--error-text-color, #b91c1c); }
[data-live="1"] { opacity: 0.55; pointer-events: none; }
.timing-table { width: 100%; border-collapse: collapse; font-size: 0.9em; }
.timing-table th, .timing-table td { padding: 3px 6px; border-bottom: 1px solid var(--border-color-primary);
                                     text-align: left; vertical-align: top; }
.timing-table .seconds { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.timing-table caption { text-align: left; font-weight: 600; padding: 2px 6px; }
.timing-table .stage { min-width: 6em; }
.timing-table .detail { overflow-wrap: anywhere; color: var(--body-text-color-subdued); }
footer .divider { display: none; }
footer { opacity: 0.6; }
"""
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate")
CLONE_API = (
    "Speak `text` in a voice: a library voice id (`voice`, see GET /v1/voices), or a new one "
    "from `reference_audio` (+ what it says in `reference_text`; empty: transcribed). Returns the "
    "speech (WAV, 24 kHz) and a details JSON: version_id (edit it with /edit or POST "
    "/v1/audio/edits), text, seed, timings, chunks, warnings. While running, submit() jobs see "
    "each audio piece as it is made. In bash, get the event id with EVENT_ID=$(curl ... | awk "
    "-F'\"' '{print $4}') before the GET: see the README."
)
EDIT_API = (
    "Edit a version by its id (`version`: the details' version_id, or an X-Output-Id of the REST "
    "API), or, with `version` empty, an uploaded `clip` whose words are `clip_text`. Returns the "
    "edited speech and a details JSON like /clone's."
)


def build_app(
    engine: CloneEngine,
    examples: list[Example],
    max_text_chars: int = 1000,
    outputs: OutputStore | None = None,
    gate: AdminGate | None = None,
) -> gr.Blocks:
    """The whole page for ``engine``; ``outputs`` is the store shared with the REST API, ``gate`` the
    admin check of destructive actions; ``examples`` are the clickable example voices."""
    adapter = EngineAdapter(engine, outputs, gate)
    reference = ReferencePanel(engine, adapter.files)
    clip_check = ReferenceCheck(engine, adapter.files)
    manifests = ManifestFiles(adapter.outputs, adapter.files)
    voices = VoicePanel(engine, adapter.gate, adapter.files)
    cache = CachePanel(engine, adapter.gate)
    outcomes = Outcomes(adapter.outputs, cache.cache_rows)
    with gr.Blocks(title="EditX Studio", delete_cache=(3600, 3600)) as demo:
        history = gr.State([])  # this session's versions: small records, the audio is in ``outputs``
        text_owner = gr.State(TYPED_FOR_NEXT_CLIP)  # which clip the reference text was typed for
        upload = gr.State(None)  # the encode the current clip got at upload (for the timing table)
        gr.Markdown(INTRO)
        gr.Markdown(model_line(engine), elem_id="model-info", elem_classes=["hint"])
        if engine.demo:
            gr.Markdown(DEMO_BANNER, elem_classes=["demo-banner"], elem_id="demo-banner")
        with gr.Tabs():
            with gr.Tab("Clone", id="clone"):
                clone = build_clone_tab(engine, examples, max_text_chars, adapter.gate.asks_for_key)
            with gr.Tab("Edit", id="edit"):
                edit = build_edit_tab()

        demo.load(cache.cache_rows, outputs=clone.cache.cache_rows, queue=False, **PRIVATE)
        demo.load(voices.choices, outputs=clone.voice, queue=False, **PRIVATE)
        demo.load(voices.library_rows, outputs=clone.library.library, queue=False, **PRIVATE)
        wire_clone_tab(clone, text_owner, upload, reference, clip_check, voices, max_text_chars)
        _wire_runs(clone, edit, history, upload, adapter, outcomes, manifests)
        wire_edit_tab(edit, history, outcomes, reference)
        wire_cache(clone.cache, cache)
    return demo


def _wire_runs(
    clone: CloneTab,
    edit: EditTab,
    history: gr.State,
    upload: gr.State,
    adapter: EngineAdapter,
    outcomes: Outcomes,
    manifests: ManifestFiles,
) -> None:
    """The /clone and /edit endpoints and Stop: audio plays while it is made (ui/live.js), one status
    line under each button; a finished run adds a version to ``history`` and enables Edit."""
    c, e, options = clone, edit, clone.options  # the Edit tab takes the Clone tab's options
    # clone: the speech, a new version, the timing table and the provenance file
    c.clone_btn.click(None, js="() => { editxLive.arm('clone'); }", queue=False)
    cloning = c.clone_btn.click(
        adapter.clone,
        inputs=[c.target, c.voice, c.ref_audio, c.ref_text, *options],
        outputs=[c.clone_out, c.clone_details],
        validator=adapter.check_clone,
        api_name="clone",
        api_description=CLONE_API,
        concurrency_id=GPU_QUEUE,
        show_progress="minimal",
        show_progress_on=[c.clone_status],
    )
    cloning.success(
        outcomes.clone_finished,
        inputs=[c.clone_details, history, c.voice, c.ref_audio, upload, e.edit_source],
        outputs=[
            c.clone_status,
            c.clone_timing,
            history,
            e.version,
            c.cache.cache_rows,
            e.edit_btn,
            e.edit_hint,
        ],
        show_progress="hidden",
        **QUICK,
    )
    cloning.success(
        manifests.for_details,
        inputs=c.clone_details,
        outputs=c.clone_manifest,
        show_progress="hidden",
        **QUICK,
    )
    cloning.failure(None, js="() => { editxLive.failed('clone'); }", queue=False)
    c.clone_details.change(
        None,
        inputs=[c.clone_out, c.clone_details],
        queue=False,
        js="(audio, details) => { editxLive.update('clone', audio, details); }",
    )

    # edit: the version before (A) and after (B) side by side
    e.edit_btn.click(None, js="() => { editxLive.arm('edit'); }", queue=False)
    editing = e.edit_btn.click(
        adapter.edit,
        inputs=[e.version, e.own_audio, e.own_text, e.task, e.subtask, e.new_text, *options],
        outputs=[e.edit_out, e.edit_details],
        validator=adapter.check_edit,
        api_name="edit",
        api_description=EDIT_API,
        concurrency_id=GPU_QUEUE,
        show_progress="minimal",
        show_progress_on=[e.edit_status],
    )
    editing.success(
        outcomes.edit_finished,
        inputs=[e.edit_details, history, e.own_audio],
        outputs=[e.edit_status, e.edit_timing, history, e.version, e.before, c.cache.cache_rows],
        show_progress="hidden",
        **QUICK,
    )
    editing.success(
        manifests.for_details, inputs=e.edit_details, outputs=e.edit_manifest, show_progress="hidden", **QUICK
    )
    editing.failure(None, js="() => { editxLive.failed('edit'); }", queue=False)
    e.edit_details.change(
        None,
        inputs=[e.edit_out, e.edit_details],
        queue=False,
        js="(audio, details) => { editxLive.update('edit', audio, details); }",
    )
    for name, stop in (("clone", c.clone_stop), ("edit", e.edit_stop)):
        stop.click(adapter.stop, js=f"() => {{ editxLive.stop('{name}'); return []; }}", **QUICK)


def model_line(engine: CloneEngine) -> str:
    """The model info line: the default variant, the LLM backend ("native" or "vllm") and, for the
    native one, how it decodes (dynamic, static or CUDA graphs)."""
    demo = " · demo models (random weights)" if engine.demo else ""
    decode = engine.llms.decode()
    decode = f" ({decode} decoding)" if decode != engine.config.llm_backend else ""
    return (
        f"Model: Step-Audio-EditX · variant **{engine.config.variant}** · LLM backend "
        f"**{engine.config.llm_backend}**{decode}{demo}"
    )
