"""The Gradio page: layout and event wiring only (handlers live in ui/adapter.py, the work in models/).

    demo = build_app(engine, examples, max_text_chars=1000)      # served by server.py

Tabs: **Clone** (reference voice + text -> speech, per-stage timing, example voices) and **Edit**
(emotion, style, speed, paralinguistic, denoise, vad on any version in the session's history).
The "Prompt cache" panel shows hits, misses, size and time saved. The API names are ``/clone``
and ``/edit``.
"""

from __future__ import annotations

import gradio as gr

from demo.examples import Example
from engine import CloneEngine
from models.prompts import EDIT_TASKS, TASKS_WITH_OPTION
from ui.adapter import EDIT_SOURCE_UPLOAD, EDIT_SOURCE_VERSION, TIMING_HEADERS, EngineAdapter

GPU_QUEUE = "models"  # one concurrency group: clone, edit and reference prep share the models
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
.hint p { color: var(--body-text-color-subdued); font-size: 0.85em; margin: 0 4px; }
footer { opacity: 0.6; }
"""
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate")
TIMING_WIDTHS = ["36%", "16%", "48%"]
COUNTER_JS = "(text) => `${(text || '').length} / %d characters`"


def build_app(engine: CloneEngine, examples: list[Example], max_text_chars: int = 1000) -> gr.Blocks:
    """The whole page for ``engine``; ``examples`` are the clickable example voices."""
    adapter = EngineAdapter(engine)
    variants = engine.available_variants()
    with gr.Blocks(title="EditX Studio") as demo:
        history = gr.State([])
        gr.Markdown(INTRO)
        if engine.demo:
            gr.Markdown(DEMO_BANNER, elem_classes=["demo-banner"], elem_id="demo-banner")

        with gr.Tabs():
            with gr.Tab("Clone", id="clone"):
                target = gr.Textbox(label="Text to speak", lines=4, max_length=max_text_chars,
                                    placeholder="Type the sentence to say in this voice.",
                                    elem_id="target-text", render=False)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        ref_audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                             label="Reference voice (3 to 30 s of clear speech)",
                                             elem_id="reference-audio")
                        ref_text = gr.Textbox(
                            label="Reference text", lines=2, elem_id="reference-text",
                            placeholder="What the reference clip says. Leave empty to transcribe it "
                                        "automatically.")
                        if examples:
                            gr.Examples(
                                examples=[[str(e.path), e.reference_text, e.target_text] for e in examples],
                                inputs=[ref_audio, ref_text, target],
                                label="Example voices: click one to try it",
                                example_labels=[e.path.stem.replace("_", " ") for e in examples],
                                cache_examples=False)
                        with gr.Accordion("Prompt cache", open=False, elem_id="cache-panel"):
                            gr.Markdown("A voice used before skips the tokenizer and the vocoder's reference "
                                        "analysis, also after a restart.")
                            cache_rows = gr.Dataframe(headers=["statistic", "value"], interactive=False,
                                                      elem_id="cache-stats")
                            with gr.Row():
                                refresh_btn = gr.Button("Refresh", size="sm", elem_id="cache-refresh")
                                clear_btn = gr.Button("Clear cache", size="sm", variant="stop",
                                                      elem_id="cache-clear")
                    with gr.Column(scale=1):
                        target.render()
                        counter = gr.Markdown(f"0 / {max_text_chars} characters", elem_id="char-counter")
                        with gr.Row(equal_height=True):
                            variant = gr.Dropdown(choices=variants, value=engine.config.variant,
                                                  label="Model variant", interactive=len(variants) > 1,
                                                  scale=1)
                            seed = gr.Number(0, precision=0, label="Seed (-1: random)", scale=1)
                        with gr.Accordion("Advanced", open=False):
                            temperature = gr.Slider(0.1, 1.5, 0.7, step=0.05, label="Temperature")
                            top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p")
                            flow_steps = gr.Slider(1, 30, 10, step=1, label="Vocoder flow steps")
                        clone_btn, clone_stop, clone_out, clone_timing = _action_panel("clone",
                                                                                       "Cloned speech")

            with gr.Tab("Edit", id="edit"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        edit_source = gr.Radio([EDIT_SOURCE_VERSION, EDIT_SOURCE_UPLOAD],
                                               value=EDIT_SOURCE_VERSION, label="Edit")
                        version = gr.Dropdown(choices=[], label="History of versions",
                                              allow_custom_value=True,
                                              elem_id="version-select",
                                              info="Every clone and edit of this session; pick one to play, "
                                                   "download or edit further.")
                        version_audio = gr.Audio(label="Selected version", type="numpy", interactive=False,
                                                 buttons=["download"], elem_id="version-audio")
                        version_text = gr.Textbox(label="Its text", interactive=False)
                        with gr.Group(visible=False) as own_group:
                            own_audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                                 label="Clip to edit")
                            own_text = gr.Textbox(label="What the clip says",
                                                  placeholder="Leave empty to transcribe it automatically.")
                    with gr.Column(scale=1):
                        tasks = list(EDIT_TASKS)
                        task = gr.Dropdown(choices=tasks, value=tasks[0], label="Edit task")
                        # the engine validates the pair, so API callers may pass any task's sub-task
                        subtask = gr.Dropdown(choices=EDIT_TASKS[tasks[0]], value=EDIT_TASKS[tasks[0]][0],
                                              label="Sub-task", allow_custom_value=True)
                        with gr.Group(visible=False) as para_group:
                            new_text = gr.Textbox(label="New text with non-verbal tags", lines=2,
                                                  placeholder="e.g. That is so funny [Laughter] really.")
                            tag = gr.Dropdown(choices=EDIT_TASKS.get("paralinguistic", []), value=None,
                                              label="Insert a tag")
                        gr.Markdown("Model variant, seed and advanced settings come from the Clone tab.",
                                    elem_classes=["hint"])
                        edit_btn, edit_stop, edit_out, edit_timing = _action_panel("edit", "Edited speech")

        # ---- wiring ------------------------------------------------------------------------------
        options = [variant, seed, temperature, top_p, flow_steps]
        demo.load(adapter.cache_rows, outputs=cache_rows, api_visibility="private", queue=False)
        target.change(None, inputs=target, outputs=counter, js=COUNTER_JS % max_text_chars, queue=False)
        for event in (ref_audio.upload, ref_audio.stop_recording):
            event(adapter.prepare_reference, inputs=[ref_audio, ref_text], outputs=ref_text,
                  concurrency_id=GPU_QUEUE, api_visibility="private", show_progress="minimal")
        clone_btn.click(adapter.clone, inputs=[ref_audio, ref_text, target, *options, history],
                        outputs=[clone_out, ref_text, clone_timing, history, version, cache_rows],
                        api_name="clone", concurrency_id=GPU_QUEUE)
        edit_btn.click(adapter.edit,
                       inputs=[edit_source, version, own_audio, own_text, task, subtask, new_text, *options,
                               history],
                       outputs=[edit_out, edit_timing, history, version, cache_rows],
                       api_name="edit", concurrency_id=GPU_QUEUE)
        for stop in (clone_stop, edit_stop):
            stop.click(adapter.stop, api_visibility="private", queue=False)
        version.change(adapter.show_version, inputs=[version, history], outputs=[version_audio, version_text],
                       api_visibility="private", queue=False)
        edit_source.change(lambda s: gr.update(visible=s == EDIT_SOURCE_UPLOAD), inputs=edit_source,
                           outputs=own_group, api_visibility="private", queue=False)
        task.change(_task_controls, inputs=task, outputs=[subtask, para_group], api_visibility="private",
                    queue=False)
        tag.select(lambda t, text: (f"{(text or '').rstrip()} {t}".strip(), None), inputs=[tag, new_text],
                   outputs=[new_text, tag], api_visibility="private", queue=False)
        refresh_btn.click(adapter.cache_rows, outputs=cache_rows, api_name="cache_stats", queue=False)
        clear_btn.click(adapter.clear_cache, outputs=cache_rows, api_visibility="private", queue=False)
    return demo


def _action_panel(action: str, output_label: str) -> tuple[gr.Button, gr.Button, gr.Audio, gr.Dataframe]:
    """The run/stop buttons, output audio and timing table of one tab (elem ids ``<action>-...``)."""
    with gr.Row():
        run = gr.Button(action.title(), variant="primary", elem_id=f"{action}-button", scale=4)
        stop = gr.Button("Stop", variant="secondary", elem_id=f"{action}-stop", scale=1)
    output = gr.Audio(label=output_label, type="numpy", interactive=False, buttons=["download"],
                      elem_id=f"{action}-output")
    timing = gr.Dataframe(headers=TIMING_HEADERS, label="Time per stage", interactive=False, wrap=True,
                          elem_id=f"{action}-timing", column_widths=TIMING_WIDTHS)
    return run, stop, output, timing


def _task_controls(task: str):
    """Edit task picked -> (sub-task dropdown, paralinguistic text group) visibility and choices."""
    options = EDIT_TASKS.get(task, [])
    with_option = task in TASKS_WITH_OPTION
    return (gr.update(choices=options if with_option else [], value=options[0] if with_option else None,
                      visible=with_option),
            gr.update(visible=task == "paralinguistic"))
