"""Host -> CUDA copies of the vision engine's uint8 frames through page-locked (pinned) memory.

A numpy array bound to a CUDA (or TensorRT EP) session (`OrtValue.ortvalue_from_numpy(arr, "cuda")`) is copied from
pageable memory: the driver first copies it into a pinned bounce buffer of its own, then DMAs it,
synchronously. `PinnedUpload` instead keeps, per frame count, one pinned host OrtValue and one
device OrtValue, both made by ONNX Runtime's own allocators (no CUDA calls here):

* the pinned buffer comes from ONNX Runtime's Python API: the CUDA execution provider's
  `OrtEpDevice.memory_info(OrtDeviceMemoryType.HOST_ACCESSIBLE)` (`onnxruntime.get_ep_devices()`,
  onnxruntime >= 1.23) handed to `OrtValue.ortvalue_from_shape_and_type(shape, dtype,
  memory_info=...)`, which allocates through the EP's host-accessible (cudaHostAlloc) allocator;
* each call copies the frames into it (`update_inplace(numpy)`, a host memcpy of T x 338,688 bytes),
  then `device.update_inplace(pinned)` (OrtValue to OrtValue: ONNX Runtime's data transfer, a DMA
  straight from pinned memory), and the device OrtValue is what IOBinding binds.

What the Python API does NOT offer: an asynchronous copy on a stream the session then waits on
(`update_inplace` and `copy_tensors` without a stream complete before they return), or wrapping an
existing numpy array as pinned memory (cudaHostRegister). So the copy is synchronous but runs at
pinned-DMA speed, and the host memcpy into the staging buffer stays (cheap next to the resize).

Where the CUDA EP exposes no host-accessible memory info (older onnxruntime-gpu, or an EP library not
registered as an EP device) `PinnedUpload.create` returns None and the engine copies from pageable
memory as before; `Encoder.upload` says which path is in use. The CPU provider never uses this, nor
does a native TensorRT plan (`trt_engine.py` copies with its own stream).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


def pinned_memory_info():
    """The CUDA EP's host-accessible (pinned) OrtMemoryInfo, or None where this onnxruntime does not
    expose one. (An OrtEpDevice's hardware `device_id` is the PCI device id, not the CUDA ordinal, and
    pinned host memory is usable with any GPU, so the first CUDA EP device that offers it is taken.)"""
    kind = getattr(ort, "OrtDeviceMemoryType", None)
    if kind is None or not hasattr(ort, "get_ep_devices"):
        return None
    try:
        devices = [d for d in ort.get_ep_devices() if d.ep_name == "CUDAExecutionProvider"]
    except Exception:  # noqa: BLE001 - an onnxruntime without EP devices: pageable copies
        return None
    for d in devices:
        try:
            info = d.memory_info(kind.HOST_ACCESSIBLE)
        except Exception:  # noqa: BLE001
            info = None
        if info is not None:
            return info
    return None


class PinnedUpload:
    """numpy array -> a CUDA OrtValue holding it, through a pinned staging OrtValue (see the module
    docstring). The buffers of the last shape are kept: the device OrtValue is valid until the next
    call with another shape (bind it, run, then call again)."""

    def __init__(self, memory_info, device_id: int = 0):
        self.memory_info, self.device_id = memory_info, device_id
        self._key = None
        self.pinned = self.device = None

    @classmethod
    def create(cls, device_id: int = 0) -> "PinnedUpload | None":
        info = pinned_memory_info()
        return None if info is None else cls(info, device_id)

    def __call__(self, array: np.ndarray) -> ort.OrtValue:
        array = np.ascontiguousarray(array)
        key = (array.shape, array.dtype.str)
        if key != self._key:
            self.pinned = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype.type,
                                                                   memory_info=self.memory_info)
            self.device = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype.type,
                                                                   "cuda", self.device_id)
            self._key = key
        self.pinned.update_inplace(array)
        self.device.update_inplace(self.pinned)
        return self.device
