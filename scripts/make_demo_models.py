"""Write tiny random-weight models in the real checkpoint layout (see DESIGN.md, "Demo models").

    python scripts/make_demo_models.py --out demo_models

The app uses them when no real models are present and every test runs on them. Each part is
written by its own module under ``scripts/demo/`` with the real file names and config keys, so
loading demo and real models goes through the same code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_layout import DEMO_MARKER  # noqa: E402

log = logging.getLogger("make_demo_models")

# part name -> module under scripts/demo exposing write(root: Path, seed: int) -> None
PARTS = {
    "tokenizer": "scripts.demo.tokenizer_assets",
    "llm": "scripts.demo.llm_assets",
    "vocoder": "scripts.demo.vocoder_assets",
}


def write_demo_models(out: Path, parts: tuple[str, ...] = tuple(PARTS), seed: int = 0,
                      force: bool = False) -> Path:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo_models", help="output root folder")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated subset of: " + ", ".join(PARTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite parts that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    write_demo_models(args.out, parts, args.seed, args.force)
    log.info("done: %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
