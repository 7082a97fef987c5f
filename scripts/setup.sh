#!/usr/bin/env bash
# Create .venv and install sfedge with everything (export, reference, bench, tests).
# torch comes first: the CPU wheel on a machine without an NVIDIA GPU (no multi-GB CUDA
# download), the default CUDA build from PyPI where `nvidia-smi` sees a GPU.
# Override with SFEDGE_TORCH="torch==X" (any pip requirement) if you need another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if python -c "import torch" 2>/dev/null; then
    :  # keep whatever torch is there
elif [ -n "${SFEDGE_TORCH:-}" ]; then
    pip install -q "$SFEDGE_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q "torch==$TORCH_VERSION"
elif pip download -q --no-deps --no-index -d "$(mktemp -d)" "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
    pip install -q "torch==$TORCH_VERSION+cpu"   # a local CPU wheel (pip find-links)
else
    pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
fi
pip install -q -e ".[export,bench,serve,cluster,dev]"
