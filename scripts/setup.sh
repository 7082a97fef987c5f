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
# torchvision (VideoLLaMA3's reference): the release that matches the installed torch (2.X -> 0.(X+15)),
# from the configured index (PyPI: a CUDA build, which imports beside a CPU torch through
# sfedge/torchvision_compat.py), else PyTorch's CPU index; --no-deps: it must never replace torch.
TV_VERSION=$(python -c "import torch; print('0.%d.*' % (int(torch.__version__.split('.')[1]) + 15))")
TV_HAVE=$(python -c "import importlib.metadata as m; print(m.version('torchvision'))" 2>/dev/null || true)
case "$TV_HAVE" in "${TV_VERSION%\*}"*) ;; *)
    pip install -q --no-deps "torchvision==$TV_VERSION" 2>/dev/null \
        || pip install -q --no-deps "torchvision==$TV_VERSION" --index-url https://download.pytorch.org/whl/cpu ;;
esac
pip install -q -e ".[export,bench,serve,cluster,dev]"
