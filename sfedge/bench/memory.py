"""Peak memory while a block runs: host RSS (psutil polling) and, on CUDA, device memory.

The bench polls only around loading and the warmup runs, never inside its timed loop.
Device memory of the engines: `cuda_used_mb` asks the CUDA runtime that the CUDA provider loaded
(`cudaMemGetInfo`, no polling) before the sessions exist and after the runs; ONNX Runtime's CUDA
arena keeps what it reserved at its peak, so the difference is the provider's peak reservation
(+ its CUDA context and cuBLAS / cuDNN workspaces). Without a loaded CUDA runtime it falls back to
`nvidia-smi` (whole-GPU `memory.used`). The PyTorch reference's is exact
(`torch.cuda.max_memory_allocated`, read by the runner). Polling can miss a spike shorter than the
interval; RSS is polled every 5 ms, the GPU every 100 ms.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading

MB = 1024**2


def gpu_used_mb(index: int = 0) -> float | None:
    """Memory used on GPU `index` in MiB, from nvidia-smi; None where there is no nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(index)],
                             capture_output=True, text=True, timeout=5, check=True)
        return float(out.stdout.strip().splitlines()[0])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def _loaded_cudart() -> str | None:
    """The path of the libcudart this process loaded (the CUDA provider's, or torch's), if any."""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "/libcudart.so" in path:
            return path
    return None


def cuda_used_mb(index: int = 0) -> tuple[float | None, str]:
    """(MiB used on the GPU, how it was read): from the loaded CUDA runtime's `cudaMemGetInfo`
    (total - free) where this process has one, else from nvidia-smi; (None, reason) without either."""
    path = _loaded_cudart()
    if path is not None:
        try:
            rt = ctypes.CDLL(path)
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            if rt.cudaSetDevice(index) == 0 and rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
                return (total.value - free.value) / MB, f"cudaMemGetInfo ({path.rsplit('/', 1)[-1]})"
        except OSError:
            pass
    used = gpu_used_mb(index)
    return used, "nvidia-smi memory.used" if used is not None else "no CUDA runtime loaded and no nvidia-smi"


class PeakMonitor:
    """Context manager: `peak_rss_mb` (process RSS) and `peak_gpu_mb` (GPU used minus
    `gpu_baseline_mb`, None without a GPU) over the block. Pass `gpu_baseline_mb` to measure
    against a state from before the block (e.g. before the engines were loaded)."""

    def __init__(self, gpu: bool = False, gpu_baseline_mb: float | None = None, interval_s: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self._gpu = gpu
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.gpu_baseline_mb = gpu_baseline_mb if gpu_baseline_mb is not None else (gpu_used_mb() if gpu else None)
        self.peak_rss_mb = self._proc.memory_info().rss / MB
        self._peak_gpu_used: float | None = None

    def _sample(self, with_gpu: bool) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, self._proc.memory_info().rss / MB)
        if with_gpu:
            used = gpu_used_mb()
            if used is not None:
                self._peak_gpu_used = max(self._peak_gpu_used or 0.0, used)

    def _poll(self) -> None:
        gpu_every = max(1, round(0.1 / self._interval))
        i = 0
        while not self._stop.wait(self._interval):
            self._sample(self._gpu and i % gpu_every == 0)
            i += 1

    @property
    def peak_gpu_mb(self) -> float | None:
        if self._peak_gpu_used is None or self.gpu_baseline_mb is None:
            return None
        return max(0.0, self._peak_gpu_used - self.gpu_baseline_mb)

    def __enter__(self) -> "PeakMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(self._gpu)
