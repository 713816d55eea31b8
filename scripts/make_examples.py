"""Write the example voices a first-time user can click (generated, never committed).

    python scripts/make_examples.py --out examples

Each voice is spoken by espeak-ng when it is installed, else a synthetic stand-in is written
(see demo/examples.py). The app does the same at start-up; existing files are kept.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from demo.examples import ensure_examples

log = logging.getLogger("make_examples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples"), help="output folder")
    parser.add_argument("--force", action="store_true", help="rewrite clips that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for example in ensure_examples(args.out, args.force):
        log.info("%s (%s): %r", example.path.name, example.source, example.reference_text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
