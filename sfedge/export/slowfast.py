"""The SlowFast graph: features [T,576,D] -> visual_tokens [S*k + T*G*G, D].

Exports the reference's `SlowFastPool` itself (one pooling implementation in the project), for the
spec's slow frames, slow mode and fast grid, with T dynamic (T < S included: the slow indices are
gathered from a constant [max_frames + 1, S] table of the reference's torch.linspace indices,
repeating as SPEC 4 says). The graph takes and returns the features' dtype
(float16 for an fp16 export: pooling is max / mean, it needs no wider type).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..reference.slowfast import SlowFastPool
from ..spec import TOKENS_PER_FRAME, SlowFastSpec
from .graphs import export_onnx
from .registry import ComponentSpec, slowfast_spec

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16"}


def component_spec(spec: SlowFastSpec, hidden: int, max_frames: int, dtype: torch.dtype) -> ComponentSpec:
    return slowfast_spec(hidden, max_frames, spec.num_tokens(1), spec.num_tokens(max_frames), DTYPE_NAMES[dtype])


def export_slowfast(spec: SlowFastSpec, hidden: int, max_frames: int, out_dir: Path,
                    dtype: torch.dtype = torch.float32) -> tuple[Path, ComponentSpec]:
    """Write out_dir/slowfast.onnx. The dummy has T = min(max_frames, 3) frames: an export shape that
    validation (T = 1, 7, 50) never reuses."""
    cspec = component_spec(spec, hidden, max_frames, dtype)
    dummy = torch.randn(min(max_frames, 3), TOKENS_PER_FRAME, hidden, dtype=dtype)
    return export_onnx(SlowFastPool(spec, max_frames).eval(), dummy, cspec, out_dir), cspec
