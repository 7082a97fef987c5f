"""An int8 vision graph for the CPU (`sfedge export --vision-int8`): ONNX Runtime's dynamic
quantization (`onnxruntime.quantization.quantize_dynamic`) of the exported fp32 vision.onnx.

Every MatMul with a constant weight (CLIP's q/k/v/o and MLP projections, the LLaVA projector)
gets int8 weights, per output channel, and uint8 activations quantized per tensor at run time
(DynamicQuantizeLinear -> MatMulInteger -> rescale, which ORT's graph optimizer may fuse); the
activation x activation MatMuls of attention, the patch Conv, LayerNorm and softmax stay fp32.
Inputs and outputs keep their dtypes and layout (frames in, float32 features out), so nothing else
in the engines directory or the runtime changes.

Order in the export: validation (vision, slowfast, LLM, chain) runs on the fp32 graph as always;
then the graph is quantized and the int8 graph's features are compared with the fp32 graph's on
the same random frames. The manifest's `components.vision.quantization` records how it was made
and that comparison (max abs, rel, cosine); the export fails (ValidationError) if the cosine is
below `MIN_COSINE`. The effect on generated tokens is measured by scripts/vision_int8_effect.py
(docs/BENCHMARKS.md), not here.

`reduce_range` (7-bit weights) is on: ONNX Runtime's quantization guide recommends it for
per-channel weights on x86 CPUs without VNNI (like the AVX2 EPYC it was measured on), where the
u8 x s8 kernels add pairs of products in 16 bits and full 8-bit weights can saturate.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import SfedgeError, ValidationError

VISION = "vision.onnx"
# the int8 graph's features vs the fp32 graph's (cosine of mean-centred features): measured
# 0.9988-0.9990 on the tiny model, 0.9993 on sf-llava-cpu (docs/BENCHMARKS.md, "int8 vision")
MIN_COSINE = 0.98
SETTINGS = {"method": "dynamic", "tool": "onnxruntime.quantization.quantize_dynamic", "weights": "int8 per channel",
            "reduce_range": True, "activations": "uint8 per tensor, quantized at run time",
            "op_types": ["MatMul"], "const_weights_only": True}


def check_supported(precision: str, device: str) -> None:
    """--vision-int8 needs an fp32 vision graph run by the CPU provider."""
    if device != "cpu":
        raise SfedgeError("--vision-int8 is for CPU engines (--device cpu): the int8 ops run on ONNX Runtime's CPU provider")
    if precision == "fp16":
        raise SfedgeError("--vision-int8 quantizes the fp32 vision graph; use it with --precision fp32 or int4, not fp16")


def _session(path: Path):
    import onnxruntime as ort

    from ..runtime.engines import session_options

    return ort.InferenceSession(str(path), sess_options=session_options("cpu"), providers=["CPUExecutionProvider"])


def random_frames(sess, frames: int, seed: int) -> dict:
    """The vision graph's input for `frames` random frames: uint8 frames (any value 0-255) or
    float pixels (N(0, 1), about the normalised range), in the graph's own layout."""
    inp = sess.get_inputs()[0]
    shape = [frames if isinstance(d, str) or d is None else d for d in inp.shape]
    rng = np.random.default_rng(seed)
    if "uint8" in inp.type:
        return {inp.name: rng.integers(0, 256, shape, dtype=np.uint8)}
    return {inp.name: rng.standard_normal(shape).astype(np.float32)}


def _features(path: Path, feeds: dict) -> np.ndarray:
    return _session(path).run(None, feeds)[0].astype(np.float32)


def compare(expected: np.ndarray, got: np.ndarray) -> dict:
    """max abs, rel (max abs / max |expected|) and cosine of the mean-centred outputs."""
    diff = np.abs(got - expected)
    e, g = expected - expected.mean(), got - got.mean()
    cosine = float((e * g).sum() / (np.linalg.norm(e) * np.linalg.norm(g) + 1e-30))
    return {"max_abs": float(diff.max()), "rel": float(diff.max() / (np.abs(expected).max() + 1e-30)), "cosine": cosine}


def quantize_vision(root: Path, frames: int = 2, seed: int = 0) -> dict:
    """Replace root/vision.onnx (+ .data) with its int8 dynamic quantization; return the manifest's
    `quantization` block (settings + features vs the fp32 graph on `frames` random frames)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = root / VISION
    feeds = random_frames(_session(src), frames, seed)
    expected = _features(src, feeds)
    with tempfile.TemporaryDirectory(prefix=".vision-int8-", dir=root) as tmp:
        dst = Path(tmp) / VISION
        logging.disable(logging.WARNING)  # its root-logger advice to run its pre-processing script
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=SETTINGS["reduce_range"], op_types_to_quantize=SETTINGS["op_types"],
                             use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
        finally:
            logging.disable(logging.NOTSET)
        got = _features(dst, feeds)
        effect = compare(expected, got) | {"frames": frames, "input": f"random frames, seed {seed}",
                                           "against": "the exported fp32 vision graph", "min_cosine": MIN_COSINE}
        if not np.isfinite(effect["max_abs"]) or effect["cosine"] < MIN_COSINE:
            raise ValidationError(f"int8 vision: features cosine {effect['cosine']:.4f} vs the fp32 graph "
                                  f"< {MIN_COSINE} (max abs {effect['max_abs']:.3g})")
        for old in root.glob(VISION + "*"):
            old.unlink()
        for new in Path(tmp).glob(VISION + "*"):
            shutil.move(str(new), root / new.name)
    return SETTINGS | {"vs_fp32": effect,
                       "validation": "vision and chain validation ran on the fp32 graph before quantization"}
