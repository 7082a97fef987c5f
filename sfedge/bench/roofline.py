"""Physical floors per stage: FLOPs / matmul rate (vision, prefill), bytes / bandwidth (decode,
slowfast), with both ceilings measured on the machine itself.

FLOP counts are derived from the checkpoint's config (a multiply-add = 2 FLOPs):

* vision, per frame: patch embedding + the encoder layers up to `vision_feature_layer` (23 of 24
  for SlowFast-LLaVA: the last layer never reaches the output) at N = 577 tokens, each
  2N(4h^2 + 2hm) + 4N^2 h, + the projector on 576 tokens 2*576(h D + D^2). CLIP-L/336: 0.39 TFLOP.
* LLM prefill of n tokens: 2 n P_lin + 2 n^2 d_attn L (causal attention), + lm_head on the last
  token. Vicuna-7B at n = 3780: 52.7 TFLOP.
* decode, per token: every LLM weight byte once (embeddings excluded: one row) + the KV cache
  read at the current context length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """The dimensions the floors need, from a llava-hf config.json (LlavaNextConfig as a dict)."""

    v_hidden: int
    v_mlp: int
    v_layers_used: int
    patches: int
    patch_dim: int
    hidden: int
    mlp: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: dict) -> "Geometry":
        v, t = cfg["vision_config"], cfg["text_config"]
        layer = cfg.get("vision_feature_layer", -2)
        v_layers = v["num_hidden_layers"]
        used = v_layers + layer + 1 if layer < 0 else layer
        size, patch = v.get("image_size", 336), v.get("patch_size", 14)
        heads = t["num_attention_heads"]
        return cls(
            v_hidden=v["hidden_size"], v_mlp=v["intermediate_size"], v_layers_used=used,
            patches=(size // patch) ** 2, patch_dim=3 * patch * patch,
            hidden=t["hidden_size"], mlp=t["intermediate_size"], layers=t["num_hidden_layers"], heads=heads,
            kv_heads=t.get("num_key_value_heads") or heads,
            head_dim=t.get("head_dim") or t["hidden_size"] // heads, vocab=t["vocab_size"],
        )

    @property
    def llm_linear_params(self) -> int:
        """Weights of the decoder layers' matmuls (q, k, v, o, gate, up, down), all layers."""
        q = self.hidden * self.heads * self.head_dim
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        return self.layers * (2 * q + kv + 3 * self.hidden * self.mlp)

    def llm_weight_bytes(self, bytes_per_param: float) -> float:
        """Bytes read per decoded token: decoder matmuls + lm_head (embeddings: one row, ignored)."""
        return (self.llm_linear_params + self.vocab * self.hidden) * bytes_per_param


def vision_flops_per_frame(g: Geometry) -> float:
    n, h, m = g.patches + 1, g.v_hidden, g.v_mlp
    embed = 2 * g.patches * g.patch_dim * h
    layer = 2 * n * (4 * h * h + 2 * h * m) + 4 * n * n * h
    projector = 2 * g.patches * (h * g.hidden + g.hidden * g.hidden)
    return embed + g.v_layers_used * layer + projector


def prefill_flops(g: Geometry, tokens: int) -> float:
    attn = 2 * tokens * tokens * g.heads * g.head_dim * g.layers
    return 2 * tokens * g.llm_linear_params + attn + 2 * g.hidden * g.vocab


def kv_bytes(g: Geometry, context: int, bytes_per_value: float = 2) -> float:
    """K and V of every layer at `context` positions (sfedge.context.kv_cache_bytes: the one formula
    export, the bench and `sfedge plan` share)."""
    from ..context import kv_cache_bytes

    dtype = {4: "float32", 2: "float16", 1: "int8"}[bytes_per_value]
    return kv_cache_bytes(g.layers, g.kv_heads, g.head_dim, context, dtype)["total"]


def floors_ms(g: Geometry | None, ceilings: dict, *, frames: int, prefill_tokens: int, new_tokens: int,
              weight_bytes: float, act_bytes: int, vision: bool = True) -> dict[str, float]:
    """Floor in ms per stage (decode: ms per token at the mean context). Stages whose inputs are
    unknown (no geometry; `vision` False: a vision graph these CLIP formulas do not describe) are left out."""
    bw = ceilings["bandwidth_GBps"] * 1e9
    rate = ceilings["matmul_TFLOPs"] * 1e12
    out = {}
    if g is not None:
        if vision:
            out["vision"] = 1e3 * frames * vision_flops_per_frame(g) / rate
            out["slowfast"] = 1e3 * frames * g.patches * g.hidden * act_bytes / bw
        out["prefill"] = 1e3 * prefill_flops(g, prefill_tokens) / rate
        kv = kv_bytes(g, prefill_tokens + new_tokens // 2, act_bytes)
    else:
        kv = 0.0
    out["decode_ms_per_token"] = 1e3 * (weight_bytes + kv) / bw
    return out


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_cpu(copy_mb: int = 256, gemm_n: int = 1024, repeats: int = 5) -> dict:
    """Host ceilings with numpy: memcpy of a large array (read + write counted) and fp32 GEMM."""
    import numpy as np

    a = np.ones(copy_mb * 2**20 // 8, dtype=np.float64)
    b = np.empty_like(a)
    np.copyto(b, a)
    t_copy = _best(lambda: np.copyto(b, a), repeats)
    x = np.random.default_rng(0).standard_normal((gemm_n, gemm_n), dtype=np.float32)
    x @ x
    t_mm = _best(lambda: x @ x, repeats)
    return {"device": "cpu", "bandwidth_GBps": 2 * a.nbytes / t_copy / 1e9, "matmul_TFLOPs": 2 * gemm_n**3 / t_mm / 1e12,
            "how": f"numpy copyto {copy_mb} MiB (read+write), fp32 GEMM {gemm_n}^3, best of {repeats}"}


def measure_cuda(copy_mb: int = 2048, gemm_n: int = 8192, iters: int = 20) -> dict:
    """GPU ceilings with torch: device-to-device copy (read + write counted) and fp16 GEMM."""
    import torch

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / iters

    a = torch.empty(copy_mb * 2**20, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t_copy = timed(lambda: b.copy_(a))
    del a, b
    x = torch.randn(gemm_n, gemm_n, dtype=torch.float16, device="cuda")
    y = torch.randn(gemm_n, gemm_n, dtype=torch.float16, device="cuda")
    t_mm = timed(lambda: x @ y)
    del x, y
    torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(), "bandwidth_GBps": 2 * copy_mb * 2**20 / t_copy / 1e9,
            "matmul_TFLOPs": 2 * gemm_n**3 / t_mm / 1e12,
            "how": f"torch D2D copy {copy_mb} MiB (read+write), fp16 GEMM {gemm_n}^3, mean of {iters}"}
