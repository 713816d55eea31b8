"""``check_dockerfile.py --resolve``: resolve the image's Python requirements from PyPI, check its wheels.

pip resolves, from PyPI only, every requirement file and pin the Dockerfile installs for the image's
Python on Linux x86_64, then asks for a wheel of each binary pin that fits the glibc of the base tag's
Ubuntu; sdists must be known pure-Python ones (the image has no compiler); torch, onnxruntime-gpu
and the base tag must share a CUDA major, and onnxruntime-gpu's CUDA libraries must be among those
torch brings.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from scripts.dockerfile_parse import Stage, image_installs, parse_dockerfile, values_of

log = logging.getLogger("check_dockerfile")  # the checker's log: this is its --resolve part

UBUNTU_GLIBC = {"20.04": 31, "22.04": 35, "24.04": 39}  # glibc 2.N of the base tag's Ubuntu
# sdists that build without a compiler (setup.py read by hand; crcmod's C part is optional).
PURE_PYTHON_SDISTS = {"jieba", "antlr4-python3-runtime", "oss2", "crcmod", "docopt"}  # docopt: for num2words


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
            problems.append(
                f"{pin} has no wheel and is not a known pure-Python sdist; the image has no "
                "compiler (add it to PURE_PYTHON_SDISTS once it builds without one)"
            )
    torch = meta.get("torch", {})
    majors = {
        "torch": cuda_major_of_requirements(torch.get("requires_dist") or []),
        "base image": target.cuda_major,
    }
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
            problems.append(
                f"onnxruntime-gpu's CUDA provider needs {req.name}{req.specifier}; the image has "
                f"{have or 'none'} (install the matching CUDA build of torch)"
            )
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
    supported = {
        *tags.cpython_tags(version, platforms=platforms),
        *tags.compatible_tags(version, platforms=platforms),
    }
    try:
        return bool(utils.parse_wheel_filename(filename)[3] & supported)
    except utils.InvalidWheelFilename:
        return False


def resolve(
    dockerfile: Path, root: Path, cache_dir: Path | None = None, keep_report: Path | None = None
) -> list[str]:
    """Resolve the image's Python requirements from PyPI for the image's Python and glibc."""
    stages, global_args = parse_dockerfile(dockerfile.read_text())
    target = image_target(stages, global_args)
    files, specs = image_installs(stages, global_args, root)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != target.python or platform.system() != "Linux" or platform.machine() != "x86_64":
        return [
            f"--resolve must run under Python {target.python} on Linux x86_64 (like the image); "
            f"this is Python {here} on {platform.system()} {platform.machine()}"
        ]
    if missing := [f"requirement file not found (a pip -r source): {f}" for f in files if not f.is_file()]:
        return missing
    # --isolated: no pip config or local wheel folders (a dev machine's CPU torch must not answer).
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--isolated",
        "--disable-pip-version-check",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--index-url",
        "https://pypi.org/simple",
    ]
    cert = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    pip += (["--cert", cert] if cert else []) + (["--cache-dir", str(cache_dir)] if cache_dir else [])
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        requirements = [a for f in files for a in ("-r", str(f))]
        result = subprocess.run(
            [*pip, "--report", str(report_path), *requirements, *(s for _, s in specs)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            return ["pip could not resolve the image's requirements:", *result.stderr.splitlines()[-15:]]
        report = json.loads(report_path.read_text())
        if keep_report:
            keep_report.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report_path, keep_report)
    problems, wheels = check_report(report, target)
    # The first pass picked wheels for this machine; ask again for the image where a tag does not fit.
    misfits = [pin for pin, url in wheels if not wheel_fits_image(url.rsplit("/", 1)[-1], target)]
    log.info(
        "resolved %d packages; %d wheels re-checked for Python %s / glibc 2.%d",
        len(report.get("install", [])),
        len(misfits),
        target.python,
        target.glibc_minor,
    )
    if misfits:
        platforms = [a for tag in image_platform_tags(target) for a in ("--platform", tag)]
        result = subprocess.run(
            [
                *pip,
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                target.python,
                "--implementation",
                "cp",
                "--abi",
                "cp" + target.python.replace(".", ""),
                *platforms,
                *misfits,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            problems.append(
                f"no wheel for Python {target.python} / glibc 2.{target.glibc_minor} of: "
                + ", ".join(misfits)
            )
            problems += result.stderr.splitlines()[-10:]
    return problems
