"""One declarative spec per exported component (in the spirit of optimum's OnnxConfig).

Each `ComponentSpec` says, in one place: the graph file, its inputs and outputs (names, dtypes,
symbolic shapes, dynamic-axis ranges) and the opset; `REL_TOL` / `MIN_COSINE` below hold the bounds
validation applies per component and precision. The exporters take names and dynamic axes from
the spec, the manifest checks the saved graphs against it. The LLM's I/O is decided by
onnxruntime-genai's builder, so it is read from the built graph instead (see `llm.py`).

Tolerances (checked by `validate.py`; `rel` = max |onnx - ref| / max |ref|, `cosine` = cosine
similarity of the mean-centred outputs). Measured on the tiny model (random inputs, T = 1, 7, 50):

* fp32 vision: rel < 1e-5 against a float64 evaluation of the reference. Same arithmetic, same
  precision: only summation order differs (fp32 epsilon 1.2e-7, growing ~sqrt(K) over K-term dot
  products and 2-23 layers). Measured 5.6e-6 to 7.1e-6 depending on the random inputs. PyTorch's
  own fp32 result is 1.3e-5 from float64, which is why the check uses float64; the fp32-vs-fp32
  number is reported beside it as rel_vs_torch_fp32.
* fp32 slowfast: rel < 1e-5 vs PyTorch fp32; max is exact and the fast mean sums 36 values.
  Measured 4e-8.
* fp16 vision (CPU): rel < 2e-2. fp16 keeps 11 significant bits (unit roundoff 4.9e-4); LayerNorm
  statistics, softmax and the residual stream round at every layer and the worst element of
  50 x 576 x D outputs is what is bounded. Measured 6.1e-3 and 9.5e-3 (two weight seeds; 1.1e-2
  in an earlier run): ~2x headroom.
* fp16 slowfast: rel < 1e-3 (input rounding to fp16, 4.9e-4, plus a 36-term fp16 mean). Measured 4.2e-4.
* LLM logits fp32: rel < 1e-4 (GroupQueryAttention / fused RMSNorm reorder sums). Measured 1.2e-6 to 2e-6.
* LLM logits int4 (CPU): rel < 0.1 and cosine >= 0.99 against the reference running the
  dequantized int4 weights (`int4.int4_weights`; the weights themselves are checked bit for bit by
  `int4.check_weights`), so only MatMulNBits' arithmetic is bounded: int8 activations per block
  (accuracy_level 4) and accumulation order. Measured rel 0.050 / 0.037 (tiny, two seeds), 0.052
  (real-tokenizer checkpoint), cosine >= 0.9989. A wrong graph is off by O(1) (mutation tests:
  0.7 for one layer's scales x 1.25, > 1 for RoPE base or K/V mistakes).
* chain (first-step logits of the whole pipeline on a synthetic clip): fp32 rel < 1e-4
  (measured 1.2e-6 to 3.5e-6); fp16 (CPU: fp16 visual tokens into the fp32 LLM) rel < 6e-3
  (measured 6.9e-4 and 1.8e-3); int4 rel < 0.05, cosine >= 0.99 (measured 0.015, 0.023, 0.028).
* CUDA provider (`CUDA_REL_TOL`): fp16 vision 3e-2, fp16 LLM 2e-2, fp16 chain 5e-2, int4 LLM and
  chain 0.3 with cosine >= 0.95: NOT measured (no GPU in the task that set the CPU bounds); the
  earlier, looser bounds kept as headroom for kernels that differ.

Measured with scripts/measure_tolerances.py on the 2-core build VM (2026-11-30).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..spec import IMAGE_SIZE, TOKENS_PER_FRAME

OPSET = 18  # >= 17 for LayerNormalization; the builder's LLM graph is opset 22, onnxruntime runs both

# component -> {precision -> bound}; a missing entry means "not bounded by this metric"
REL_TOL: dict[str, dict[str, float]] = {
    "vision": {"fp32": 1e-5, "fp16": 2e-2},
    "slowfast": {"fp32": 1e-5, "fp16": 1e-3},
    "llm": {"fp32": 1e-4, "fp16": 2e-2, "int4": 0.1},
    "chain": {"fp32": 1e-4, "fp16": 6e-3, "int4": 0.05},
}
MIN_COSINE: dict[str, dict[str, float]] = {
    "llm": {"int4": 0.99},
    "chain": {"int4": 0.99},
}
# On the CUDA provider (whose kernels differ: fp16 accumulation in places, other fused attention,
# an fp16 decoder at fp16 and int4) these replace the CPU-measured bounds above. Not measured
# here (no GPU in the task that set them): the previous, looser bounds, kept as headroom.
CUDA_REL_TOL: dict[str, dict[str, float]] = {
    "vision": {"fp16": 3e-2},
    "llm": {"fp16": 2e-2, "int4": 0.3},
    "chain": {"fp16": 5e-2, "int4": 0.3},
}
CUDA_MIN_COSINE: dict[str, dict[str, float]] = {"llm": {"int4": 0.95}, "chain": {"int4": 0.95}}


def rel_tol(name: str, precision: str, device: str = "cpu") -> float | None:
    """The rel bound for component `name` at `precision` on `device` (None: not bounded)."""
    if device == "cuda" and precision in CUDA_REL_TOL.get(name, {}):
        return CUDA_REL_TOL[name][precision]
    return REL_TOL.get(name, {}).get(precision)


def min_cosine(name: str, precision: str, device: str = "cpu") -> float | None:
    if device == "cuda" and precision in CUDA_MIN_COSINE.get(name, {}):
        return CUDA_MIN_COSINE[name][precision]
    return MIN_COSINE.get(name, {}).get(precision)


@dataclass(frozen=True)
class IOSpec:
    """One graph input or output: symbolic dims are strings, `dynamic` gives their [min, max]."""

    name: str
    dtype: str
    shape: tuple
    dynamic: dict = field(default_factory=dict)
    layout: str | None = None  # what the axes mean where it matters to the caller ("NHWC")

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "dynamic": {k: list(v) for k, v in self.dynamic.items()}} | ({"layout": self.layout} if self.layout else {})


@dataclass(frozen=True)
class ComponentSpec:
    """An exported graph: its file, I/O and opset."""

    name: str
    path: str
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    opset: int = OPSET

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's `dynamic_axes`: every string dim of every input and output."""
        return {io.name: {i: d for i, d in enumerate(io.shape) if isinstance(d, str)}
                for io in self.inputs + self.outputs}


VISION_INPUT = "frames"
VISION_LAYOUT = "NHWC"  # [T, height, width, RGB]: as the host's resize leaves the frames


def vision_spec(hidden: int, max_frames: int, out_dtype: str = "float32") -> ComponentSpec:
    """frames uint8 [T,336,336,3] (resized RGB, NHWC; normalised inside) -> features [T,576,D]."""
    t = {"T": (1, max_frames)}
    return ComponentSpec(
        "vision", "vision.onnx",
        (IOSpec(VISION_INPUT, "uint8", ("T", IMAGE_SIZE, IMAGE_SIZE, 3), t, VISION_LAYOUT),),
        (IOSpec("features", out_dtype, ("T", TOKENS_PER_FRAME, hidden), t),),
    )


def slowfast_spec(hidden: int, max_frames: int, num_tokens_min: int, num_tokens_max: int,
                  dtype: str = "float32") -> ComponentSpec:
    """features [T,576,D] -> visual_tokens [N,D], N = S * slow_per_frame + T * G * G."""
    return ComponentSpec(
        "slowfast", "slowfast.onnx",
        (IOSpec("features", dtype, ("T", TOKENS_PER_FRAME, hidden), {"T": (1, max_frames)}),),
        (IOSpec("visual_tokens", dtype, ("N", hidden), {"N": (num_tokens_min, num_tokens_max)}),),
    )
