"""Frame differences patch by patch (SPEC 8): which frames, or which patches, changed.

Two criteria on the same patch grid (14 x 14 pixels, the vision tower's patches):

* `patch_mad` / `FrameSkipper`: mean absolute difference per patch in 0-255 units on the uint8
  frames after the resize and before normalisation. `watch --skip-threshold X` skips a frame (reuses
  the features of the last frame it encoded) when every patch changed by less than X versus that
  encoded frame; comparing with the last ENCODED frame, not the previous one, stops a slow drift
  from being skipped forever.
* `videollama3_keep_mask`: VideoLLaMA3's token compression (its video processor's
  `_get_compression_mask`): on normalised pixels, a patch of frame t is kept when
  mean|x_t - x_{t-1}| * 255 > threshold (0.1), versus the previous frame; the first frame is kept
  whole and every frame keeps at least `min_tokens` patches. Patch pruning can reuse `patch_mad`'s
  grid through `patch_mean_abs_diff`.

Only numpy: the runtime (and the server's hot path) imports this.
"""

from __future__ import annotations

import numpy as np

PATCH = 14  # CLIP ViT-L/14's patch size: the grid the vision tower sees
# `watch`'s default --skip-threshold, measured (docs/BENCHMARKS.md, "Frame skipping"): the largest
# threshold that skipped no frame of a moving object (any noise, 2 and 10 fps) nor of real footage,
# while skipping >= 92% of a static scene's frames at every noise level measured (sigma 0-8, H.264)
DEFAULT_SKIP_THRESHOLD = 4.0


def patch_mean_abs_diff(a: np.ndarray, b: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """Mean |a - b| over each patch x patch region (all channels): [..., H, W, C] -> [..., H/p, W/p].
    Works on uint8 (exact integer sums) or float arrays; H and W must be multiples of `patch`."""
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    *lead, h, w, c = a.shape
    if h % patch or w % patch:
        raise ValueError(f"frame {h}x{w} is not a whole number of {patch}-pixel patches")
    exact = a.dtype == np.uint8
    diff = np.abs(a.astype(np.int16) - b) if exact else np.abs(a.astype(np.float64) - b)
    regions = diff.reshape(*lead, h // patch, patch, w // patch, patch, c)
    n = len(lead)
    sums = regions.sum(axis=(n + 1, n + 3, n + 4), dtype=np.int32 if exact else np.float64)
    return sums / float(patch * patch * c)


def patch_mad(frame: np.ndarray, reference: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """uint8 [H, W, 3] frames (resized, not normalised) -> [H/p, W/p] mean absolute differences, 0-255."""
    return patch_mean_abs_diff(frame, reference, patch)


class FrameSkipper:
    """Decides, frame by frame, whether a frame may reuse the last encoded frame's features.

    `threshold` None: never skip. Otherwise `skip(frame)` is True when every patch of `frame`
    differs from the last encoded frame by less than `threshold` (mean absolute difference, 0-255);
    call `encoded(frame)` after encoding a frame. `last_max_mad`: the largest patch difference of the
    last frame compared (for measurements)."""

    def __init__(self, threshold: float | None, patch: int = PATCH):
        if threshold is not None and not 0 <= threshold <= 255:
            raise ValueError(f"skip threshold must be within 0-255, got {threshold}")
        self.threshold, self.patch = threshold, patch
        self.reference: np.ndarray | None = None
        self.last_max_mad: float | None = None

    def skip(self, frame: np.ndarray) -> bool:
        if self.threshold is None or self.reference is None:
            return False
        self.last_max_mad = float(patch_mad(frame, self.reference, self.patch).max())
        return self.last_max_mad < self.threshold

    def encoded(self, frame: np.ndarray) -> None:
        if self.threshold is not None:
            self.reference = frame.copy()


def videollama3_keep_mask(pixels: np.ndarray, threshold: float = 0.1, patch: int = PATCH,
                          min_tokens: int = 1) -> np.ndarray:
    """VideoLLaMA3's criterion on normalised pixels [T, 3, H, W] (or [T, H, W, 3] with
    `channels_last`-shaped input detected by the last axis being 3): bool [T, H/p, W/p], True where a
    patch is kept. Frame 0 is kept whole; a patch of frame t > 0 is kept when its mean absolute
    difference to frame t-1, times 255, exceeds `threshold`; each frame keeps at least `min_tokens`
    patches (the first ones in raster order, as VideoLLaMA3 does)."""
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be [T, 3, H, W], got shape {pixels.shape}")
    hwc = pixels if pixels.shape[-1] == 3 else np.moveaxis(pixels, 1, -1)
    t, h, w, _ = hwc.shape
    keep = np.ones((t, h // patch, w // patch), bool)
    if t > 1:
        keep[1:] = patch_mean_abs_diff(hwc[1:], hwc[:-1], patch) * 255 > threshold
        flat = keep.reshape(t, -1)
        for i in np.nonzero(flat.sum(axis=1) < min_tokens)[0]:
            flat[i, :min_tokens] = True
    return keep
