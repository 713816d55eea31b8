"""The Gradio page: layout and event wiring only (handlers live in ui/adapter.py and ui/voices.py).

    demo = build_app(engine, examples, max_text_chars=1000, outputs=store, gate=AdminGate(...))

Tabs: **Clone** (a library voice or a new clip + text -> speech that plays while it is made, one
progress line under the button, a per-stage timing table, the voice library and the prompt cache)
and **Edit** (emotion, style, speed, paralinguistic, denoise, vad on any version, with the version
before and after side by side). The API endpoints are ``/clone`` and ``/edit`` (README "Using it").
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from demo.examples import Example
from engine import CloneEngine
from models.edit_tasks import EDIT_TASKS, TASKS_WITH_OPTION
from outputs import OutputStore
from synthesis import MAX_BEST_OF
from ui.access import AdminGate
from ui.adapter import CANCELLED, EDIT_SOURCE_UPLOAD, EDIT_SOURCE_VERSION, EngineAdapter, status_html
from ui.manifest_file import ManifestFiles
from ui.reference import FILE_TYPES, NEW_VOICE, TYPED_FOR_NEXT_CLIP, ReferencePanel
from ui.reference_check import FIXES, ReferenceCheck
from ui.tags import TAG_CHOICES, insert_tag
from ui.voices import NEW_VOICE_LABEL, VoicePanel

GPU_QUEUE = "models"  # one concurrency group: clone, edit, reference prep and saving voices share the models
PAGE_QUEUE = "page"  # quick page updates and Stop: never wait behind a running clone
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
MANIFEST_LABEL = "Provenance: JSON manifest (the WAV carries it in its comment)"
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate")
COUNTER_JS = "(text) => `${(text || '').length} / %d characters`"
# Destructive buttons ask in the browser first; "No" sends CANCELLED instead of the key, and the handler
# then does nothing (throwing in the script instead would paint an error badge on the panel).
CONFIRM_CLEAR_JS = (
    "(key) => window.confirm('Clear the prompt cache? Every cached voice is encoded again on "
    "its next use, and the counters start from zero. Library voices are kept.') ? key : "
    f"'{CANCELLED}'"
)
CONFIRM_DELETE_JS = (
    "(voice, key) => window.confirm('Delete this voice from the library? This cannot be "
    f"undone.') ? [voice, key] : [voice, '{CANCELLED}']"
)
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
    variants = engine.available_variants()
    asks_key = adapter.gate.asks_for_key
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
                target = gr.Textbox(
                    label="Text to speak",
                    lines=4,
                    max_length=max_text_chars,
                    placeholder="Type the sentence to say in this voice.",
                    elem_id="target-text",
                    render=False,
                )
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        voice = gr.Dropdown(
                            choices=[(NEW_VOICE_LABEL, NEW_VOICE)],
                            value=NEW_VOICE,
                            label="Voice",
                            elem_id="voice-select",
                            allow_custom_value=True,
                            info="A voice from the library, or a new one from a clip.",
                        )
                        max_ref = engine.config.max_reference_seconds
                        ref_audio = gr.Audio(
                            sources=["upload", "microphone"],
                            type="filepath",
                            label=f"Reference clip (3–{max_ref:g} s)",
                            elem_id="reference-audio",
                        )
                        ref_file = gr.UploadButton(
                            "Upload any audio or video file (WebM, MP4, M4A…)",
                            file_types=FILE_TYPES,
                            size="sm",
                            variant="secondary",
                            elem_id="reference-file",
                        )
                        ref_note = gr.Markdown(elem_id="reference-note")
                        ref_check = gr.Markdown(elem_id="reference-check", elem_classes=["hint"])
                        with gr.Row():
                            fix_buttons = {
                                fix: gr.Button(label, size="sm", visible=False, elem_id=f"reference-{fix}")
                                for fix, label in FIXES.items()
                            }
                        ref_text = gr.Textbox(
                            "",
                            label="Reference text",
                            lines=2,
                            elem_id="reference-text",
                            placeholder="What the reference clip says. Leave empty to transcribe it "
                            "automatically.",
                        )
                        with gr.Row(equal_height=True):
                            voice_name = gr.Textbox(
                                label="Voice name",
                                scale=3,
                                elem_id="voice-name",
                                placeholder="Name to keep this clip as a library voice",
                            )
                            save_voice = gr.Button("Save voice", scale=1, elem_id="voice-save")
                        if examples:
                            example_set = gr.Examples(
                                examples=[[str(e.path), e.reference_text, e.target_text] for e in examples],
                                inputs=[ref_audio, ref_text, target],
                                label="Example voices: click one to try it",
                                example_labels=[e.path.stem.replace("_", " ") for e in examples],
                                cache_examples=False,
                                api_visibility="private",
                            )
                        with gr.Accordion("Voice library", open=False, elem_id="library-panel"):
                            gr.Markdown(
                                "Pick a voice in **Voice** above to hear its clip in the reference "
                                "player; rename or delete it here.",
                                elem_classes=["hint"],
                            )
                            library = gr.Dataframe(
                                headers=["name", "id", "text"], interactive=False, elem_id="library-list"
                            )
                            new_name = gr.Textbox(
                                label="New name for the picked voice", elem_id="voice-new-name"
                            )
                            voice_key = gr.Textbox(
                                label="Admin key (this server is open to the network)",
                                type="password",
                                visible=asks_key,
                                elem_id="voice-admin-key",
                            )
                            with gr.Row():
                                rename_voice = gr.Button("Rename", size="sm", elem_id="voice-rename")
                                delete_voice = gr.Button(
                                    "Delete", size="sm", variant="stop", elem_id="voice-delete"
                                )
                        with gr.Accordion("Prompt cache", open=False, elem_id="cache-panel"):
                            gr.Markdown(
                                "A voice used before skips the tokenizer and the vocoder's reference "
                                "analysis, also after a restart.",
                                elem_classes=["hint"],
                            )
                            cache_rows = gr.Dataframe(
                                headers=["statistic", "value"],
                                interactive=False,
                                label="Prompt cache statistics",
                                show_label=False,
                                elem_id="cache-stats",
                            )
                            cache_key = gr.Textbox(
                                label="Admin key (this server is open to the network)",
                                type="password",
                                visible=asks_key,
                                elem_id="cache-admin-key",
                            )
                            with gr.Row():
                                refresh_btn = gr.Button("Refresh", size="sm", elem_id="cache-refresh")
                                clear_btn = gr.Button(
                                    "Clear cache", size="sm", variant="stop", elem_id="cache-clear"
                                )
                    with gr.Column(scale=1):
                        target.render()
                        counter = gr.Markdown(f"0 / {max_text_chars} characters", elem_id="char-counter")
                        clone_tag = gr.Dropdown(
                            choices=TAG_CHOICES,
                            value=None,
                            label="Insert a tag",
                            elem_id="clone-tag",
                            info="A sound such as [Laughter] at the end, or the "
                            "language or dialect of the whole text first.",
                        )
                        with gr.Row(equal_height=True):
                            variant = gr.Dropdown(
                                choices=variants,
                                value=engine.config.variant,
                                label="Model variant",
                                interactive=len(variants) > 1,
                                scale=1,
                            )
                            seed = gr.Number(
                                0, precision=0, label="Seed (-1: random)", scale=1, elem_id="seed"
                            )
                        best_of = gr.Slider(
                            1,
                            MAX_BEST_OF,
                            1,
                            step=1,
                            elem_id="best-of",
                            label="Try up to N takes, keep the best",
                            interactive=engine.scorer is not None,
                            info="Each text chunk is made up to N times and the take "
                            "with the best scores is kept (slower).",
                        )
                        with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                            temperature = gr.Slider(0.1, 1.5, 0.7, step=0.05, label="Temperature")
                            top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p")
                            flow_steps = gr.Slider(1, 30, 10, step=1, label="Vocoder flow steps")
                            max_new = gr.Number(
                                0,
                                precision=0,
                                minimum=0,
                                elem_id="max-new-tokens",
                                label="Max new tokens per text chunk (0: no cap)",
                            )
                        clone_btn, clone_stop, clone_status = _run_buttons("clone")
                        clone_out = gr.Audio(
                            label="Speech",
                            type="filepath",
                            interactive=False,
                            buttons=["download"],
                            elem_id="clone-output",
                        )
                        clone_manifest = gr.File(
                            label=MANIFEST_LABEL, interactive=False, elem_id="clone-manifest"
                        )
                        clone_timing = gr.HTML(label="Time per stage", elem_id="clone-timing")
                        with gr.Accordion("Details (as the API returns them)", open=False):
                            clone_details = gr.JSON(label="Details", elem_id="clone-details")

            with gr.Tab("Edit", id="edit"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        edit_source = gr.Radio(
                            [EDIT_SOURCE_VERSION, EDIT_SOURCE_UPLOAD],
                            value=EDIT_SOURCE_VERSION,
                            label="Edit",
                            elem_id="edit-source",
                        )
                        with gr.Group() as version_group:
                            version = gr.Dropdown(
                                choices=[],
                                value=None,
                                label="Version",
                                allow_custom_value=True,
                                elem_id="version-select",
                                info="Every clone and edit of this session, newest first.",
                            )
                            version_audio = gr.Audio(
                                label="Selected version",
                                type="numpy",
                                interactive=False,
                                buttons=["download"],
                                elem_id="version-audio",
                            )
                            version_info = gr.Markdown(elem_id="version-info")
                        with gr.Group(visible=False) as own_group:
                            own_audio = gr.Audio(
                                sources=["upload", "microphone"],
                                type="filepath",
                                label="Clip to edit",
                                elem_id="edit-clip",
                            )
                            own_file = gr.UploadButton(
                                "Upload any audio or video file",
                                size="sm",
                                file_types=FILE_TYPES,
                                elem_id="edit-clip-file",
                            )
                            own_text = gr.Textbox(
                                "",
                                label="What the clip says",
                                elem_id="edit-clip-text",
                                placeholder="Leave empty to transcribe it automatically.",
                            )
                    with gr.Column(scale=1):
                        tasks = list(EDIT_TASKS)
                        task = gr.Dropdown(
                            choices=tasks, value=tasks[0], label="Edit task", elem_id="edit-task"
                        )
                        # the engine validates the pair, so API callers may pass any task's sub-task
                        subtask = gr.Dropdown(
                            choices=EDIT_TASKS[tasks[0]],
                            value=EDIT_TASKS[tasks[0]][0],
                            label="Sub-task",
                            allow_custom_value=True,
                            elem_id="edit-subtask",
                        )
                        with gr.Group(visible=False) as para_group:
                            new_text = gr.Textbox(
                                "",
                                label="New text with non-verbal tags",
                                lines=2,
                                placeholder="e.g. That is so funny [Laughter] really.",
                            )
                            tag = gr.Dropdown(
                                choices=EDIT_TASKS.get("paralinguistic", []), value=None, label="Insert a tag"
                            )
                        gr.Markdown(
                            "Model variant, seed and advanced settings come from the Clone tab.",
                            elem_classes=["hint"],
                        )
                        edit_hint = gr.Markdown(
                            f"Clone something first, or choose '{EDIT_SOURCE_UPLOAD}' and upload a clip.",
                            elem_classes=["hint"],
                            elem_id="edit-hint",
                        )
                        edit_btn, edit_stop, edit_status = _run_buttons("edit", interactive=False)
                        with gr.Row(equal_height=True):
                            before = gr.Audio(
                                label="Before",
                                type="numpy",
                                interactive=False,
                                buttons=["download"],
                                elem_id="edit-before",
                            )
                            edit_out = gr.Audio(
                                label="Edited speech",
                                type="filepath",
                                interactive=False,
                                buttons=["download"],
                                elem_id="edit-output",
                            )
                        edit_manifest = gr.File(
                            label=MANIFEST_LABEL, interactive=False, elem_id="edit-manifest"
                        )
                        edit_timing = gr.HTML(label="Time per stage", elem_id="edit-timing")
                        with gr.Accordion("Details (as the API returns them)", open=False):
                            edit_details = gr.JSON(label="Details", elem_id="edit-details")

        # ---- wiring ------------------------------------------------------------------------------
        private = {"api_visibility": "private"}
        quick = {"api_visibility": "private", "concurrency_limit": None, "concurrency_id": PAGE_QUEUE}
        options = [variant, seed, temperature, top_p, flow_steps, max_new, best_of]
        demo.load(adapter.cache_rows, outputs=cache_rows, queue=False, **private)
        demo.load(voices.choices, outputs=voice, queue=False, **private)
        demo.load(voices.library_rows, outputs=library, queue=False, **private)
        target.change(None, inputs=target, outputs=counter, js=COUNTER_JS % max_text_chars, queue=False)

        # the reference: a new clip never keeps a text typed for another one
        # then the clip check (ui/reference_check.py) next to it, with its one-click fixes
        prepare = {
            "fn": reference.prepare_reference,
            "inputs": [ref_audio, ref_text, text_owner],
            "outputs": [ref_text, ref_note, text_owner, upload, voice],
            "concurrency_id": GPU_QUEUE,
            "show_progress": "minimal",
            "show_progress_on": [ref_note],
            **private,
        }
        check = {
            "fn": clip_check.check,
            "inputs": [ref_audio, ref_text, voice],
            "outputs": [ref_check, *fix_buttons.values()],
            "concurrency_id": GPU_QUEUE,
            "show_progress": "minimal",
            "show_progress_on": [ref_check],
            **private,
        }
        for event in (ref_audio.upload, ref_audio.stop_recording):
            event(**prepare).success(**check)
        ref_file.upload(
            reference.take_file,
            inputs=[ref_file, ref_text, text_owner],
            outputs=[ref_audio, ref_text, ref_note, text_owner, upload, voice],
            concurrency_id=GPU_QUEUE,
            show_progress="minimal",
            show_progress_on=[ref_note],
            **private,
        ).success(**check)
        for fix, button in fix_buttons.items():
            button.click(
                partial(clip_check.fix, fix),
                inputs=[ref_audio, ref_text, *options],
                outputs=[ref_audio, text_owner],
                concurrency_id=GPU_QUEUE,
                show_progress="minimal",
                show_progress_on=[ref_check],
                **private,
            ).success(**prepare).success(**check)
        ref_audio.clear(
            lambda: ("", None, "", gr.update(visible=False), gr.update(visible=False)),
            outputs=[ref_note, upload, ref_check, *fix_buttons.values()],
            queue=False,
            **private,
        )
        ref_text.input(
            reference.text_typed,
            inputs=[ref_text, ref_audio],
            outputs=text_owner,
            queue=False,
            show_progress="hidden",
            trigger_mode="always_last",
            **private,
        )
        if examples:
            example_set.load_input_event.then(
                reference.example_picked,
                inputs=ref_audio,
                outputs=[text_owner, voice, ref_note, ref_text, upload],
                queue=False,
                show_progress="hidden",
                **private,
            ).success(**check)

        # the voice library
        voice.input(
            voices.picked,
            inputs=voice,
            outputs=[ref_audio, ref_text, text_owner, new_name, ref_note],
            show_progress="hidden",
            **quick,
        ).success(**check)
        save_voice.click(
            voices.save,
            inputs=[voice_name, ref_audio, ref_text, voice],
            outputs=[voice, library, ref_text, text_owner, ref_note],
            concurrency_id=GPU_QUEUE,
            show_progress_on=[ref_note],
            **private,
        )
        rename_voice.click(voices.rename, inputs=[voice, new_name], outputs=[voice, library], **quick)
        delete_voice.click(
            voices.delete,
            inputs=[voice, voice_key],
            outputs=[voice, library, ref_text, ref_note],
            js=CONFIRM_DELETE_JS,
            api_name="delete_voice",
            api_visibility="undocumented",
            concurrency_limit=None,
            concurrency_id=PAGE_QUEUE,
        )

        # clone: audio plays while it is made (ui/live.js), one status line under the button
        clone_btn.click(None, js="() => { editxLive.arm('clone'); }", queue=False)
        cloning = clone_btn.click(
            adapter.clone,
            inputs=[target, voice, ref_audio, ref_text, *options],
            outputs=[clone_out, clone_details],
            validator=adapter.check_clone,
            api_name="clone",
            api_description=CLONE_API,
            concurrency_id=GPU_QUEUE,
            show_progress="minimal",
            show_progress_on=[clone_status],
        )
        cloning.success(
            adapter.clone_finished,
            inputs=[clone_details, history, voice, ref_audio, upload, edit_source],
            outputs=[clone_status, clone_timing, history, version, cache_rows, edit_btn, edit_hint],
            show_progress="hidden",
            **quick,
        )
        cloning.success(
            manifests.for_details,
            inputs=clone_details,
            outputs=clone_manifest,
            show_progress="hidden",
            **quick,
        )
        cloning.failure(None, js="() => { editxLive.failed('clone'); }", queue=False)
        clone_details.change(
            None,
            inputs=[clone_out, clone_details],
            queue=False,
            js="(audio, details) => { editxLive.update('clone', audio, details); }",
        )

        # edit: the version before (A) and after (B) side by side
        edit_btn.click(None, js="() => { editxLive.arm('edit'); }", queue=False)
        editing = edit_btn.click(
            adapter.edit,
            inputs=[version, own_audio, own_text, task, subtask, new_text, *options],
            outputs=[edit_out, edit_details],
            validator=adapter.check_edit,
            api_name="edit",
            api_description=EDIT_API,
            concurrency_id=GPU_QUEUE,
            show_progress="minimal",
            show_progress_on=[edit_status],
        )
        editing.success(
            adapter.edit_finished,
            inputs=[edit_details, history, own_audio],
            outputs=[edit_status, edit_timing, history, version, before, cache_rows],
            show_progress="hidden",
            **quick,
        )
        editing.success(
            manifests.for_details, inputs=edit_details, outputs=edit_manifest, show_progress="hidden", **quick
        )
        editing.failure(None, js="() => { editxLive.failed('edit'); }", queue=False)
        edit_details.change(
            None,
            inputs=[edit_out, edit_details],
            queue=False,
            js="(audio, details) => { editxLive.update('edit', audio, details); }",
        )
        for name, stop in (("clone", clone_stop), ("edit", edit_stop)):
            stop.click(adapter.stop, js=f"() => {{ editxLive.stop('{name}'); return []; }}", **quick)

        version.change(
            adapter.show_version,
            inputs=[version, history],
            outputs=[version_audio, version_info],
            show_progress="hidden",
            **quick,
        )
        edit_source.change(
            adapter.edit_source_changed,
            inputs=[edit_source, history],
            outputs=[version_group, own_group, version, edit_btn, edit_hint],
            queue=False,
            **private,
        )
        own_file.upload(
            reference.clip_file, inputs=own_file, outputs=own_audio, show_progress="hidden", **quick
        )
        task.change(_task_controls, inputs=task, outputs=[subtask, para_group], queue=False, **private)
        clone_tag.select(
            lambda t, text: (insert_tag(t, text), None),
            inputs=[clone_tag, target],
            outputs=[target, clone_tag],
            queue=False,
            **private,
        )
        tag.select(
            lambda t, text: (f"{(text or '').rstrip()} {t}".strip(), None),
            inputs=[tag, new_text],
            outputs=[new_text, tag],
            queue=False,
            **private,
        )

        # the prompt cache: clearing asks first, and off loopback needs the admin key (checked server side)
        refresh_btn.click(adapter.cache_rows, outputs=cache_rows, api_name="cache_stats", queue=False)
        clear_btn.click(
            adapter.clear_cache,
            inputs=cache_key,
            outputs=cache_rows,
            js=CONFIRM_CLEAR_JS,
            api_name="clear_cache",
            api_visibility="undocumented",
            concurrency_limit=None,
            concurrency_id=PAGE_QUEUE,
        )
    return demo


def model_line(engine: CloneEngine) -> str:
    """The model info line: the default variant and the LLM backend ("native" or "vllm")."""
    demo = " · demo models (random weights)" if engine.demo else ""
    return (
        f"Model: Step-Audio-EditX · variant **{engine.config.variant}** · LLM backend "
        f"**{engine.config.llm_backend}**{demo}"
    )


def _run_buttons(action: str, interactive: bool = True) -> tuple[gr.Button, gr.Button, gr.HTML]:
    """The run and Stop buttons of one tab and the status line under them (elem ids ``<action>-...``)."""
    with gr.Row():
        run = gr.Button(
            action.title(), variant="primary", elem_id=f"{action}-button", scale=4, interactive=interactive
        )
        stop = gr.Button("Stop", variant="secondary", elem_id=f"{action}-stop", scale=1)
    status = gr.HTML(status_html("Ready."), elem_id=f"{action}-status")
    return run, stop, status


def _task_controls(task: str):
    """Edit task picked -> (sub-task dropdown, paralinguistic text group) visibility and choices."""
    options = EDIT_TASKS.get(task, [])
    with_option = task in TASKS_WITH_OPTION
    return (
        gr.update(
            choices=options if with_option else [],
            value=options[0] if with_option else None,
            visible=with_option,
        ),
        gr.update(visible=task == "paralinguistic"),
    )
