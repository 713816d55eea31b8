"""The Edit tab: layout, and the events that stay inside it (the source picker, the version player,
the task controls and the tag helper).

    tab = build_edit_tab()                         # inside gr.Tab("Edit")
    wire_edit_tab(tab, history, outcomes, reference)

Left: what to edit, a version of this session (``history``) or an uploaded clip. Right: the task and
sub-task, Edit and Stop with the status line, and the version before (A) and after (B) side by side.
The Edit run itself is wired by ui/page.py; it takes the Clone tab's options.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from models.edit_tasks import EDIT_TASKS, TASKS_WITH_OPTION
from ui.controls import PRIVATE, QUICK, output_audio, result_panels, run_buttons
from ui.outcomes import EDIT_SOURCE_UPLOAD, EDIT_SOURCE_VERSION, Outcomes
from ui.reference import FILE_TYPES, ReferencePanel


@dataclass
class EditTab:
    """The Edit tab's components that events use."""

    edit_source: gr.Radio
    version_group: gr.Group
    version: gr.Dropdown
    version_audio: gr.Audio
    version_info: gr.Markdown
    own_group: gr.Group
    own_audio: gr.Audio
    own_file: gr.UploadButton
    own_text: gr.Textbox
    task: gr.Dropdown
    subtask: gr.Dropdown
    para_group: gr.Group
    new_text: gr.Textbox
    tag: gr.Dropdown
    edit_hint: gr.Markdown
    edit_btn: gr.Button
    edit_stop: gr.Button
    edit_status: gr.HTML
    before: gr.Audio
    edit_out: gr.Audio
    edit_manifest: gr.File
    edit_timing: gr.HTML
    edit_details: gr.JSON


def build_edit_tab() -> EditTab:
    """The Edit tab's layout (call it inside ``gr.Tab``); Edit starts disabled until there is a version."""
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
            task = gr.Dropdown(choices=tasks, value=tasks[0], label="Edit task", elem_id="edit-task")
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
            edit_btn, edit_stop, edit_status = run_buttons("edit", interactive=False)
            with gr.Row(equal_height=True):
                before = gr.Audio(
                    label="Before",
                    type="numpy",
                    interactive=False,
                    buttons=["download"],
                    elem_id="edit-before",
                )
                edit_out = output_audio("edit", "Edited speech")
            edit_manifest, edit_timing, edit_details = result_panels("edit")

    return EditTab(
        edit_source=edit_source,
        version_group=version_group,
        version=version,
        version_audio=version_audio,
        version_info=version_info,
        own_group=own_group,
        own_audio=own_audio,
        own_file=own_file,
        own_text=own_text,
        task=task,
        subtask=subtask,
        para_group=para_group,
        new_text=new_text,
        tag=tag,
        edit_hint=edit_hint,
        edit_btn=edit_btn,
        edit_stop=edit_stop,
        edit_status=edit_status,
        before=before,
        edit_out=edit_out,
        edit_manifest=edit_manifest,
        edit_timing=edit_timing,
        edit_details=edit_details,
    )


def wire_edit_tab(tab: EditTab, history: gr.State, outcomes: Outcomes, reference: ReferencePanel) -> None:
    """The Edit tab's own events; ``history``: this session's versions."""
    tab.version.change(
        outcomes.show_version,
        inputs=[tab.version, history],
        outputs=[tab.version_audio, tab.version_info],
        show_progress="hidden",
        **QUICK,
    )
    tab.edit_source.change(
        outcomes.edit_source_changed,
        inputs=[tab.edit_source, history],
        outputs=[tab.version_group, tab.own_group, tab.version, tab.edit_btn, tab.edit_hint],
        queue=False,
        **PRIVATE,
    )
    tab.own_file.upload(
        reference.clip_file, inputs=tab.own_file, outputs=tab.own_audio, show_progress="hidden", **QUICK
    )
    tab.task.change(
        _task_controls, inputs=tab.task, outputs=[tab.subtask, tab.para_group], queue=False, **PRIVATE
    )
    tab.tag.select(
        lambda t, text: (f"{(text or '').rstrip()} {t}".strip(), None),
        inputs=[tab.tag, tab.new_text],
        outputs=[tab.new_text, tab.tag],
        queue=False,
        **PRIVATE,
    )


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
