#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv and installs rpp into it.
#
# Torch comes first, on purpose: a bare `pip install torch` on Linux resolves to the
# CUDA build and gigabytes of nvidia wheels. On a machine without an NVIDIA GPU we
# install the CPU build; on a GPU machine, or where torch is already importable,
# we keep what is there. Override with RPP_TORCH_SPEC (e.g. "torch==2.5.1").
#
# Usage: scripts/setup_env.sh [extras]      (extras default: dev)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RPP_VENV:-.venv}"
EXTRAS="${1:-dev}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${RPP_TORCH_SPEC:-}" ]; then
        echo "[setup] installing $RPP_TORCH_SPEC"
        "${PIP[@]}" install "$RPP_TORCH_SPEC"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] NVIDIA GPU found: installing the default (CUDA) torch build"
        "${PIP[@]}" install "torch>=2.4"
    elif [ "$(uname -s)" = "Linux" ]; then
        echo "[setup] no GPU: installing the CPU build of torch"
        # The CPU wheel index is tried first; where it is unreachable (no network but
        # PyPI) pip falls back to a local +cpu wheel if one is on its find-links path.
        "${PIP[@]}" install --retries 0 --timeout 15 \
            --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu" \
        || "${PIP[@]}" install "torch==2.13.0"
    else
        "${PIP[@]}" install "torch>=2.4"   # macOS wheels on PyPI are CPU/MPS builds
    fi
fi

STAMP="$VENV/.rpp-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "[setup] installing rpp[$EXTRAS] (editable)"
    "${PIP[@]}" install -e ".[$EXTRAS]"
    touch "$STAMP"
fi
