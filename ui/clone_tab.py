"""The Clone tab: layout, and the events that stay inside it (the reference clip, its check and fixes,
picking and saving library voices, the character counter and the tag helper).

    tab = build_clone_tab(engine, examples, max_text_chars, asks_key)   # inside gr.Tab("Clone")
    wire_clone_tab(tab, text_owner, upload, reference, clip_check, voices, max_text_chars)

Left: a library voice or a new clip (+ what it says), the voice library and prompt cache panels
(ui/panels.py). Right: the text, the options (``tab.options``, which the Edit tab uses too), Clone and
Stop with the status line, and the result. The Clone run itself is wired by ui/page.py (it updates the
Edit tab and the session's history).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import gradio as gr

from demo.examples import Example
from engine import CloneEngine
from synthesis import MAX_BEST_OF
from ui.controls import GPU_QUEUE, PRIVATE, QUICK, output_audio, result_panels, run_buttons
from ui.panels import CacheView, LibraryView, cache_view, library_view, wire_library
from ui.reference import FILE_TYPES, NEW_VOICE, ReferencePanel
from ui.reference_check import FIXES, ReferenceCheck
from ui.tags import TAG_CHOICES, insert_tag
from ui.voices import NEW_VOICE_LABEL, VoicePanel

COUNTER_JS = "(text) => `${(text || '').length} / %d characters`"


@dataclass
class CloneTab:
    """The Clone tab's components that events use."""

    target: gr.Textbox
    counter: gr.Markdown
    voice: gr.Dropdown
    ref_audio: gr.Audio
    ref_file: gr.UploadButton
    ref_note: gr.Markdown
    ref_check: gr.Markdown
    fix_buttons: dict[str, gr.Button]
    ref_text: gr.Textbox
    voice_name: gr.Textbox
    save_voice: gr.Button
    example_set: gr.Examples | None
    library: LibraryView
    cache: CacheView
    clone_tag: gr.Dropdown
    variant: gr.Dropdown
    seed: gr.Number
    best_of: gr.Slider
    temperature: gr.Slider
    top_p: gr.Slider
    flow_steps: gr.Slider
    max_new: gr.Number
    clone_btn: gr.Button
    clone_stop: gr.Button
    clone_status: gr.HTML
    clone_out: gr.Audio
    clone_manifest: gr.File
    clone_timing: gr.HTML
    clone_details: gr.JSON

    @property
    def options(self) -> list:
        """The synthesis options, in the order /clone and /edit take them."""
        return [
            self.variant,
            self.seed,
            self.temperature,
            self.top_p,
            self.flow_steps,
            self.max_new,
            self.best_of,
        ]


def build_clone_tab(
    engine: CloneEngine, examples: list[Example], max_text_chars: int, asks_key: bool
) -> CloneTab:
    """The Clone tab's layout (call it inside ``gr.Tab``); ``asks_key``: show the admin key fields."""
    variants = engine.available_variants()
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
                placeholder="What the reference clip says. Leave empty to transcribe it automatically.",
            )
            with gr.Row(equal_height=True):
                voice_name = gr.Textbox(
                    label="Voice name",
                    scale=3,
                    elem_id="voice-name",
                    placeholder="Name to keep this clip as a library voice",
                )
                save_voice = gr.Button("Save voice", scale=1, elem_id="voice-save")
            example_set = None
            if examples:
                example_set = gr.Examples(
                    examples=[[str(e.path), e.reference_text, e.target_text] for e in examples],
                    inputs=[ref_audio, ref_text, target],
                    label="Example voices: click one to try it",
                    example_labels=[e.path.stem.replace("_", " ") for e in examples],
                    cache_examples=False,
                    api_visibility="private",
                )
            library = library_view(asks_key)
            cache = cache_view(asks_key)
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
                seed = gr.Number(0, precision=0, label="Seed (-1: random)", scale=1, elem_id="seed")
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
            clone_btn, clone_stop, clone_status = run_buttons("clone")
            clone_out = output_audio("clone", "Speech")
            clone_manifest, clone_timing, clone_details = result_panels("clone")

    return CloneTab(
        target=target,
        counter=counter,
        voice=voice,
        ref_audio=ref_audio,
        ref_file=ref_file,
        ref_note=ref_note,
        ref_check=ref_check,
        fix_buttons=fix_buttons,
        ref_text=ref_text,
        voice_name=voice_name,
        save_voice=save_voice,
        example_set=example_set,
        library=library,
        cache=cache,
        clone_tag=clone_tag,
        variant=variant,
        seed=seed,
        best_of=best_of,
        temperature=temperature,
        top_p=top_p,
        flow_steps=flow_steps,
        max_new=max_new,
        clone_btn=clone_btn,
        clone_stop=clone_stop,
        clone_status=clone_status,
        clone_out=clone_out,
        clone_manifest=clone_manifest,
        clone_timing=clone_timing,
        clone_details=clone_details,
    )


def wire_clone_tab(
    tab: CloneTab,
    text_owner: gr.State,
    upload: gr.State,
    reference: ReferencePanel,
    clip_check: ReferenceCheck,
    voices: VoicePanel,
    max_text_chars: int,
) -> None:
    """The Clone tab's own events; ``text_owner``: which clip the reference text was typed for,
    ``upload``: the encode the current clip got at upload (for the timing table)."""
    tab.target.change(
        None, inputs=tab.target, outputs=tab.counter, js=COUNTER_JS % max_text_chars, queue=False
    )

    # the reference: a new clip never keeps a text typed for another one
    # then the clip check (ui/reference_check.py) next to it, with its one-click fixes
    prepare = {
        "fn": reference.prepare_reference,
        "inputs": [tab.ref_audio, tab.ref_text, text_owner],
        "outputs": [tab.ref_text, tab.ref_note, text_owner, upload, tab.voice],
        "concurrency_id": GPU_QUEUE,
        "show_progress": "minimal",
        "show_progress_on": [tab.ref_note],
        **PRIVATE,
    }
    check = {
        "fn": clip_check.check,
        "inputs": [tab.ref_audio, tab.ref_text, tab.voice],
        "outputs": [tab.ref_check, *tab.fix_buttons.values()],
        "concurrency_id": GPU_QUEUE,
        "show_progress": "minimal",
        "show_progress_on": [tab.ref_check],
        **PRIVATE,
    }
    for event in (tab.ref_audio.upload, tab.ref_audio.stop_recording):
        event(**prepare).success(**check)
    tab.ref_file.upload(
        reference.take_file,
        inputs=[tab.ref_file, tab.ref_text, text_owner],
        outputs=[tab.ref_audio, tab.ref_text, tab.ref_note, text_owner, upload, tab.voice],
        concurrency_id=GPU_QUEUE,
        show_progress="minimal",
        show_progress_on=[tab.ref_note],
        **PRIVATE,
    ).success(**check)
    for fix, button in tab.fix_buttons.items():
        button.click(
            partial(clip_check.fix, fix),
            inputs=[tab.ref_audio, tab.ref_text, *tab.options],
            outputs=[tab.ref_audio, text_owner],
            concurrency_id=GPU_QUEUE,
            show_progress="minimal",
            show_progress_on=[tab.ref_check],
            **PRIVATE,
        ).success(**prepare).success(**check)
    tab.ref_audio.clear(
        lambda: ("", None, "", gr.update(visible=False), gr.update(visible=False)),
        outputs=[tab.ref_note, upload, tab.ref_check, *tab.fix_buttons.values()],
        queue=False,
        **PRIVATE,
    )
    tab.ref_text.input(
        reference.text_typed,
        inputs=[tab.ref_text, tab.ref_audio],
        outputs=text_owner,
        queue=False,
        show_progress="hidden",
        trigger_mode="always_last",
        **PRIVATE,
    )
    if tab.example_set is not None:
        tab.example_set.load_input_event.then(
            reference.example_picked,
            inputs=tab.ref_audio,
            outputs=[text_owner, tab.voice, tab.ref_note, tab.ref_text, upload],
            queue=False,
            show_progress="hidden",
            **PRIVATE,
        ).success(**check)

    # the voice library: pick a voice (its clip and text fill the fields), save the clip as one
    tab.voice.input(
        voices.picked,
        inputs=tab.voice,
        outputs=[tab.ref_audio, tab.ref_text, text_owner, tab.library.new_name, tab.ref_note],
        show_progress="hidden",
        **QUICK,
    ).success(**check)
    tab.save_voice.click(
        voices.save,
        inputs=[tab.voice_name, tab.ref_audio, tab.ref_text, tab.voice],
        outputs=[tab.voice, tab.library.library, tab.ref_text, text_owner, tab.ref_note],
        concurrency_id=GPU_QUEUE,
        show_progress_on=[tab.ref_note],
        **PRIVATE,
    )
    wire_library(tab.library, voices, tab.voice, tab.ref_text, tab.ref_note)  # rename, delete

    # the tag helper: a sound at the end, or a language first
    tab.clone_tag.select(
        lambda t, text: (insert_tag(t, text), None),
        inputs=[tab.clone_tag, tab.target],
        outputs=[tab.target, tab.clone_tag],
        queue=False,
        **PRIVATE,
    )
