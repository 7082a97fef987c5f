"""The vision graph: frames uint8 [T,336,336,3] -> features [T,576,D].

The graph takes the frames as the host's resize leaves them (PIL bicubic, SPEC 2: uint8, NHWC,
RGB) and does the rest of SPEC 2's preprocessing itself (`FrameNormalisation`: cast to float32,
NHWC -> NCHW, /255, CLIP mean / std, in float32, in the same order as the host's
`runtime.preprocess.normalise`), so the host does no per-pixel float work and a quarter of the
bytes cross to the device (manifest schema 2). The PyTorch reference is untouched: it still takes
the host-normalised float pixels, which is how validation checks the in-graph normalisation.

`VisionEncoder` is CLIP truncated where LLaVA reads it (SPEC 3): embeddings, pre-layernorm,
encoder layers up to the one that produces hidden_states[vision_feature_layer] (-2: all but the
last), CLS dropped, then the projector. The unused last layer and post_layernorm are not in the
module, so they are not in the graph.

The exporter and its choice are in graphs.py; the weights go to an external data file (`vision.onnx.data`): CLIP-L + a
4096-wide projector is ~1.2 GB fp32, close to protobuf's 2 GB limit.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..errors import SfedgeError
from ..spec import IMAGE_SIZE, PreprocessSpec
from .graphs import export_onnx
from .registry import ComponentSpec, vision_spec


class FrameNormalisation(nn.Module):
    """uint8 [T, S, S, 3] -> float32 [T, 3, S, S]: (x / 255 - mean[c]) / std[c] in float32 (SPEC 2).

    The Cast comes first (TensorRT takes uint8 network inputs only into a cast), then the transpose.
    Each step is one correctly rounded float32 operation with the same operands as
    `runtime.preprocess._normalisation_table`, so the result equals the host's bit for bit unless
    a backend rewrites the arithmetic (tests/test_vision_uint8.py measures it)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(torch.float32).permute(0, 3, 1, 2)
        return (x / 255.0 - self.mean) / self.std


class VisionEncoder(nn.Module):
    """CLIP through hidden_states[feature_layer] with CLS dropped, then the LLaVA projector.

    `dtype` float16 makes an fp16 copy of the weights; the pixels are normalised in float32 and
    cast inside, and the features are float16."""

    def __init__(self, vision_tower: nn.Module, projector: nn.Module, feature_layer: int = -2,
                 dtype: torch.dtype = torch.float32, normalise: nn.Module | None = None):
        super().__init__()
        self.normalise = normalise  # FrameNormalisation: uint8 frames in; None: normalised pixels in
        tower = getattr(vision_tower, "vision_model", vision_tower)  # transformers 4 nests it
        layers = tower.encoder.layers
        # hidden_states has len(layers) + 1 entries (embeddings first): index k is the output of layers[:k]
        keep = feature_layer % (len(layers) + 1)
        if keep < 1:
            raise ValueError(f"vision_feature_layer {feature_layer} selects no encoder layer")
        self.embeddings = tower.embeddings
        self.pre_layrnorm = tower.pre_layrnorm
        self.layers = nn.ModuleList(layers[:keep])
        self.projector = projector
        self.compute_dtype = dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.normalise is not None:
            pixels = self.normalise(pixels)
        h = self.embeddings(pixels.to(self.compute_dtype))
        h = self.pre_layrnorm(h)
        for layer in self.layers:
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        return self.projector(h[:, 1:])


def build_vision(llava: nn.Module, dtype: torch.dtype = torch.float32,
                 preprocess: PreprocessSpec | None = None) -> VisionEncoder:
    """The truncated encoder from a LlavaNextForConditionalGeneration (transformers 4 or 5 layout);
    with `preprocess`, it takes uint8 NHWC frames and normalises them with its mean / std first.

    For fp16 the tower and projector are deep-copied before `.half()` so the caller's fp32
    reference stays untouched."""
    inner = getattr(llava, "model", llava)
    tower, projector = inner.vision_tower, inner.multi_modal_projector
    layer = llava.config.vision_feature_layer
    if not isinstance(layer, int):
        raise SfedgeError(f"vision_feature_layer {layer!r}: only a single layer is supported")
    if llava.config.vision_feature_select_strategy != "default":
        raise SfedgeError("only vision_feature_select_strategy 'default' (CLS dropped) is supported")
    if dtype != torch.float32:
        tower, projector = copy.deepcopy(tower).to(dtype), copy.deepcopy(projector).to(dtype)
    normalise = None if preprocess is None else FrameNormalisation(preprocess.mean, preprocess.std)
    return VisionEncoder(tower, projector, layer, dtype, normalise).eval()


def normalisation_record(preprocess: PreprocessSpec) -> dict:
    """What the manifest records about the graph's own normalisation (schema 2)."""
    return {"in_graph": True, "formula": "(x / 255 - mean[c]) / std[c], float32", "mean": list(preprocess.mean),
            "std": list(preprocess.std)}


def export_vision(llava: nn.Module, max_frames: int, out_dir: Path, dtype: torch.dtype = torch.float32,
                  preprocess: PreprocessSpec = PreprocessSpec()) -> tuple[Path, ComponentSpec]:
    """Write out_dir/vision.onnx (+ .data) and return (path, ComponentSpec). Frames are uint8 NHWC,
    normalised inside with `preprocess`'s mean / std; features are float32 or float16 (`dtype`).
    The dummy has 2 frames, a shape validation never uses."""
    if preprocess.size != IMAGE_SIZE:
        raise SfedgeError(f"the vision graph takes {IMAGE_SIZE}x{IMAGE_SIZE} frames, not {preprocess.size}")
    module = build_vision(llava, dtype, preprocess)
    spec = vision_spec(llava.config.text_config.hidden_size, max_frames,
                       "float16" if dtype == torch.float16 else "float32")
    dummy = torch.randint(0, 256, (min(max_frames, 2), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
    return export_onnx(module, dummy, spec, out_dir), spec
