"""VideoLLaMA3's encoder stage: a video -> the visual tokens that reach the LLM.

Preprocessing (runtime/videollama3_preprocess.py: sampling by time, the per-frame pixel budget,
torchvision's bicubic resize, patches, 2-D positions, the DiffFP compression mask), then the vision
engine (docs/videollama3.md: pixel_values [T, P, 588] + position_ids [P, 2] -> features
[T, P / 4, D], attention within each frame) run over at most the engines' max_frames frames at a
time (exact: frames never attend to each other), then the mask: only the kept tokens, frame-major
and row-major, go on to the LLM. Pruned tokens are computed by the vision engine (a kept token
attends to the whole frame) but never leave this stage.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import SfedgeError
from .engines import Engine
from .videollama3_preprocess import VideoInputs


class VideoLlama3Encoder:
    """The vision engine, opened once; `max_frames`: the most frames one run takes (the export's)."""

    def __init__(self, vision: Engine, max_frames: int | None = None):
        self.vision, self.max_frames = vision, max_frames

    def features(self, video: VideoInputs, timings: dict[str, float] | None = None) -> np.ndarray:
        """All frames' features [T, P / 4, D] (numpy), before the mask."""
        t = time.perf_counter()
        step = self.max_frames or len(video.pixel_values)
        parts = []
        for i in range(0, len(video.pixel_values), step):
            out = self.vision.infer({"pixel_values": video.pixel_values[i:i + step],
                                     "position_ids": video.position_ids})
            parts.append(np.asarray(out["features"]))
        if timings is not None:
            timings["vision"] = timings.get("vision", 0.0) + (time.perf_counter() - t) * 1e3
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def kept_tokens(self, video: VideoInputs, timings: dict[str, float] | None = None) -> np.ndarray:
        """The visual tokens the LLM sees: [kept, D], frame by frame, in raster order."""
        feats = self.features(video, timings)
        if feats.shape[:2] != video.keep.shape:
            raise SfedgeError(f"the vision engine made features {list(feats.shape)} for a keep mask "
                             f"{list(video.keep.shape)}: engines and preprocessing disagree")
        return feats.reshape(-1, feats.shape[-1])[video.keep.reshape(-1)]
