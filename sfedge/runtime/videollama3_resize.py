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

The sums are float64 matrix products over bands of outputs (exact: integers far below 2^53).

tests/test_videollama3_preprocess.py checks it against torch.nn.functional.interpolate on uint8.
Only numpy (and threadpoolctl): the runtime imports this.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from threadpoolctl import threadpool_limits

_CHUNK_VALUES = 1 << 22  # pixel values resized per pass (32 MB as float64)
_GROUP = 16  # outputs per matrix product: their filter windows span few inputs even when downscaling hard
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
def _bands(n_in: int, n_out: int) -> list[tuple[int, int, int, int, np.ndarray]]:
    """The weights as float64 matrices over bands of `_GROUP` consecutive outputs: (first output,
    end, first input, end, [inputs, outputs] weights) with only the inputs the band's taps reach, so
    a strong downscale multiplies by its filter windows instead of the whole axis. Exact: every
    product and sum is an integer far below 2^53."""
    first, weights, _ = _taps(n_in, n_out)
    k = weights.shape[1]
    dense = np.zeros((n_out, n_in + k), np.float64)
    dense[np.arange(n_out)[:, None], first[:, None] + np.arange(k)[None, :]] = weights
    bands = []
    for o0 in range(0, n_out, _GROUP):
        o1 = min(n_out, o0 + _GROUP)
        i0, i1 = int(first[o0:o1].min()), int(min(n_in, (first[o0:o1] + k).max()))
        bands.append((o0, o1, i0, i1, np.ascontiguousarray(dense[o0:o1, i0:i1].T)))
    return bands


def _resample(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """One pass along `axis` (1: rows, 2: columns) of uint8 frames [N, H, W, C]: a float64 matrix
    product per band of outputs, then the kernel's rounding shift and uint8 saturation."""
    n_in = x.shape[axis]
    _, _, precision = _taps(n_in, n_out)
    moved = np.moveaxis(x, axis, -1)  # [..., n_in]
    values = np.ascontiguousarray(moved).reshape(-1, n_in).astype(np.float64)
    acc = np.empty((values.shape[0], n_out), np.float64)
    for o0, o1, i0, i1, w in _bands(n_in, n_out):
        np.matmul(values[:, i0:i1], w, out=acc[:, o0:o1])
    out = np.floor((acc + (1 << (precision - 1))) * (1.0 / (1 << precision)))
    out = np.clip(out, 0, 255).astype(np.uint8).reshape(moved.shape[:-1] + (n_out,))
    return np.moveaxis(out, -1, axis)


def resize_bicubic_uint8(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [..., H, W, C] -> uint8 [..., height, width, C], as torchvision's CPU bicubic
    (antialias=True) resize of the same frames as a uint8 [..., C, H, W] tensor."""
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    *lead, h, w, c = frames.shape
    flat = frames.reshape(-1, h, w, c)
    out = np.empty((flat.shape[0], height, width, c), np.uint8)
    step = max(1, _CHUNK_VALUES // max(1, h * w * c))  # frames per pass: the float64 temporaries stay small
    # many small products: BLAS's thread pool costs more than it gives (10.8 s vs 1.3 s for 180 720p
    # frames on the shared 2-core VM, scripts/videollama3_preprocess_bench.py)
    with threadpool_limits(limits=1, user_api="blas"):
        for i in range(0, len(flat), step):
            chunk = flat[i:i + step]
            if w != width:
                chunk = _resample(chunk, 2, width)
            if h != height:
                chunk = _resample(chunk, 1, height)
            out[i:i + step] = chunk
    return out.reshape(*lead, height, width, c)
