"""VideoLLaMA3's video preprocessing in numpy: frame sampling, resize, normalisation, patches,
2-D positions and the compression mask (docs/videollama3.md, steps 1-5).

What transformers' `VideoLlama3VideoProcessor` computes, called with do_sample_frames=True, fps=1,
max_frames=180, min_frames=4 on decoded frames plus their VideoMetadata, and what its
`_get_compression_mask` keeps (threshold 0.1, min_tokens 1), without torch:

* sampling: n = floor(min(max(N / F * fps, min_frames), min(max_frames, N), N)) frames of N at the
  source rate F; indices = torch.arange(0, N, N / n).int() (a float32 ramp, truncated);
  timestamps index / F (in float32, as transformers' int32 indices make them);
* resize: `smart_resize` with factor patch x merge = 28 and the per-frame budget
  max_pixels // T (the video budget divided by the frame count), by torchvision's uint8 bicubic
  resize (runtime/videollama3_resize.py, bit-exact);
* normalise: (x - mean / rescale) / (std / rescale) in float32, as torchvision's fused normalise;
* patches [T, gh * gw, 3 * 14 * 14] in the processor's block-major order, positions (row, col);
* the mask: runtime/frame_diff.py's `videollama3_keep_mask` on 28 x 28 pixel blocks (one block =
  one merged token); frame 0 and single-frame videos are kept whole.

Only numpy and PIL (through runtime/video.py): the runtime imports this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import SfedgeError
from .frame_diff import videollama3_keep_mask
from .videollama3_resize import resize_bicubic_uint8

IMAGE_DIR_FPS = 1.0  # an image directory's frames are read as one per second (its timestamps 0, 1, 2 ...)


@dataclass(frozen=True)
class VideoProcessorSpec:
    """The processor settings the manifest records (docs/videollama3.md, "processor"); the defaults
    are transformers' VideoLlama3VideoProcessor's with the issue's call-time settings."""

    fps: float = 1.0
    max_frames: int = 180
    min_frames: int = 4
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 1
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 28 * 28 * 768
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    compression: bool = True
    threshold: float = 0.1
    min_tokens: int = 1

    def __post_init__(self) -> None:
        if self.temporal_patch_size != 1:
            raise SfedgeError(f"VideoLLaMA3 with temporal_patch_size {self.temporal_patch_size} is not supported "
                              "(the released models use 1)")

    @property
    def resample_factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_manifest(cls, processor: dict) -> "VideoProcessorSpec":
        """From manifest["processor"] (missing keys keep the defaults)."""
        comp = processor.get("compression") or {}
        keys = {f for f in cls.__dataclass_fields__ if f not in ("compression", "threshold", "min_tokens")}
        values = {k: processor[k] for k in keys if k in processor}
        for k in ("image_mean", "image_std"):
            if k in values:
                values[k] = tuple(float(v) for v in values[k])
        return cls(**values, compression=bool(comp.get("enabled", True)),
                   threshold=float(comp.get("threshold", 0.1)), min_tokens=int(comp.get("min_tokens", 1)))


@dataclass
class VideoInputs:
    """One video, ready for the vision graph: pixel_values [T, gh * gw, 3 * p * p] float32,
    position_ids [gh * gw, 2] int64, keep [T, (gh / m) * (gw / m)] bool (True: the token reaches the
    LLM), the sampled frame indices and their timestamps in seconds."""

    pixel_values: np.ndarray
    position_ids: np.ndarray
    keep: np.ndarray
    grid: tuple[int, int, int]  # (T, gh, gw) in patches
    indices: list[int]
    timestamps: list[float]
    size: tuple[int, int] = field(default=(0, 0))  # resized (height, width) in pixels

    @property
    def tokens_per_frame(self) -> int:
        return self.keep.shape[1]

    @property
    def kept_per_frame(self) -> list[int]:
        return [int(k) for k in self.keep.sum(axis=1)]

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def pruned(self) -> int:
        return int(self.keep.size - self.keep.sum())


def sample_indices(total: int, source_fps: float, spec: VideoProcessorSpec = VideoProcessorSpec()) -> list[int]:
    """VideoLlama3VideoProcessor.sample_frames with fps sampling (temporal_patch_size 1)."""
    if total < 1:
        raise SfedgeError("the video has no frames")
    if not source_fps or source_fps <= 0:
        raise SfedgeError("the video states no frame rate: VideoLLaMA3 samples by time and needs one")
    max_frames = min(spec.max_frames, total)
    n = total / source_fps * spec.fps
    n = math.floor(min(max(n, spec.min_frames), max_frames, total))
    step = total / n
    count = math.ceil(total / step)  # torch.arange's length
    ramp = (np.arange(count, dtype=np.float64) * step).astype(np.float32)  # torch's float32 arange
    return [min(int(i), total - 1) for i in np.trunc(ramp)]


def timestamps(indices: list[int], source_fps: float) -> list[float]:
    """Frame times in seconds as transformers computes them: its sampled indices are an int32 tensor,
    so `index / fps` is float32 maths (and "Time {t:.1f}s" formats that float32 value)."""
    return [float(np.float32(i) / np.float32(source_fps)) for i in indices]


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """transformers' VideoLLaMA3 `smart_resize`: both sides multiples of `factor`, the area within
    [min_pixels, max_pixels], the aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > 200:
        raise SfedgeError(f"frames of {width}x{height} are too elongated for VideoLLaMA3 (aspect ratio over 200)")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_size(height: int, width: int, num_frames: int, spec: VideoProcessorSpec = VideoProcessorSpec()) -> tuple[int, int]:
    """The resized (height, width) of every frame of a `num_frames`-frame video."""
    return smart_resize(height, width, spec.resample_factor, spec.min_pixels, spec.max_pixels // num_frames)


def normalise(frames: np.ndarray, spec: VideoProcessorSpec = VideoProcessorSpec()) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W]: (x - mean / rescale) / (std / rescale) in float32,
    the numbers torchvision's fused rescale + normalise gives."""
    scale = np.float32(1.0 / spec.rescale_factor)
    mean = np.asarray(spec.image_mean, np.float32) * scale
    std = np.asarray(spec.image_std, np.float32) * scale
    table = (np.arange(256, dtype=np.float32)[None, :] - mean[:, None]) / std[:, None]  # [3, 256]
    out = np.empty((frames.shape[0], 3) + frames.shape[1:3], np.float32)
    for c in range(3):
        np.take(table[c], frames[..., c], out=out[:, c])
    return out


def patchify(pixels: np.ndarray, patch: int = 14, merge: int = 2) -> np.ndarray:
    """float32 [T, 3, H, W] -> [T, gh * gw, 3 * patch * patch] in the processor's order: merge blocks
    row-major, the merge x merge patches of a block row-major, each patch channel-major (c, y, x)."""
    t, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    blocks = pixels.reshape(t, c, gh // merge, merge, patch, gw // merge, merge, patch)
    return np.ascontiguousarray(blocks.transpose(0, 2, 5, 3, 6, 1, 4, 7)).reshape(t, gh * gw, c * patch * patch)


def position_ids(gh: int, gw: int, merge: int = 2) -> np.ndarray:
    """int64 [gh * gw, 2]: (row, col) of each patch in `patchify`'s order (the 2-D RoPE positions)."""
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")

    def blocks(x: np.ndarray) -> np.ndarray:
        return x.reshape(gh // merge, merge, gw // merge, merge).transpose(0, 2, 1, 3).reshape(-1)

    return np.stack([blocks(rows), blocks(cols)], axis=1).astype(np.int64)


def preprocess_frames(frames: list[np.ndarray] | np.ndarray, indices: list[int], source_fps: float,
                      spec: VideoProcessorSpec = VideoProcessorSpec(), prune: bool = True) -> VideoInputs:
    """Sampled uint8 RGB frames (frame indices[k] of a video at `source_fps`) -> VideoInputs.
    `prune` False keeps every token (`--no-prune`; also when the manifest turns compression off)."""
    video = _stack(frames)
    t, h, w, _ = video.shape
    height, width = frame_size(h, w, t, spec)
    resized = resize_bicubic_uint8(video, height, width)
    pixels = normalise(resized, spec)
    gh, gw = height // spec.patch_size, width // spec.patch_size
    if prune and spec.compression:
        keep = videollama3_keep_mask(pixels, spec.threshold, spec.resample_factor, spec.min_tokens)
        keep = keep.reshape(t, -1)
    else:
        keep = np.ones((t, (gh // spec.merge_size) * (gw // spec.merge_size)), bool)
    return VideoInputs(patchify(pixels, spec.patch_size, spec.merge_size), position_ids(gh, gw, spec.merge_size),
                       keep, (t, gh, gw), list(indices), timestamps(indices, source_fps), (height, width))



def _stack(frames) -> np.ndarray:
    if len(frames) == 0:
        raise SfedgeError("no frames to preprocess")
    shapes = {np.asarray(f).shape for f in frames}
    if len(shapes) > 1:
        raise SfedgeError(f"VideoLLaMA3 needs frames of one size; got {len(shapes)} sizes "
                          f"({', '.join(f'{s[1]}x{s[0]}' for s in sorted(shapes)[:3])})")
    video = np.stack([np.asarray(f) for f in frames])
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise SfedgeError(f"frames must be HxWx3 uint8 RGB, got {video.shape[1:]} {video.dtype}")
    return video
