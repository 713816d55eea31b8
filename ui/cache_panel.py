"""The prompt cache panel's handlers: its statistics table, and Clear (asked first, admin-checked).

cache = CachePanel(engine, gate)
cache.cache_rows()                          # [[statistic, value], ...] for the panel's table
cache.clear(admin_key, request)       # after the browser's "Clear?" (ui/panels.py lays it out)
"""

from __future__ import annotations

import gradio as gr

from engine import CloneEngine
from ui.access import CANCELLED, AdminGate
from ui.values import public_error


def cache_table(stats: dict) -> list[list[str]]:
    """Prompt-cache statistics as [name, value] rows (time saved: encodes + vocoder features). The
    store's location is the redacted one of ``Store.status`` (a folder name, never a server path)."""
    saved = float(stats.get("time_saved_s", 0.0)) + float(stats.get("vocoder_prompt_time_saved_s", 0.0))
    return [
        ["hits", str(stats.get("hits", 0))],
        ["misses", str(stats.get("misses", 0))],
        ["hit rate", f"{100 * float(stats.get('hit_rate', 0.0)):.0f} %"],
        ["entries", str(stats.get("entries", 0))],
        ["size on disk", f"{int(stats.get('bytes', 0)) / 1e6:.2f} MB"],
        ["time saved", f"{saved:.2f} s"],
        ["vocoder prompt hits", str(stats.get("vocoder_prompt_hits", 0))],
        ["stored in", str(stats.get("directory") or "memory only")],
    ]


class CachePanel:
    """Gradio event handlers of the prompt cache panel over one ``CloneEngine``."""

    def __init__(self, engine: CloneEngine, gate: AdminGate):
        self.engine = engine
        self.gate = gate

    def cache_rows(self) -> list[list[str]]:
        return cache_table(self.engine.cache_stats())

    def clear_cache(self, admin_key, request: gr.Request = None) -> list[list[str]]:
        """Clear button (after the browser's confirmation): needs the admin key off loopback."""
        if admin_key == CANCELLED:
            gr.Info("The prompt cache was not cleared.")
            return gr.skip()
        try:
            self.gate.check(admin_key, request, "clear the prompt cache")
            removed = self.engine.clear_cache()
        except Exception as exc:
            raise public_error("clear cache", exc) from None
        counters = removed.get("counters") or {}
        hits, misses = int(counters.get("hits", 0)), int(counters.get("misses", 0))
        size = removed["bytes"] / 1e6
        gr.Info(
            f"Prompt cache cleared: removed {removed['entries']} entries ({size:.2f} MB) "
            f"and reset the counters (hits {hits}, misses {misses}). Library voices are kept."
        )
        return self.cache_rows()
