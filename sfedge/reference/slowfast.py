"""SlowFast token pooling (SPEC 4) as a torch module that exports to ONNX with T dynamic.

Input: projected features of T frames, [T, 576, D]. Output: slow tokens then fast tokens,
[S * k + T * G * G, D] (k = 288 for the 1-D modes, 144 for the 2x2 modes). Everything that depends
on T is computed with tensor ops, so one exported graph serves every frame count.
"""

from __future__ import annotations

import torch

from ..spec import GRID, TOKENS_PER_FRAME, SlowFastSpec


def slow_indices(num_frames: torch.Tensor, slow_frames: int) -> torch.Tensor:
    """`int32(linspace(0, T, S + 1))[:-1]` from a 0-d tensor T, with numpy's float64 arithmetic:
    trunc(i * (T / S)). (An integer `(i * T) // S` differs from numpy for some S and T, e.g.
    S = 20, T = 164.) The values are >= 0, so floor is trunc; int64 for indexing."""
    step = num_frames.to(torch.float64) / slow_frames
    return torch.floor(torch.arange(slow_frames, dtype=torch.float64) * step).to(torch.int64)


class SlowFastPool(torch.nn.Module):
    """Slow pathway: S frames at `slow_indices`, each pooled over pairs (1-D) or 2x2 windows (2-D)
    of its 24x24 token grid. Fast pathway: every frame adaptive-average-pooled to G x G."""

    def __init__(self, spec: SlowFastSpec = SlowFastSpec()):
        super().__init__()
        self.spec = spec

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[T, 576, D] -> [S * k + T * G * G, D], frame-major, row-major within a frame."""
        return torch.cat([self.slow(features), self.fast(features)], dim=0)

    def slow(self, features: torch.Tensor) -> torch.Tensor:
        """[T, 576, D] -> [S * k, D]."""
        s, dim = self.spec.slow_frames, features.shape[-1]
        num_frames = torch.ones_like(features[:, 0, 0], dtype=torch.int64).sum()  # T as a tensor
        x = features.index_select(0, slow_indices(num_frames, s))
        reduce_max = self.spec.slow_mode.endswith("max")
        if self.spec.slow_mode.startswith("1d"):  # horizontally adjacent pairs: 24 rows x 12 cols
            x = x.reshape(s, TOKENS_PER_FRAME // 2, 2, dim)
            x = x.amax(dim=2) if reduce_max else x.mean(dim=2)
        else:  # 2x2 windows on the 24x24 grid: 12 x 12
            x = x.reshape(s, GRID // 2, 2, GRID // 2, 2, dim)
            x = x.amax(dim=(2, 4)) if reduce_max else x.mean(dim=(2, 4))
        return x.reshape(-1, dim)

    def fast(self, features: torch.Tensor) -> torch.Tensor:
        """[T, 576, D] -> [T * G * G, D]: mean over (24/G) x (24/G) windows (G divides 24, so this is
        exactly adaptive average pooling)."""
        g, dim = self.spec.fast_grid, features.shape[-1]
        w = GRID // g
        x = features.reshape(-1, g, w, g, w, dim).mean(dim=(2, 4))
        return x.reshape(-1, dim)
