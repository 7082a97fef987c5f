"""Every SlowFast-LLaVA setting in one place (../shared/SPEC.md), as small frozen dataclasses.

Pure Python + numpy: imported by the reference, the exporter and the runtime alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# --- CLIP ViT-L/14 @ 336 geometry (SPEC 1-3) ---------------------------------------------
IMAGE_SIZE = 336
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE  # 24 patches per side
TOKENS_PER_FRAME = GRID * GRID  # 576
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISION_FEATURE_LAYER = -2  # hidden_states[-2], CLS dropped
IMAGE_TOKEN = "<image>"

SLOW_MODES = ("1d_max", "1d_avg", "2d_max", "2d_avg")


@dataclass(frozen=True)
class SamplingSpec:
    """How many frames to pick from a video (SPEC 2)."""

    num_frames: int = 50


def sample_frame_indices(total: int, num_frames: int = 50) -> list[int]:
    """SPEC 2, quirks included: n = min(total, N); seg = (total-1)/n;
    frame i = (round(seg*i) + round(seg*(i+1))) // 2 with numpy's half-to-even rounding."""
    if total < 1:
        raise ValueError(f"a video needs at least one frame, got {total}")
    n = min(total, num_frames)
    seg = (total - 1) / n
    return [int((np.round(seg * i) + np.round(seg * (i + 1))) // 2) for i in range(n)]


@dataclass(frozen=True)
class PreprocessSpec:
    """Per-frame preprocessing (SPEC 2): PIL bicubic resize to size x size, /255, CLIP norm."""

    size: int = IMAGE_SIZE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: str = "pil"  # "pil" (exact, default) or "cv2" (faster, documented deviation)


@dataclass(frozen=True)
class SlowFastSpec:
    """Token pooling after the projector (SPEC 4). Default: slow_10frms_spatial_1d_max_pool-fast_4x4."""

    slow_frames: int = 10
    slow_mode: str = "1d_max"  # one of SLOW_MODES
    fast_grid: int = 4

    def __post_init__(self) -> None:
        if self.slow_mode not in SLOW_MODES:
            raise ValueError(f"slow_mode must be one of {SLOW_MODES}, got {self.slow_mode!r}")
        if self.slow_frames < 1:
            raise ValueError(f"slow_frames must be >= 1, got {self.slow_frames}")
        if self.fast_grid < 1 or GRID % self.fast_grid:
            raise ValueError(f"fast_grid must divide {GRID}, got {self.fast_grid}")

    @property
    def slow_tokens_per_frame(self) -> int:
        # 1-D: pairs along each row (24 x 12); 2-D: 2x2 windows (12 x 12)
        return TOKENS_PER_FRAME // 2 if self.slow_mode.startswith("1d") else TOKENS_PER_FRAME // 4

    def num_tokens(self, num_frames: int) -> int:
        """Visual tokens for T frames: S * slow_tokens_per_frame + T * G * G."""
        return self.slow_frames * self.slow_tokens_per_frame + num_frames * self.fast_grid**2

    def name(self) -> str:
        return f"slow_{self.slow_frames}frms_spatial_{self.slow_mode}_pool-fast_{self.fast_grid}x{self.fast_grid}"


@dataclass(frozen=True)
class GenerationSpec:
    """Decoding (SPEC 6): greedy unless temperature > 0."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate exactly max_new_tokens

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:  # also rejects nan
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class PipelineSpec:
    """Everything that decides what the model sees, recorded in every manifest."""

    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    slowfast: SlowFastSpec = field(default_factory=SlowFastSpec)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineSpec":
        pre = dict(d.get("preprocess", {}))
        for k in ("mean", "std"):
            if k in pre:
                pre[k] = tuple(pre[k])
        return cls(
            sampling=SamplingSpec(**d.get("sampling", {})),
            preprocess=PreprocessSpec(**pre),
            slowfast=SlowFastSpec(**d.get("slowfast", {})),
        )
