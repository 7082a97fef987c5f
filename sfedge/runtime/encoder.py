"""The encoder stage: frames -> projected visual features [T, 576, D] (SPEC 2-3).

The host resizes (PIL bicubic, `preprocess.resize_frames`) to uint8 [T, 336, 336, 3]; the vision
engine (manifest schema 2) takes those bytes, normalises them itself (/255, CLIP mean / std) and runs
CLIP through layer -2, CLS dropped, and the projector. On a GPU (ONNX Runtime's CUDA or TensorRT
EP) the frames go up through a pinned staging buffer (`upload.PinnedUpload`) where ONNX Runtime
offers one. Nothing here knows about questions, pooling or the LLM: `ask` encodes a sampled clip at once, `watch` encodes each frame once as it arrives and keeps its features.

Frames are identified by content (`frame_key`), never by where they came from: the answer stage's
prefix cache recognises visual tokens it has seen by these keys.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np

from ..errors import SfedgeError
from ..spec import PreprocessSpec
from .engines import Engine, OrtEngine
from .preprocess import resize_frames
from .upload import PinnedUpload


def frame_key(frame: np.ndarray) -> bytes:
    """A content hash of one frame (its shape and pixels): 16 bytes of BLAKE2b."""
    frame = np.ascontiguousarray(frame)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((frame.shape, frame.dtype.str)).encode())
    h.update(frame.data)
    return h.digest()


class Encoder:
    """Resizing and the vision engine, opened once."""

    def __init__(self, vision: Engine, spec: PreprocessSpec, max_frames: int | None = None):
        self.vision, self.spec, self.max_frames = vision, spec, max_frames
        self._input = next(iter(vision.inputs))
        info = vision.inputs[self._input]
        if info.dtype is not np.uint8 or tuple(info.shape[1:]) != (spec.size, spec.size, 3):
            raise SfedgeError(f"the vision engine's input {self._input} is {np.dtype(info.dtype).name} "
                              f"{list(info.shape)}, not uint8 [T, {spec.size}, {spec.size}, 3] frames: re-export the "
                              f"engines with this sfedge (`sfedge export ... --force`)")
        # ONNX Runtime on the GPU (CUDA or TensorRT EP) only: a native TrtEngine copies with its own
        # stream, and on the CPU the array is bound as it is
        self._pinned = PinnedUpload.create() if isinstance(vision, OrtEngine) and vision.device == "cuda" else None
        self.upload = "pinned" if self._pinned else "pageable" if vision.device == "cuda" else "host"

    def encode(self, frames: Sequence[np.ndarray], *, on_device: bool = False,
               timings: dict[str, float] | None = None):
        """HxWx3 uint8 RGB frames -> features [T, 576, D] (a numpy array, or an OrtValue left on the
        engine's device when `on_device`). Adds "preprocess" (the resize) and "vision" ms to `timings`."""
        t = time.perf_counter()
        resized = resize_frames(frames, self.spec)
        _add(timings, "preprocess", t)
        return self.encode_resized(resized, on_device=on_device, timings=timings)

    def encode_resized(self, resized: np.ndarray, *, on_device: bool = False,
                       timings: dict[str, float] | None = None):
        """Frames already resized to uint8 [T, size, size, 3] (`preprocess.resize_frames`) -> features.
        The upload to the device (if any) counts as "vision" time."""
        if self.max_frames and len(resized) > self.max_frames:
            raise SfedgeError(f"{len(resized)} frames exceed the engines' max_frames {self.max_frames}")
        t = time.perf_counter()
        frames = self._pinned(resized) if self._pinned else resized
        (features,) = self.vision.infer({self._input: frames}, on_device=on_device).values()
        _add(timings, "vision", t)
        return features


def _add(timings: dict[str, float] | None, stage: str, start: float) -> None:
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1e3
