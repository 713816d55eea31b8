"""Write tiny random-weight models in the real checkpoint layout (see DESIGN.md, "Demo models").

    python scripts/make_demo_models.py --out demo_models

The writers live in the ``demo`` package (the app writes the same models at start-up when no
real ones are present).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from demo import PARTS, write_demo_models

log = logging.getLogger("make_demo_models")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_models"), help="output root folder")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated subset of: " + ", ".join(PARTS)
    )
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
