# syntax=docker/dockerfile:1
# EditX Studio on NVIDIA GPUs. Build and run (docs/DOCKER.md):
#   docker build -t editx-studio .
#   docker run --gpus all -p 7860:7860 -v /path/to/models:/model:ro -v editx-cache:/app/cache editx-studio
#
# Base image: the plain CUDA "base" flavour (CUDA runtime + the NVIDIA container settings only).
# torch 2.13.0's Linux wheel on PyPI is the CUDA 13.0 build and pulls its own cuBLAS/cuFFT/cuDNN
# (cuda-toolkit 13.0.x, nvidia-cudnn-cu13) into the venv; onnxruntime-gpu 1.31.1 is built for the
# same CUDA 13.0 / cuDNN 9 and loads those libraries (onnxruntime.preload_dlls). A cudnn-runtime
# base would ship a second, unused copy of cuDNN/cuBLAS (the 5.55 -> 3.44 GB lesson).
# CUDA 13.0 needs an NVIDIA driver >= 580 on the host. Ubuntu 24.04 (glibc 2.39) because the CUDA
# 13 wheels need glibc >= 2.27/2.28 and 24.04 is the LTS the CUDA 13 images are maintained on.
# Keep the two CUDA FROM tags below identical (scripts/check_dockerfile.py checks it).
#
# Python 3.11: a uv-managed CPython build (python-build-standalone), installed in the builder
# and copied to /opt/python. No PPA key to trust (deadsnakes), the patch release is fixed by the
# pinned uv version, and neither uv nor a compiler reaches the final stage.

# ---- builder: Python 3.11 + a venv with the CUDA build of torch and the rest of requirements.txt --
FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS builder

COPY --from=ghcr.io/astral-sh/uv:0.12.10 /uv /usr/local/bin/uv

ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

ARG PYTHON_VERSION=3.11
# Must equal the torch pin in requirements.txt (checked by scripts/check_dockerfile.py).
ARG TORCH_VERSION=2.13.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN uv python install "${PYTHON_VERSION}" \
    && "$(uv python find "${PYTHON_VERSION}")" -m venv /opt/venv

# torch alone first: the largest layer (several GB with its CUDA libraries), rebuilt only when its pin moves.
RUN /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}"

COPY requirements.txt /tmp/requirements.txt
# Fail the build, not the first request, if a CPU-only torch or an ONNX Runtime built for another
# CUDA major slipped in (both checks work without a GPU).
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
    && /opt/venv/bin/python -c "import torch, onnxruntime as ort; \
from onnxruntime.capi.build_and_package_info import cuda_version as ort_cuda; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__; \
assert torch.version.cuda and torch.version.cuda.split('.')[0] == ort_cuda.split('.')[0], (torch.version.cuda, ort_cuda); \
assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()" \
    && rm -rf /tmp/requirements.txt /root/.cache

# ---- assets: example voices (spoken by espeak-ng) and the tiny demo models, made at build time ---
# espeak-ng is installed only here: the final image gets the finished .wav files, not the synthesiser.
FROM builder AS assets
# apt versions are not pinned: Ubuntu removes superseded versions from its archive, so pins break
# rebuilds; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# the project's modules sit at the top of the source tree (flat layout): scripts import them from here
ENV PYTHONPATH=/src
RUN /opt/venv/bin/python scripts/make_examples.py --out /out/examples \
    && /opt/venv/bin/python scripts/make_demo_models.py --out /out/demo_models

# ---- runtime ------------------------------------------------------------------------------------
FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS runtime

LABEL org.opencontainers.image.title="EditX Studio" \
      org.opencontainers.image.description="Zero-shot voice cloning and editing with Step-Audio-EditX (GPU)"

# A fixed, unprivileged uid that does not clash with Ubuntu's default 'ubuntu' user (1000).
RUN groupadd --gid 10001 editx \
    && useradd --uid 10001 --gid editx --create-home --shell /usr/sbin/nologin editx

COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Code is owned by root and read-only for the app user; only the data folders below are writable.
COPY . /app
COPY --from=assets --chown=editx:editx /out/examples /app/examples
COPY --from=assets --chown=editx:editx /out/demo_models /app/demo_models
RUN mkdir -p /app/cache/funasr && chown -R editx:editx /app/cache

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDITX_MODEL_DIR=/model \
    EDITX_CACHE_DIR=/app/cache/funasr \
    EDITX_DEMO_DIR=/app/demo_models \
    EDITX_EXAMPLES_DIR=/app/examples \
    EDITX_HOST=0.0.0.0 \
    EDITX_PORT=7860 \
    EDITX_VARIANT=base \
    EDITX_DEVICE=auto \
    HF_HUB_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    HOME=/home/editx

# The prompt cache outlives the container; /model is mounted read-only at run time.
VOLUME ["/app/cache"]
EXPOSE 7860

USER 10001:10001

# Real checkpoints take minutes to load and warm up, hence the long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('EDITX_PORT', '7860'), timeout=8)"]

# Python as PID 1 ignores SIGTERM; SIGINT raises KeyboardInterrupt and lets the server shut down cleanly.
STOPSIGNAL SIGINT
CMD ["python", "app.py"]
