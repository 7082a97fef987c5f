"""The encoder stage: frames -> projected visual features [T, 576, D] (SPEC 2-3).

Preprocessing (PIL bicubic resize, CLIP normalisation) and the vision engine (CLIP through layer -2,
CLS dropped, projector). Nothing here knows about questions, pooling or the LLM: `ask` encodes a
sampled clip at once, `watch` encodes each frame once as it arrives and keeps its features.

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
from .engines import Engine
from .preprocess import normalise, preprocess


def frame_key(frame: np.ndarray) -> bytes:
    """A content hash of one frame (its shape and pixels): 16 bytes of BLAKE2b."""
    frame = np.ascontiguousarray(frame)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((frame.shape, frame.dtype.str)).encode())
    h.update(frame.data)
    return h.digest()


class Encoder:
    """Preprocessing and the vision engine, opened once."""

    def __init__(self, vision: Engine, spec: PreprocessSpec, max_frames: int | None = None):
        self.vision, self.spec, self.max_frames = vision, spec, max_frames
        self._input = next(iter(vision.inputs))

    def encode(self, frames: Sequence[np.ndarray], *, on_device: bool = False,
               timings: dict[str, float] | None = None):
        """HxWx3 uint8 RGB frames -> features [T, 576, D] (a numpy array, or an OrtValue left on the
        engine's device when `on_device`). Adds "preprocess" and "vision" ms to `timings`."""
        t = time.perf_counter()
        pixels = preprocess(frames, self.spec)
        _add(timings, "preprocess", t)
        return self.encode_pixels(pixels, on_device=on_device, timings=timings)

    def encode_resized(self, resized: np.ndarray, *, on_device: bool = False,
                       timings: dict[str, float] | None = None):
        """Frames already resized to uint8 [T, size, size, 3] (`preprocess.resize_frames`) -> features."""
        t = time.perf_counter()
        pixels = normalise(resized, self.spec)
        _add(timings, "preprocess", t)
        return self.encode_pixels(pixels, on_device=on_device, timings=timings)

    def encode_pixels(self, pixels: np.ndarray, *, on_device: bool = False,
                      timings: dict[str, float] | None = None):
        """Normalised pixels [T, 3, size, size] -> features."""
        if self.max_frames and len(pixels) > self.max_frames:
            raise SfedgeError(f"{len(pixels)} frames exceed the engines' max_frames {self.max_frames}")
        t = time.perf_counter()
        (features,) = self.vision.infer({self._input: pixels}, on_device=on_device).values()
        _add(timings, "vision", t)
        return features


def _add(timings: dict[str, float] | None, stage: str, start: float) -> None:
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1e3
