"""Loading the CUDA and cuDNN libraries that onnxruntime-gpu needs, once per process.

onnxruntime-gpu's CUDA provider library has no RPATH to the pip nvidia-* packages; where they sit
beside onnxruntime, `onnxruntime.preload_dlls()` finds them, and where onnxruntime-gpu was
installed elsewhere (pip --target, PYTHONPATH over torch's environment, as on the benchmark
machine) the `nvidia/*/lib` directories on sys.path are searched too. Torch-free; never raises.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

import onnxruntime as ort

# The libraries onnxruntime-gpu's CUDA provider needs at session creation (cuDNN: at its first
# convolution), as their file names start; what `preload` checks once it has run.
CUDA_LIBRARIES = ("libcudart.so", "libcublasLt.so", "libcublas.so", "libcurand.so", "libcudnn.so")
_notes: list[str] | None = None  # None: not tried yet in this process


def _loaded_libraries(names: tuple[str, ...]) -> set[str] | None:
    """Which of `names` (file-name prefixes) this process has loaded; None where that cannot be
    read (not Linux)."""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return None
    return {n for n in names if "/" + n in maps}


def _nvidia_lib_dirs() -> list[str]:
    """Every `nvidia/*/lib` directory on sys.path holding shared libraries: the pip nvidia-*
    packages, wherever they were installed (e.g. torch's environment)."""
    dirs: list[str] = []
    for entry in sys.path:
        root = os.path.join(entry or ".", "nvidia")
        if not os.path.isdir(root):
            continue
        for pkg in sorted(os.listdir(root)):
            lib = os.path.join(root, pkg, "lib")
            if os.path.isdir(lib) and any(".so" in f for f in os.listdir(lib)) and lib not in dirs:
                dirs.append(lib)
    return dirs


def preload() -> list[str]:
    """Load CUDA and cuDNN for onnxruntime-gpu, once per process, before the first CUDA or TensorRT
    session. Returns notes on what failed (empty when all went well), for error messages.

    `onnxruntime.preload_dlls()` (onnxruntime-gpu >= 1.21) loads cuBLAS/cuBLASLt, cudart, cuRAND,
    cuFFT, NVRTC and cuDNN from the pip nvidia-* packages beside onnxruntime, then through the
    default library search; a library already loaded (by `import torch`, say) is reused. When
    onnxruntime-gpu sits elsewhere than those packages (installed with --target, or PYTHONPATH over
    torch's environment), the libraries still missing are looked for in every `nvidia/*/lib`
    directory on sys.path (`preload_dlls(directory=...)`). Nothing is raised here: a CPU build or an
    older onnxruntime has nothing to load, and whether the provider really started is checked
    when the session is made (`OrtEngine`), whose error then carries these notes.
    """
    global _notes
    if _notes is not None:
        return _notes
    notes: list[str] = []
    preload_dlls = getattr(ort, "preload_dlls", None)
    if preload_dlls is None:
        _notes = notes
        return notes
    printed = io.StringIO()  # preload_dlls prints what it could not load; keep it for errors
    with contextlib.redirect_stdout(printed):
        try:
            preload_dlls()
        except Exception as e:  # noqa: BLE001 - any failure here is only a note
            notes.append(f"onnxruntime.preload_dlls(): {e}")
        loaded = _loaded_libraries(CUDA_LIBRARIES)
        missing = [n for n in CUDA_LIBRARIES if loaded is not None and n not in loaded]
        if missing and getattr(ort, "cuda_version", ""):  # a CUDA build of onnxruntime
            cudnn = "libcudnn.so" in missing
            cuda = any(n != "libcudnn.so" for n in missing)
            for lib_dir in _nvidia_lib_dirs():
                try:
                    preload_dlls(cuda=cuda, cudnn=cudnn, msvc=False, directory=lib_dir)
                except Exception as e:  # noqa: BLE001
                    notes.append(f"onnxruntime.preload_dlls(directory={lib_dir!r}): {e}")
            loaded = _loaded_libraries(CUDA_LIBRARIES) or set()
            missing = [n for n in CUDA_LIBRARIES if n not in loaded]
            if missing:
                notes.append(f"not loaded: {', '.join(missing)} (searched the default library path and the "
                             f"nvidia-* packages on sys.path: {', '.join(_nvidia_lib_dirs()) or 'none'})")
    if missing or loaded is None:  # what preload_dlls printed matters only if something is still missing
        notes += [ln.strip() for ln in printed.getvalue().splitlines() if "fail" in ln.lower()][-6:]
    _notes = notes
    return notes
