"""SlowFast token pooling (SPEC 4) as a torch module that exports to ONNX with T dynamic.

Input: projected features of T frames, [T, 576, D]. Output: slow tokens then fast tokens,
[S * k + T * G * G, D] (k = 288 for the 1-D modes, 144 for the 2x2 modes). Everything that depends
on T is computed with tensor ops, so one exported graph serves every frame count.
"""

from __future__ import annotations

import torch

from ..spec import GRID, TOKENS_PER_FRAME, SlowFastSpec


DEFAULT_TABLE_FRAMES = 256


def slow_indices(num_frames: int, slow_frames: int) -> torch.Tensor:
    """The reference code's own `torch.linspace(0, T, S + 1).to(torch.int32)[:-1]` (int64 for
    indexing). torch's float32 linspace is the definition: for some S other than the default 10
    it differs from numpy's float64 linspace or from (i * T) // S (S = 20, T = 164: index 15 is 123
    here, 122 in numpy). For S = 10 all three agree for every T up to 4096."""
    return torch.linspace(0, num_frames, slow_frames + 1).to(torch.int32)[:-1].to(torch.int64)


def slow_index_table(max_frames: int, slow_frames: int) -> torch.Tensor:
    """[max_frames + 1, S]: row T holds slow_indices(T, S) (row 0 unused). The exported graph gathers
    row T from this constant, so it reproduces torch.linspace exactly for every T it accepts."""
    rows = [torch.zeros(slow_frames, dtype=torch.int64)]
    rows += [slow_indices(t, slow_frames) for t in range(1, max_frames + 1)]
    return torch.stack(rows)


class SlowFastPool(torch.nn.Module):
    """Slow pathway: S frames at `slow_indices`, each pooled over pairs (1-D) or 2x2 windows (2-D)
    of its 24x24 token grid. Fast pathway: every frame adaptive-average-pooled to G x G."""

    def __init__(self, spec: SlowFastSpec = SlowFastSpec(), max_frames: int = DEFAULT_TABLE_FRAMES):
        """`max_frames`: rows of the slow-index table (the exported graph's largest T; eager calls
        with more frames compute their indices directly)."""
        super().__init__()
        self.spec = spec
        self.register_buffer("slow_table", slow_index_table(max_frames, spec.slow_frames), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[T, 576, D] -> [S * k + T * G * G, D], frame-major, row-major within a frame."""
        return torch.cat([self.slow(features), self.fast(features)], dim=0)

    def slow(self, features: torch.Tensor) -> torch.Tensor:
        """[T, 576, D] -> [S * k, D]."""
        s, dim = self.spec.slow_frames, features.shape[-1]
        if not torch.onnx.is_in_onnx_export() and features.shape[0] >= self.slow_table.shape[0]:
            idx = slow_indices(features.shape[0], s)
        else:  # T as a tensor op, so the exported graph gathers the right row for every T
            idx = self.slow_table[torch.ones_like(features[:, 0, 0], dtype=torch.int64).sum()]
        x = features.index_select(0, idx)
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
