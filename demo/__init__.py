"""Tiny random-weight models in the real checkpoint layout, and the example voices (DESIGN.md, "Demo models").

    write_demo_models(Path("demo_models"))        # or: python scripts/make_demo_models.py --out demo_models

The app uses them when no real models are present and every test runs on them. Each part is
written by its own module here with the real file names and config keys, so loading demo and
real models goes through the same code.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from model_layout import DEMO_MARKER

log = logging.getLogger(__name__)

# part name -> module exposing write(root: Path, seed: int) -> None
PARTS = {
    "tokenizer": "demo.tokenizer_assets",
    "llm": "demo.llm_assets",
    "vocoder": "demo.vocoder_assets",
}


def write_demo_models(
    out: Path, parts: tuple[str, ...] = tuple(PARTS), seed: int = 0, force: bool = False
) -> Path:
    """Write the requested parts under ``out`` (idempotent unless ``force``); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"unknown demo part {part!r}; choose from {sorted(PARTS)}")
        done = out / f".{part}.done"
        if done.exists() and not force:
            continue
        importlib.import_module(PARTS[part]).write(out, seed)
        done.write_text("ok\n")
        log.info("demo %s models written under %s", part, out)
    # A marker file so the app can say plainly that these are untrained demo weights.
    (out / DEMO_MARKER).write_text("tiny random-weight demo models: untrained, the output is noise\n")
    return out
