"""Frames -> CLIP pixel tensor (SPEC 2): resize to size x size, /255, CLIP mean/std, CHW.

The default resize is PIL's bicubic `Image.resize` (antialiased when shrinking), exactly as
the reference. `PreprocessSpec(resize="cv2")` uses OpenCV instead (INTER_AREA when shrinking,
INTER_CUBIC otherwise): faster, with a small measured deviation (tests/test_preprocess.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..spec import PreprocessSpec

RESIZERS = ("pil", "cv2")


def preprocess(frames: Sequence[np.ndarray], spec: PreprocessSpec = PreprocessSpec(),
               workers: int | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB frames -> float32 [T, 3, size, size], normalised with spec.mean / spec.std:
    `normalise(resize_frames(frames))`, in one pass per frame.

    Frames are resized and normalised by a pool of `workers` threads (None: one per CPU core, at
    most one per frame; 1: inline). PIL's and OpenCV's resizes and numpy's gather release the GIL,
    so the frames really run in parallel; every frame goes through exactly the same operations,
    so the result does not depend on `workers`."""
    resize = _resizer(spec)
    lut = _normalisation_table(spec.mean, spec.std)
    out = np.empty((_count(frames), 3, spec.size, spec.size), np.float32)
    _per_frame(len(frames), workers, lambda i: _normalise_one(resize(np.asarray(frames[i]), spec.size), lut, out[i]))
    return out


def resize_frames(frames: Sequence[np.ndarray], spec: PreprocessSpec = PreprocessSpec(),
                  workers: int | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB frames -> uint8 [T, size, size, 3], resized as `preprocess` resizes them (the
    frames that live video compares before normalisation, SPEC 8)."""
    resize = _resizer(spec)
    out = np.empty((_count(frames), spec.size, spec.size, 3), np.uint8)

    def one(i: int) -> None:
        out[i] = resize(np.asarray(frames[i]), spec.size)

    _per_frame(len(frames), workers, one)
    return out


def normalise(resized: np.ndarray, spec: PreprocessSpec = PreprocessSpec()) -> np.ndarray:
    """uint8 [T, size, size, 3] (from `resize_frames`) -> float32 [T, 3, size, size]: the same numbers
    as `preprocess` gives for the frames they were resized from."""
    lut = _normalisation_table(spec.mean, spec.std)
    out = np.empty((len(resized), 3, spec.size, spec.size), np.float32)
    for i in range(len(resized)):
        _normalise_one(resized[i], lut, out[i])
    return out


def _normalise_one(img: np.ndarray, lut: np.ndarray, out: np.ndarray) -> None:
    for c in range(3):  # one gather per channel straight into CHW: same numbers as (x/255 - mean)/std
        np.take(lut[c], img[..., c], out=out[c])


def _resizer(spec: PreprocessSpec):
    if spec.resize not in RESIZERS:
        raise ValueError(f"resize must be one of {RESIZERS}, got {spec.resize!r}")
    return _resize_pil if spec.resize == "pil" else _resize_cv2


def _count(frames) -> int:
    if len(frames) == 0:
        raise ValueError("preprocess needs at least one frame")
    return len(frames)


def _per_frame(n: int, workers: int | None, one) -> None:
    """one(i) for i < n, on a pool of `workers` threads (None: one per core, at most one per frame)."""
    workers = min(n, workers or os.cpu_count() or 1)
    if workers <= 1:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(one, range(n)):  # re-raises a worker's exception
                pass


def _normalisation_table(mean, std) -> np.ndarray:
    """[3, 256] float32: (v / 255 - mean[c]) / std[c] for every uint8 value v, in float32 maths."""
    values = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return (values[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]


def _resize_pil(frame: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BICUBIC))


def _resize_cv2(frame: np.ndarray, size: int) -> np.ndarray:
    import cv2  # optional dependency, only for this documented faster path

    height, width = frame.shape[:2]
    shrinking = size < width and size < height
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
