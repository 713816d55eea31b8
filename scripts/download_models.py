"""Download the Step-Audio-EditX checkpoints into the layout the app expects, then verify them.

    python scripts/download_models.py                      # -> ./checkpoints (about 9.7 GB)
    python scripts/download_models.py --out /data/models --awq
    python scripts/download_models.py --source modelscope  # from ModelScope instead of Hugging Face
    python scripts/download_models.py --verify ./checkpoints   # check an existing folder only

Each repo lands in its own folder under ``--out`` (``Step-Audio-Tokenizer/``, ``Step-Audio-EditX/``,
optionally ``Step-Audio-EditX-AWQ-4bit/``), which is the layout of DESIGN.md. Downloads resume:
huggingface_hub keeps partial files under ``<folder>/.cache/huggingface/`` and skips files that are
already complete, so running the same command again continues where it stopped. The exit code is 1
when the folder is incomplete afterwards, and every missing or broken file is named.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from model_layout import DEFAULT_PARTS, PARTS, verify_layout  # noqa: E402

log = logging.getLogger("download_models")

SOURCES = ("huggingface", "modelscope")


@dataclass(frozen=True)
class RepoDownload:
    """One repo to fetch and the model parts (model_layout.PARTS) that live in it."""

    repo_id: str
    folder: str  # relative to the output root
    parts: tuple[str, ...]


def wanted_parts(awq: bool = False) -> tuple[str, ...]:
    """The model parts to fetch or check: the default ones, plus the AWQ LLM when asked."""
    return (*DEFAULT_PARTS, "awq") if awq else DEFAULT_PARTS


def plan(awq: bool = False) -> list[RepoDownload]:
    """The repos to fetch: tokenizer and EditX (LLM + vocoder), plus the AWQ LLM when asked."""
    repos: dict[str, RepoDownload] = {}
    for name in wanted_parts(awq):
        part = PARTS[name]
        folder = part.folder.split("/", 1)[0]  # the vocoder sits inside the EditX repo folder
        known = repos.get(part.repo_id)
        repos[part.repo_id] = RepoDownload(part.repo_id, folder, (*(known.parts if known else ()), name))
    return list(repos.values())


def _huggingface_snapshot(
    repo_id: str, local_dir: Path, revision: str | None, force: bool, max_workers: int
) -> Path:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded; run with HF_HUB_OFFLINE=0 "
            "(in Docker: docker run -e HF_HUB_OFFLINE=0 ...)"
        )
    from huggingface_hub import snapshot_download

    # local_dir holds real files (no symlinks into a cache), so the folder can be mounted read-only
    # into the container; incomplete files resume from local_dir/.cache/huggingface on the next run.
    path = snapshot_download(
        repo_id=repo_id, local_dir=local_dir, revision=revision, force_download=force, max_workers=max_workers
    )
    return Path(path)


def _modelscope_snapshot(
    repo_id: str, local_dir: Path, revision: str | None, force: bool, max_workers: int
) -> Path:
    try:
        modelscope = importlib.import_module("modelscope")
    except ImportError as exc:
        raise RuntimeError(
            "--source modelscope needs the modelscope package: pip install modelscope"
        ) from exc
    if force:
        log.warning("--force is not supported by ModelScope downloads; existing files are kept")
    path = modelscope.snapshot_download(
        repo_id, revision=revision, local_dir=str(local_dir), max_workers=max_workers
    )
    return Path(path)


def download_models(
    out: Path,
    awq: bool = False,
    source: str = "huggingface",
    revision: str | None = None,
    force: bool = False,
    max_workers: int = 8,
) -> list[str]:
    """Fetch every repo of ``plan(awq)`` into ``out`` and verify the layout; returns the problems."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
    fetch = _huggingface_snapshot if source == "huggingface" else _modelscope_snapshot
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    for repo in plan(awq):
        local_dir = out / repo.folder
        started = time.perf_counter()
        log.info("downloading %s from %s into %s", repo.repo_id, source, local_dir)
        try:
            fetch(repo.repo_id, local_dir, revision, force, max_workers)
        except RuntimeError:
            raise
        except Exception as exc:  # network, auth and disk errors of either hub client
            raise RuntimeError(
                f"downloading {repo.repo_id} failed ({type(exc).__name__}: {exc}); "
                "run the same command again to resume"
            ) from exc
        log.info("downloaded %s in %.1f s", repo.repo_id, time.perf_counter() - started)
        parts.extend(repo.parts)
    return verify(out, parts)


def verify(root: Path, parts: list[str] | tuple[str, ...] = DEFAULT_PARTS) -> list[str]:
    """Check ``root`` with model_layout.verify_layout and log the outcome; returns the problems."""
    started = time.perf_counter()
    problems = verify_layout(root, parts)
    log.info(
        "verified %s (%s) in %.2f s: %s",
        root,
        ", ".join(parts),
        time.perf_counter() - started,
        "complete" if not problems else f"{len(problems)} problem(s)",
    )
    for line in problems:
        log.error("%s", line)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("checkpoints"), help="model root to fill")
    parser.add_argument(
        "--verify",
        type=Path,
        metavar="DIR",
        default=None,
        help="only check an existing model root (no download)",
    )
    parser.add_argument(
        "--awq",
        action="store_true",
        help="also fetch (with --verify: also check) stepfun-ai/Step-Audio-EditX-AWQ-4bit",
    )
    parser.add_argument("--source", choices=SOURCES, default="huggingface")
    parser.add_argument(
        "--revision", default=None, help="branch, tag or commit of every repo (default: main)"
    )
    parser.add_argument("--force", action="store_true", help="download every file again")
    parser.add_argument("--max-workers", type=int, default=8, help="parallel file downloads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.verify is not None:
        return 1 if verify(args.verify, wanted_parts(args.awq)) else 0
    try:
        problems = download_models(
            args.out, args.awq, args.source, args.revision, args.force, args.max_workers
        )
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    if problems:
        log.error("the model folder is incomplete; run the same command again to resume")
        return 1
    log.info("models ready: python app.py --model-dir %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
