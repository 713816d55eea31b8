"""Stage benchmarks (``scripts/benchmark.py <stage>``) and what several of them share."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("bench")


def llm_dir(model_dir: Path | None, scratch: Path) -> Path:
    """The Step-Audio-EditX folder under ``model_dir`` (default ./checkpoints) when it has a
    config.json, else the demo LLM written under ``scratch``."""
    from demo import write_demo_models
    from model_layout import LLM_FOLDER

    root = Path(model_dir) if model_dir else Path("checkpoints")
    if not (root / LLM_FOLDER / "config.json").is_file():
        root = write_demo_models(scratch / "demo", ("llm",))
        log.info("no %s under %s: benchmarking the demo LLM", LLM_FOLDER, model_dir)
    return root / LLM_FOLDER
