"""The Clone tab's side panels, laid out and wired: the voice library and the prompt cache.

    library = library_view(asks_key)         # inside the Clone tab's left column
    cache = cache_view(asks_key)
    wire_library(library, voices, voice, ref_text, ref_note)
    wire_cache(cache, cache_handlers)      # handlers: ui/cache_panel.py

Their handlers are ui/voices.py's ``VoicePanel`` and ui/cache_panel.py's ``CachePanel``. Deleting a
voice and clearing the cache ask in the browser first, and off loopback need the admin key (checked
on the server, ui/access.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ui.access import CANCELLED
from ui.cache_panel import CachePanel
from ui.controls import PAGE_QUEUE, QUICK
from ui.voices import VoicePanel

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


@dataclass
class LibraryView:
    """The voice library panel's components."""

    library: gr.Dataframe
    new_name: gr.Textbox
    voice_key: gr.Textbox
    rename_voice: gr.Button
    delete_voice: gr.Button


@dataclass
class CacheView:
    """The prompt cache panel's components."""

    cache_rows: gr.Dataframe
    cache_key: gr.Textbox
    refresh_btn: gr.Button
    clear_btn: gr.Button


def library_view(asks_key: bool) -> LibraryView:
    """The "Voice library" accordion: the saved voices, rename and delete (the admin key field only
    where the server asks for it)."""
    with gr.Accordion("Voice library", open=False, elem_id="library-panel"):
        gr.Markdown(
            "Pick a voice in **Voice** above to hear its clip in the reference "
            "player; rename or delete it here.",
            elem_classes=["hint"],
        )
        library = gr.Dataframe(headers=["name", "id", "text"], interactive=False, elem_id="library-list")
        new_name = gr.Textbox(label="New name for the picked voice", elem_id="voice-new-name")
        voice_key = gr.Textbox(
            label="Admin key (this server is open to the network)",
            type="password",
            visible=asks_key,
            elem_id="voice-admin-key",
        )
        with gr.Row():
            rename_voice = gr.Button("Rename", size="sm", elem_id="voice-rename")
            delete_voice = gr.Button("Delete", size="sm", variant="stop", elem_id="voice-delete")
    return LibraryView(library, new_name, voice_key, rename_voice, delete_voice)


def cache_view(asks_key: bool) -> CacheView:
    """The "Prompt cache" accordion: its statistics, Refresh and Clear."""
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
            clear_btn = gr.Button("Clear cache", size="sm", variant="stop", elem_id="cache-clear")
    return CacheView(cache_rows, cache_key, refresh_btn, clear_btn)


def wire_library(
    view: LibraryView, voices: VoicePanel, voice: gr.Dropdown, ref_text: gr.Textbox, ref_note: gr.Markdown
) -> None:
    """Rename and Delete act on the voice picked in the Clone tab's **Voice** dropdown."""
    view.rename_voice.click(
        voices.rename, inputs=[voice, view.new_name], outputs=[voice, view.library], **QUICK
    )
    view.delete_voice.click(
        voices.delete,
        inputs=[voice, view.voice_key],
        outputs=[voice, view.library, ref_text, ref_note],
        js=CONFIRM_DELETE_JS,
        api_name="delete_voice",
        api_visibility="undocumented",
        concurrency_limit=None,
        concurrency_id=PAGE_QUEUE,
    )


def wire_cache(view: CacheView, cache: CachePanel) -> None:
    """Refresh, and Clear: it asks first, and off loopback needs the admin key (checked server side)."""
    view.refresh_btn.click(cache.cache_rows, outputs=view.cache_rows, api_name="cache_stats", queue=False)
    view.clear_btn.click(
        cache.clear_cache,
        inputs=view.cache_key,
        outputs=view.cache_rows,
        js=CONFIRM_CLEAR_JS,
        api_name="clear_cache",
        api_visibility="undocumented",
        concurrency_limit=None,
        concurrency_id=PAGE_QUEUE,
    )
