"""scripts/check_dockerfile.py: our Dockerfile rules on the real file and on broken copies (offline).

Each broken Dockerfile is the good one with one rule violated, written to a temporary repo with the
files its COPY lines need; the checker must name that violation. The network-bound parts
(--resolve) are tested on stored pip reports and wheel names.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from scripts import check_dockerfile as cd

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
# syntax=docker/dockerfile:1
FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS builder
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0
RUN uv python install "${PYTHON_VERSION}"
RUN /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir \\
    -r /tmp/requirements.txt

FROM builder AS assets
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
    EDITX_HOST=0.0.0.0
VOLUME ["/app/cache"]
EXPOSE 7860
USER 10001:10001
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health')"]
CMD ["python", "app.py"]
"""


RUNTIME = "FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS runtime"


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\nnumpy>=1.26\n")
    (tmp_path / "app.py").write_text("")
    (tmp_path / ".dockerignore").write_text(
        ".git\n.venv\ncheckpoints\ndemo_models\ncache/*\n!cache/README.md\n**/*.pt\n")
    return tmp_path


def check(repo: Path, text: str) -> list[str]:
    (repo / "Dockerfile").write_text(text)
    return cd.check_rules(repo / "Dockerfile", repo)


def broken(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


def test_project_dockerfile_passes_the_rules():
    assert cd.check_rules(ROOT / "Dockerfile", ROOT) == []


def test_good_example_passes(repo):
    assert check(repo, GOOD) == []


@pytest.mark.parametrize(("old", "new", "expected"), [
    (RUNTIME, "FROM nvidia/cuda AS runtime", "not pinned"),
    (RUNTIME, "FROM nvidia/cuda:latest AS runtime", "not pinned"),
    (RUNTIME, "FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS runtime", "different CUDA base images"),
    (RUNTIME, "FROM builder AS runtime", "starts FROM the build"),
    ("COPY --from=builder /opt/venv /opt/venv", "COPY /opt/venv /opt/venv", "copies nothing from an earlier"),
    ("USER 10001:10001\n", "", "no USER before CMD"),
    ("USER 10001:10001\n", "USER root\n", "last USER before CMD is root"),
    ("EXPOSE 7860", "EXPOSE 8080", "EXPOSE 7860"),
    ("HEALTHCHECK CMD", "HEALTHCHECK NONE\n# CMD", "no HEALTHCHECK"),
    ("/health'", "/'", "does not request /health"),
    ("""HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health')"]""",
     "HEALTHCHECK CMD curl -f http://127.0.0.1:7860/health", "curl"),
    ("WORKDIR /app", "WORKDIR /srv", "WORKDIR /app"),
    ('VOLUME ["/app/cache"]', 'VOLUME ["/data"]', "is not on a VOLUME"),
    ('VOLUME ["/app/cache"]\n', "", "no VOLUME"),
    ("    EDITX_HOST=0.0.0.0", "    EDITX_HOST=127.0.0.1", "EDITX_HOST"),
    ("ENV EDITX_MODEL_DIR=/model \\\n", "ENV \\\n", "EDITX_MODEL_DIR is not set"),
    ("RUN useradd --uid 10001 editx", "RUN pip install gradio", "without --no-cache-dir"),
    ("RUN useradd --uid 10001 editx",
     "RUN apt-get update && apt-get install -y --no-install-recommends build-essential "
     "&& rm -rf /var/lib/apt/lists/*", "compiler package build-essential"),
    ("    && rm -rf /var/lib/apt/lists/*", "    && echo done", "rm -rf /var/lib/apt/lists"),
    ("install -y --no-install-recommends espeak-ng", "install -y espeak-ng", "--no-install-recommends"),
    ("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.0", "requirements.txt pins torch==2.13.0"),
    ('RUN /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"\n', "", "never installed"),
    ("COPY requirements.txt /tmp/requirements.txt", "COPY requirements-gpu.txt /tmp/requirements.txt",
     "does not exist"),
    ("COPY . /app", "COPY checkpoints /app/checkpoints", "does not exist"),
    ("COPY . /app", "COPY https://example.com/x.tar /app/", "from a URL"),
    ('CMD ["python", "app.py"]\n', "", "no CMD"),
])
def test_each_rule_names_its_violation(repo, old, new, expected):
    problems = check(repo, broken(old, new))
    assert problems, f"no problem found after replacing {old!r}"
    assert any(expected in p for p in problems), problems


def test_dockerignored_copy_source_is_reported(repo):
    (repo / "weights.pt").write_bytes(b"x")
    problems = check(repo, broken("COPY . /app", "COPY weights.pt /app/weights.pt"))
    assert any("excluded by .dockerignore" in p for p in problems), problems


def test_dockerignore_must_leave_out_models_and_environments(repo):
    (repo / ".dockerignore").write_text(".git\ncheckpoints\n")
    problems = check(repo, GOOD)
    assert problems == [".dockerignore: the build context would include .venv, demo_models, cache/funasr"]


def test_single_stage_build_is_reported(repo):
    single = "FROM nvidia/cuda:13.0.1-base-ubuntu24.04\n" + GOOD.split("AS runtime\n", 1)[1]
    problems = check(repo, single)
    assert any("single-stage" in p for p in problems), problems


def test_problem_lines_point_at_the_instruction(repo):
    text = broken("EXPOSE 7860\nUSER 10001:10001", "EXPOSE 7860\nUSER root")
    problems = check(repo, text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l == "USER root")
    assert f"Dockerfile:{line}: the last USER before CMD is root" in problems


def test_parser_joins_continuations_and_drops_comments():
    text = "FROM a:1 AS b\nRUN echo 1 \\\n    # a comment inside\n    && echo 2\n\nCMD x\n"
    instructions = cd.parse_dockerfile(text)
    assert [(i.line, i.keyword) for i in instructions] == [(1, "FROM"), (2, "RUN"), (6, "CMD")]
    assert instructions[1].args == "echo 1 && echo 2"


@pytest.mark.parametrize(("path", "ignored"), [
    (".git", True), ("checkpoints/x/model.pt", True), ("cache/funasr", True), ("cache/README.md", False),
    ("models/flow.py", False), ("deep/inside/w.pt", True), ("requirements.txt", False),
])
def test_dockerignore_matching(path, ignored):
    patterns = [".git", "checkpoints", "cache/*", "!cache/README.md", "**/*.pt"]
    assert cd.is_dockerignored(path, patterns) is ignored


def test_project_dockerignore_keeps_sources_and_drops_models():
    patterns = cd.dockerignore_patterns(ROOT)
    for kept in ("app.py", "requirements.txt", "models/llm.py", "scripts/make_examples.py",
                 "cache/README.md"):
        assert not cd.is_dockerignored(kept, patterns), kept
    for dropped in (".venv", ".git", "checkpoints", "demo_models", "cache/funasr", "tests", "artifacts",
                    "examples/voice.wav", "x/model.safetensors"):
        assert cd.is_dockerignored(dropped, patterns), dropped


def test_fake_hadolint_findings_fail_the_check(tmp_path, repo, monkeypatch):
    fake = tmp_path / "bin" / "hadolint"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"$2:3 DL3008 warning: Pin versions in apt get install\"\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (repo / "Dockerfile").write_text(GOOD)
    found = cd.run_hadolint(repo / "Dockerfile", str(fake))
    assert found and "DL3008" in found[0]
    clean = tmp_path / "bin" / "clean"
    clean.write_text("#!/bin/sh\nexit 0\n")
    clean.chmod(clean.stat().st_mode | stat.S_IEXEC)
    assert cd.run_hadolint(repo / "Dockerfile", str(clean)) == []
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setattr(cd.sys, "executable", str(tmp_path / "nowhere" / "python"))
    assert cd.find_hadolint() == str(fake)


def test_main_requires_hadolint_when_asked(repo, monkeypatch):
    (repo / "Dockerfile").write_text(GOOD)
    monkeypatch.setattr(cd, "find_hadolint", lambda: None)
    assert cd.main(["--dockerfile", str(repo / "Dockerfile"), "--hadolint", "require"]) == 1
    assert cd.main(["--dockerfile", str(repo / "Dockerfile"), "--hadolint", "auto"]) == 0
    (repo / "Dockerfile").write_text(broken("EXPOSE 7860", "EXPOSE 80"))
    assert cd.main(["--dockerfile", str(repo / "Dockerfile"), "--hadolint", "off"]) == 1


# --- --resolve helpers, on stored data ---------------------------------------------------------------

def _target() -> cd.ImageTarget:
    stages, global_args = cd.split_stages(cd.parse_dockerfile((ROOT / "Dockerfile").read_text()))
    return cd.image_target(stages, global_args)


def test_image_target_and_installs_of_the_project_dockerfile():
    stages, global_args = cd.split_stages(cd.parse_dockerfile((ROOT / "Dockerfile").read_text()))
    target = cd.image_target(stages, global_args)
    assert (target.python, target.glibc_minor, target.cuda_major) == ("3.11", 39, 13)
    installs = cd.image_installs(stages, global_args, ROOT)
    assert installs.requirement_files == [ROOT / "requirements.txt"]
    assert installs.specs == [f"torch=={cd.requirement_pin(ROOT / 'requirements.txt', 'torch')}"]


@pytest.mark.parametrize(("filename", "fits"), [
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
])
def test_wheel_fits_image(filename, fits):
    assert cd.wheel_fits_image(filename, _target()) is fits


def _item(name, version, url, requires=()):
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)},
            "download_info": {"url": url}}


TORCH_CU13 = ['cuda-toolkit[cublas,cudart]==13.0.3; platform_system == "Linux"',
              'nvidia-cudnn-cu13==9.20.0.48; platform_system == "Linux"', "filelock"]
CUDA_LIBS = [("nvidia-cuda-runtime", "13.0.96"), ("nvidia-cudnn-cu13", "9.20.0.48")]
ORT_CU13 = ['nvidia-cuda-runtime~=13.0; extra == "cuda"', 'nvidia-cudnn-cu13~=9.0; extra == "cudnn"', "numpy"]


def test_report_with_matching_cuda_builds_passes():
    report = {"install": [
        _item("torch", "2.13.0", "https://x/torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", TORCH_CU13),
        _item("onnxruntime-gpu", "1.31.1", "https://x/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
              ORT_CU13),
        _item("jieba", "0.42.1", "https://x/jieba-0.42.1.tar.gz"),
        *(_item(n, v, f"https://x/{n}-{v}-py3-none-manylinux_2_27_x86_64.whl") for n, v in CUDA_LIBS)]}
    problems, pins = cd.check_report(report, _target())
    assert problems == []
    assert "jieba==0.42.1" not in [p for p, _ in pins]  # the sdist is no wheel
    assert [p for p, _ in pins][:2] == ["torch==2.13.0", "onnxruntime-gpu==1.31.1"]


def test_report_flags_missing_onnxruntime_cuda_libraries():
    report = {"install": [
        _item("torch", "2.13.0", "https://x/torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl", TORCH_CU13),
        _item("onnxruntime-gpu", "1.31.1", "https://x/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
              ORT_CU13),
        _item("nvidia-cuda-runtime", "12.8.90", "https://x/nvidia_cuda_runtime-12.8.90-py3-none-any.whl")]}
    problems, _ = cd.check_report(report, _target())
    text = "\n".join(problems)
    assert "needs nvidia-cuda-runtime~=13.0; the image has 12.8.90" in text
    assert "needs nvidia-cudnn-cu13~=9.0; the image has none" in text


def test_report_flags_cpu_torch_cuda_mismatch_and_unknown_sdists():
    report = {"install": [
        _item("torch", "2.13.0+cpu", "file:///opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
              ["filelock"]),
        _item("onnxruntime-gpu", "1.31.1", "https://x/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
              ['nvidia-cuda-runtime-cu12~=12.0; extra == "cuda"']),
        _item("netifaces", "0.11.0", "https://x/netifaces-0.11.0.tar.gz")]}
    problems, _ = cd.check_report(report, _target())
    text = "\n".join(problems)
    assert "a CPU build" in text
    assert "CUDA majors disagree" in text and "onnxruntime-gpu 12" in text and "base image 13" in text
    assert "netifaces==0.11.0 has no wheel" in text


def test_cuda_major_of_requirements():
    assert cd.cuda_major_of_requirements(TORCH_CU13) == 13
    assert cd.cuda_major_of_requirements(['nvidia-cublas-cu12==12.6.4.1']) == 12
    assert cd.cuda_major_of_requirements(["numpy"]) is None
    assert cd.cuda_major_of_requirements(["nvidia-cublas-cu12", "nvidia-cudnn-cu13"]) == -1


def test_requirement_pin(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("# comment\nTorch == 2.13.0  # pinned\nnumpy>=1\n")
    assert cd.requirement_pin(req, "torch") == "2.13.0"
    assert cd.requirement_pin(req, "numpy") is None
