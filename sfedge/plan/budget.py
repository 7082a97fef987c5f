"""`sfedge plan`'s arithmetic: the memory budget line by line, whether it fits a target, the levers
that make it fit, and the latency floors per stage (the bench's roofline formulas).

Memory lines (bytes; "device" = what must fit in the target's memory: GPU memory on a discrete GPU,
the one unified pool on a Jetson, the process's RSS on `cpu`):

* weights: LLM decoder, vision + projector, slowfast, greedy_step (real file sizes with --engines,
  else computed: sfedge.plan.model) and the embedding table (the runtime's copy on the device; on
  a discrete GPU also a host memory map, listed as host).
* KV cache: `sfedge.context.kv_cache_bytes` (what export records) for the whole context: the runtime
  preallocates [1, H_kv, max_length, d] per layer, key and value.
* activation peaks (estimated, formulas below): the vision graph runs all T frames as one batch;
  the LLM's prefill runs all prompt tokens at once. ONNX Runtime keeps each session's arena at its
  peak, so the two add up rather than overlap.
* runtime: the measured fresh-process RSS on `cpu`; estimated CUDA context + libraries on GPUs.
* Jetsons: the share of the unified memory the OS keeps (estimated, cited in devices.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..bench import roofline
from ..context import kv_cache_bytes
from ..errors import SfedgeError
from ..spec import TOKENS_PER_FRAME, SlowFastSpec
from .devices import Target
from .model import BYTES, ModelInfo, computed_file_bytes

GIB = 2**30
PROMPT_TEXT_TOKENS = 64  # the SPEC 5 template + a one-line question (the bench's 64)


@dataclass(frozen=True)
class Settings:
    frames: int = 50
    slowfast: SlowFastSpec = SlowFastSpec()
    max_context: int = 4096
    kv_dtype: str | None = None  # None: the LLM's I/O dtype (what export builds)
    max_new_tokens: int = 128
    base_text_tokens: int = PROMPT_TEXT_TOKENS  # the SlowFast prompt's text (a family's rules count their own)
    efficiency: float = 0.5  # fraction of the floor expected in practice
    # a family's token counts (sfedge.families.PromptRules, e.g. VideoLLaMA3's video budget and chat
    # template); None: SlowFast's SPEC 4 count of `slowfast` and `base_text_tokens`
    rules: Any = None
    pruned: float = 0.0  # assumed fraction the family's token reduction removes (rules.prunes; an assumption)

    @property
    def visual_tokens(self) -> int:
        return self.rules.visual(self.frames, self.pruned) if self.rules else self.slowfast.num_tokens(self.frames)

    @property
    def text_tokens(self) -> int:
        return self.rules.text(self.frames) if self.rules else self.base_text_tokens

    @property
    def prefill_tokens(self) -> int:
        return self.visual_tokens + self.text_tokens


def kv_dtype(info: ModelInfo, s: Settings) -> str:
    return s.kv_dtype or info.dtypes["io"]


def vision_activation_bytes(info: ModelInfo, frames: int) -> float:
    """Peak of the vision graph for a T-frame batch (estimated): per frame, one layer's attention
    scores (heads x N^2; the softmax reuses the buffer), its MLP's three N x m tensors (fc1's output
    and quick_gelu's x * sigmoid(1.702 x)) and four hidden-state tensors (N x h), N = 577; + the
    pixels (fp32) and the projected features out (T x 576 x D). Checked against two measured peaks
    on cpu (docs/BENCHMARKS.md, "sfedge plan vs measured")."""
    g = info.geometry
    b = BYTES[info.dtypes["vision"]]
    n = g.patches + 1
    per_frame = (info.vision_heads * n * n + 3 * n * g.v_mlp + 4 * n * g.v_hidden) * b
    pixels = 3 * (g.patches ** 0.5 * 14) ** 2 * 4
    return frames * (per_frame + pixels + TOKENS_PER_FRAME * g.hidden * b)


def prefill_activation_bytes(info: ModelInfo, tokens: int) -> float:
    """Peak of one prefill of `tokens` positions (estimated): gate and up MLP intermediates (2 x n x m)
    and four hidden-state tensors (n x D) in the I/O dtype; on cpu ONNX Runtime's GroupQueryAttention
    also materialises fp32 attention probabilities for every head, of which the causal lower triangle
    is written and so resident (heads x n(n+1)/2 x 4 bytes; the rest of the buffer is never touched);
    on CUDA its flash / memory-efficient kernels keep none (0)."""
    g = info.geometry
    b = BYTES[info.dtypes["io"]]
    probs = g.heads * tokens * (tokens + 1) // 2 * 4 if info.device == "cpu" else 0
    return tokens * (2 * g.mlp + 4 * g.hidden) * b + probs + info.vocab * 4


def memory_lines(info: ModelInfo, target: Target, s: Settings) -> list[dict]:
    """The budget, one dict per line: item, bytes, where ("device" or "host"), how."""
    exact = info.file_bytes is not None
    sizes = info.file_bytes if exact else computed_file_bytes(info, s.max_context)
    how_w = "file sizes on disk" if exact else "computed from the geometry (sfedge.plan.model)"
    d = info.dtypes
    kv = kv_cache_bytes(info.num_layers, info.num_kv_heads, info.head_dim, s.max_context, kv_dtype(info, s))
    lines = [
        {"item": f"LLM weights ({info.precision}, {d['llm_weight_bytes_per_param']:g} B/param)", "bytes": sizes["llm"],
         "how": how_w},
        {"item": f"embedding table [{info.vocab}, {info.hidden}] {d['io']}", "bytes": sizes["embeddings"],
         "how": how_w + "; the runtime uploads it for the greedy step"},
        {"item": f"vision + projector ({d['vision']})", "bytes": sizes["vision"], "how": how_w},
        {"item": "slowfast + greedy_step graphs", "bytes": sizes["slowfast"] + sizes["greedy_step"], "how": how_w},
        {"item": f"KV cache: {s.max_context} positions x {kv['per_token']} B ({kv['dtype']})", "bytes": kv["total"],
         "how": "sfedge.context.kv_cache_bytes (what export records)"},
    ]
    if info.geometry is not None and info.family.plan.vision_modelled:
        lines.append({"item": f"vision activations, {s.frames} frames in one batch",
                      "bytes": vision_activation_bytes(info, s.frames),
                      "how": "estimated: sfedge.plan.budget.vision_activation_bytes"})
    if info.geometry is not None:
        lines += [
            {"item": f"prefill activations, {s.prefill_tokens} tokens", "bytes": prefill_activation_bytes(info, s.prefill_tokens),
             "how": "estimated: sfedge.plan.budget.prefill_activation_bytes"},
        ]
    lines.append({"item": "runtime (process / CUDA context + libraries)", "bytes": target.runtime_gib * GIB,
                  "how": target.sources.get("runtime_gib", "")})
    if target.os_reserved_gib:
        lines.append({"item": "kept by the OS (unified memory)", "bytes": target.os_reserved_gib * GIB,
                      "how": target.sources.get("os_reserved_gib", "")})
    for ln in lines:
        ln["where"] = "device"
    if target.kind == "gpu":
        lines.append({"item": "host: embedding table memory map + the Python process (not GPU memory)",
                      "bytes": sizes["embeddings"] + 0.3 * GIB, "where": "host",
                      "how": "estimated: the table's file size + ~0.3 GiB for the process"})
    return lines


def _check(info: ModelInfo, s: Settings) -> list[str]:
    """Reasons the settings cannot run at all (independent of memory)."""
    out = []
    need = s.prefill_tokens + s.max_new_tokens
    if need > s.max_context:
        out.append(f"prompt {s.prefill_tokens} + {s.max_new_tokens} new tokens = {need} > context {s.max_context}")
    if s.max_context > info.max_position_embeddings:
        out.append(f"context {s.max_context} > the checkpoint's max_position_embeddings {info.max_position_embeddings}")
    if info.manifest:
        m = info.manifest["model"]
        if s.frames > m.get("max_frames", s.frames) and not (s.rules and s.rules.chunks_frames):
            out.append(f"{s.frames} frames > the engines' max_frames {m['max_frames']}")
        if s.max_context > m["max_length"]:
            out.append(f"context {s.max_context} > the engines' {m['max_length']} (re-export with --max-context)")
    return out


def fit(info: ModelInfo, target: Target, s: Settings) -> dict:
    lines = memory_lines(info, target, s)
    device = sum(ln["bytes"] for ln in lines if ln["where"] == "device")
    capacity = target.memory_gib * GIB
    problems = _check(info, s)
    return {"lines": lines, "device_bytes": device, "capacity_bytes": capacity, "headroom_bytes": capacity - device,
            "fits": device <= capacity and not problems, "problems": problems}


def floors(info: ModelInfo, target: Target, s: Settings) -> dict:
    """Floors per stage (ms; decode per token at the mean context) from the target's rates, with the
    bench's formulas (sfedge.bench.roofline.floors_ms), and what to expect at `s.efficiency`."""
    d = info.dtypes
    compute = "float16" if target.kind != "cpu" and d["io"] == "float16" else "float32"
    ceilings = {"bandwidth_GBps": target.bandwidth_gbps, "matmul_TFLOPs": target.rate_tflops(compute)}
    weights = info.file_bytes["llm"] if info.file_bytes else computed_file_bytes(info, s.max_context)["llm"]
    ms = roofline.floors_ms(info.geometry, ceilings, frames=s.frames, prefill_tokens=s.prefill_tokens,
                            new_tokens=s.max_new_tokens, weight_bytes=weights, act_bytes=BYTES[kv_dtype(info, s)],
                            vision=info.family.plan.vision_modelled)
    ttft_stages = [k for k in ("vision", "slowfast", "prefill") if k in ms]
    ttft_floor = sum(ms[k] for k in ttft_stages)
    e = s.efficiency
    return {"compute_dtype": compute, "ceilings": ceilings, "floors_ms": ms, "ttft_stages": ttft_stages,
            "ttft_floor_ms": ttft_floor if info.geometry is not None else None, "efficiency": e,
            "expected_ttft_ms": ttft_floor / e if info.geometry is not None else None,
            "expected_decode_tokens_per_s": e * 1e3 / ms["decode_ms_per_token"]}


def _fast_grids(g: int) -> list[int]:
    return [x for x in (3, 2, 1) if x < g]


def levers(info: ModelInfo, target: Target, s: Settings, make_model) -> list[dict]:
    """Each single change that alters the budget, with its result (`make_model(precision)` rebuilds
    the model at another precision; engines directories have their precision fixed)."""
    need_ctx = s.prefill_tokens + s.max_new_tokens
    tried = []
    if make_model is not None:
        tried += [(f"--precision {p}", make_model(p), s) for p in ("int4", "fp16") if p != info.precision]
    ctx = 1 << max(0, (need_ctx - 1).bit_length())  # the smallest power of two that holds the answer
    if need_ctx != s.max_context:
        tried.append((f"--max-context {need_ctx}", info, replace(s, max_context=need_ctx)))
    if ctx < s.max_context and ctx != need_ctx:
        tried.append((f"--max-context {ctx}", info, replace(s, max_context=ctx)))
    if kv_dtype(info, s) not in ("int8",):
        tried.append(("--kv-dtype int8 (what-if: export builds the KV cache in the I/O dtype)", info,
                      replace(s, kv_dtype="int8")))
    sf = s.slowfast
    if s.rules:  # the SlowFast levers do not apply; the family's own: an assumed pruned fraction
        if s.rules.prunes and s.pruned < 0.5:
            tried.append(("--pruned 0.5 (assumption: the video lets pruning remove half)", info,
                          replace(s, pruned=0.5)))
    elif sf.slow_frames > 4:
        tried.append(("--slow-frames 4", info, replace(s, slowfast=replace(sf, slow_frames=4))))
    for g in [] if s.rules else _fast_grids(sf.fast_grid)[:1]:
        if (TOKENS_PER_FRAME ** 0.5) % g == 0:
            tried.append((f"--fast-grid {g}", info, replace(s, slowfast=replace(sf, fast_grid=g))))
    if s.frames > 16:
        tried.append(("--frames 16", info, replace(s, frames=16)))
    # all the buildable ones together (the int8 KV cache is a what-if, left out)
    both = make_model("int4") if make_model is not None and info.precision != "int4" else info
    small = replace(s, frames=min(s.frames, 16), slowfast=replace(sf, slow_frames=min(sf.slow_frames, 4)))
    small = replace(small, max_context=min(s.max_context, small.prefill_tokens + s.max_new_tokens))
    tried.append((f"all of: int4, --frames <= 16, {'' if s.rules else '--slow-frames <= 4, '}--max-context "
                  f"{small.max_context}", both, small))
    out = []
    for name, mi, st in tried:
        try:
            r = fit(mi, target, st)
        except SfedgeError:
            continue
        out.append({"lever": name, "device_bytes": r["device_bytes"], "headroom_bytes": r["headroom_bytes"],
                    "fits": r["fits"], "problems": r["problems"]})
    return out
