"""VideoLLaMA3's vision graph: pixel_values [T, P, 588] + position_ids [P, 2] -> features [T, P/4, D_text].

The same arithmetic as transformers' `VideoLlama3VisionModel` + `VideoLlama3Projector`
(docs/videollama3.md), laid out for one video whose frames share a grid:

* patch embedding: the Conv2d (14x14, stride 14) on each 3x14x14 patch, weights shared;
* 2-D axial RoPE from `position_ids` (row, col per patch, host-computed in the processor's
  block-major patch order): transformers' `VideoLlama3VisionRotaryEmbedding`, in the graph;
* encoder layers with the frames as the batch axis: attention within a frame only (transformers
  packs frames and splits attention at `cu_seqlens`, one segment per frame: the same sets of keys);
* post-layernorm, then the 2x2 downsampling: transformers' `pixel_unshuffle` + bilinear interpolate
  to (gh/2, gw/2) with align_corners=False samples at 2i + 0.5, i.e. the mean of each 2x2 block, and
  in the processor's order the 4 patches of a block are consecutive: a mean over groups of 4;
* the projector (Linear - GELU - Linear).

No grid size enters the graph: T and P are free (P a multiple of 4). Tokens come out row-major over
the merged grid, as transformers' do.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .graphs import export_onnx
from .registry import ComponentSpec, IOSpec

PATCH_DIM = 3 * 14 * 14
MERGE = 2


class VideoLlama3Vision(nn.Module):
    def __init__(self, vision_model: nn.Module, projector: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        cfg = vision_model.config
        if cfg.patch_size != 14 or cfg.num_channels != 3:
            raise ValueError(f"patch size {cfg.patch_size} / {cfg.num_channels} channels: only 14 / 3 are supported")
        self.patch_embedding = vision_model.embeddings.patch_embedding
        self.rotary = vision_model.rotary_pos_emb
        self.layers = vision_model.encoder.layers
        self.post_layernorm = vision_model.post_layernorm
        self.projector = projector
        self.heads = cfg.num_attention_heads
        self.patch = cfg.patch_size
        self.compute_dtype = dtype

    def forward(self, pixel_values: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        t, p = pixel_values.shape[0], pixel_values.shape[1]
        x = pixel_values.to(self.compute_dtype).reshape(t * p, 3, self.patch, self.patch)
        h = self.patch_embedding(x).reshape(t, p, -1)
        cos, sin = self.rotary(h, position_ids)  # [P, head_dim] each, float32
        cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
        for layer in self.layers:
            h = h + self._attention(layer.self_attn, layer.layer_norm1(h), cos, sin)
            h = h + layer.mlp(layer.layer_norm2(h))
        h = self.post_layernorm(h)
        h = h.reshape(t, p // (MERGE * MERGE), MERGE * MERGE, h.shape[-1]).mean(dim=2)
        return self.projector(h)

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        t, p, d = x.shape
        hd = d // self.heads
        q = attn.q_proj(x).reshape(t, p, self.heads, hd)
        k = attn.k_proj(x).reshape(t, p, self.heads, hd)
        v = attn.v_proj(x).reshape(t, p, self.heads, hd)
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(x.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(x.dtype)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [T, H, P, hd]
        w = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * attn.scaling, dim=-1, dtype=torch.float32).to(x.dtype)
        out = torch.matmul(w, v).transpose(1, 2).reshape(t, p, d)
        return attn.out_proj(out)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def position_ids(gh: int, gw: int) -> torch.Tensor:
    """(row, col) per patch in the processor's block-major order (docs/videollama3.md) for one frame."""
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")

    def block(z):
        return z.reshape(gh // MERGE, MERGE, gw // MERGE, MERGE).transpose(1, 2).reshape(-1)

    return torch.stack([block(rows), block(cols)], dim=1).long()


def vision_spec(hidden: int, max_frames: int, out_dtype: str = "float32") -> ComponentSpec:
    t = {"frames": (1, max_frames)}
    return ComponentSpec(
        "vision", "vision.onnx",
        (IOSpec("pixel_values", "float32", ("frames", "patches", PATCH_DIM), t),
         IOSpec("position_ids", "int64", ("patches", 2))),
        (IOSpec("features", out_dtype, ("frames", "tokens", hidden), t),),
    )


def build_vision(model: nn.Module, dtype: torch.dtype = torch.float32) -> VideoLlama3Vision:
    """From a VideoLlama3ForConditionalGeneration; fp16 works on deep copies (the fp32 reference stays)."""
    vision, projector = model.model.vision_model, model.model.projector
    if dtype != torch.float32:
        vision, projector = copy.deepcopy(vision).to(dtype), copy.deepcopy(projector).to(dtype)
    return VideoLlama3Vision(vision, projector, dtype).eval()


def export_vision(model: nn.Module, max_frames: int, out_dir: Path,
                  dtype: torch.dtype = torch.float32) -> tuple[Path, ComponentSpec]:
    """Write out_dir/vision.onnx (+ .data). The dummy is 2 frames of a 4 x 6 grid, shapes validation never uses."""
    module = build_vision(model, dtype)
    spec = vision_spec(model.config.text_config.hidden_size, max_frames,
                       "float16" if dtype == torch.float16 else "float32")
    gh, gw = 4, 6
    dummy = (torch.randn(min(max_frames, 2), gh * gw, PATCH_DIM), position_ids(gh, gw))
    return export_onnx(module, dummy, spec, out_dir), spec
