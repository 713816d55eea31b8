"""Stage benchmarks: timings and ratios measured in one run, printed and written as JSON.

    python scripts/benchmark.py tokenizer --model-dir DIR --json OUT
    python scripts/benchmark.py llm       --model-dir DIR --json OUT
    python scripts/benchmark.py llm_backends --model-dir DIR --json OUT   (native vs vLLM)
    python scripts/benchmark.py vocoder   --model-dir DIR --json OUT
    python scripts/benchmark.py vocoder_stream --json OUT [--quick]
    python scripts/benchmark.py clone     --model-dir DIR --json OUT
    python scripts/benchmark.py stream    --json OUT [--real-scale]     (TTFA, streaming overhead)
    python scripts/benchmark.py scores    --model-dir DIR --json OUT
    python scripts/benchmark.py all       --model-dir DIR --out report.md

Each stage lives in ``scripts/bench/<stage>.py`` with ``add_arguments(parser)`` and
``run(args) -> dict``. Performance is measured here, never by timed assertions in tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

STAGES = (
    "tokenizer",
    "resample",
    "llm",
    "llm_backends",
    "vocoder",
    "vocoder_stream",
    "clone",
    "stream",
    "ttfa",
    "scores",
    "all",
)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every stage has (``args.model_dir``, ``args.json``)."""
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model root (default: ./checkpoints, else demo models are built)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for stage in STAGES:
        module = importlib.import_module(f"scripts.bench.{stage}")
        sp = sub.add_parser(stage, help=(module.__doc__ or stage).strip().splitlines()[0].replace("%", "%%"))
        add_common_arguments(sp)
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    result = args._module.run(args)
    text = json.dumps(result, indent=2, sort_keys=False, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
