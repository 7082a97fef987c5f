"""torchvision's bicubic resize of uint8 frames, ported to numpy bit for bit.

VideoLLaMA3's video processor resizes uint8 tensors with `torchvision.transforms.v2.functional.resize`
(bicubic, antialias=True). On CPU torchvision hands uint8 straight to PyTorch's antialiased kernel
(`_upsample_bicubic2d_aa`, PyTorch's port of Pillow-SIMD), which differs from PIL's `Image.resize`:
its int16 weights carry as many fraction bits as fit (PIL: a fixed 22), and it always resamples
rows first, then columns, through a uint8 intermediate. That kernel, step for step:

* per output pixel i along an axis of `n_in` -> `n_out` pixels: scale = n_in / n_out,
  support = 2 * max(scale, 1), centre = scale * (i + 0.5), taps from
  trunc(centre - support + 0.5) (at least 0) to trunc(centre + support + 0.5) (at most n_in),
  weights Keys' cubic (a = -0.5) at (tap - centre + 0.5) / max(scale, 1), normalised to sum 1;
* the weights become int16 with `precision` fraction bits: the most bits (< 22) for which the
  largest weight times 2^(precision+1) stays under 2^15; rounded half away from zero;
* out = clip((sum(w * x) + 2^(precision-1)) >> precision, 0, 255), rows first (skipped when the
  width does not change), then columns (skipped when the height does not change).

tests/test_videollama3_preprocess.py checks it against torch.nn.functional.interpolate on uint8.
Only numpy: the runtime imports this.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_CHUNK_VALUES = 1 << 22  # pixel values resized per pass (32 MB as float64)
_DENSE_MULT = 32  # a matrix product when an input axis is at most this many times the taps per output
_A = -0.5  # Keys' cubic convolution parameter PyTorch's antialiased bicubic uses (as PIL does)


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((_A + 2) * x - (_A + 3)) * x * x + 1
    far = ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(first tap [n_out], int weights [n_out, k] (zero past each pixel's taps), precision) for one axis."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    k = int(np.ceil(support)) * 2 + 1
    centre = scale * (np.arange(n_out) + 0.5)
    first = np.maximum((centre - support + 0.5).astype(np.int64), 0)  # C++ casts truncate
    last = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    count = np.clip(last - first, 0, k)
    j = np.arange(k)
    weights = _cubic((first[:, None] + j[None, :] - centre[:, None] + 0.5) * invscale)
    weights = np.where(j[None, :] < count[:, None], weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0)
    w_max = weights.max()
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    ints = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return first, ints, precision


@lru_cache(maxsize=64)
def _dense(n_in: int, n_out: int) -> np.ndarray:
    """The same weights as an [n_out, n_in] float64 matrix (exact: integers far below 2^53)."""
    first, weights, _ = _taps(n_in, n_out)
    out = np.zeros((n_out, n_in + weights.shape[1]), np.float64)
    rows = np.arange(n_out)[:, None]
    out[rows, first[:, None] + np.arange(weights.shape[1])[None, :]] = weights
    return out[:, :n_in]


def _resample(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """One pass along `axis` (1: rows, 2: columns) of uint8 frames [N, H, W, C].

    Few input pixels per output (or a short axis): one float64 matrix product for all the frames,
    exact because every product and sum is an integer below 2^53; long windows (strong
    downscaling): a gather per tap in int32."""
    n_in = x.shape[axis]
    first, weights, precision = _taps(n_in, n_out)
    k = weights.shape[1]
    if n_in <= _DENSE_MULT * k:
        moved = np.moveaxis(x, axis, -1)  # [..., n_in]
        acc = np.ascontiguousarray(moved).reshape(-1, n_in).astype(np.float64) @ _dense(n_in, n_out).T
        out = np.floor((acc + (1 << (precision - 1))) * (1.0 / (1 << precision)))
        out = np.clip(out, 0, 255).astype(np.uint8).reshape(moved.shape[:-1] + (n_out,))
        return np.moveaxis(out, -1, axis)
    # taps past the input's end have weight 0: clamping their index keeps the gather in bounds
    index = np.minimum(first[:, None] + np.arange(k)[None, :], n_in - 1)  # [n_out, k]
    shape = [1] * x.ndim
    shape[axis] = n_out
    acc = np.full(tuple(n_out if a == axis else d for a, d in enumerate(x.shape)), 1 << (precision - 1), np.int32)
    for j in range(k):
        w = weights[:, j]
        if w.any():
            acc += w.reshape(shape) * np.take(x, index[:, j], axis=axis).astype(np.int32)
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def resize_bicubic_uint8(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [..., H, W, C] -> uint8 [..., height, width, C], as torchvision's CPU bicubic
    (antialias=True) resize of the same frames as a uint8 [..., C, H, W] tensor."""
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    *lead, h, w, c = frames.shape
    flat = frames.reshape(-1, h, w, c)
    out = np.empty((flat.shape[0], height, width, c), np.uint8)
    step = max(1, _CHUNK_VALUES // max(1, h * w * c))  # frames per pass: the float64 temporaries stay small
    for i in range(0, len(flat), step):
        chunk = flat[i:i + step]
        if w != width:
            chunk = _resample(chunk, 2, width)
        if h != height:
            chunk = _resample(chunk, 1, height)
        out[i:i + step] = chunk
    return out.reshape(*lead, height, width, c)
