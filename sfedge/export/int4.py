"""int4 weights checked independently of the quantizer that made them.

`quantize_blocks` re-implements, in numpy, the block-wise symmetric round-to-nearest quantization
ONNX Runtime's `DefaultWeightOnlyQuantizer` runs for the builder (MLAS `MlasQuantizeBlockwise`,
4 bits, symmetric): per column of the [K, N] MatMul weight and per block of `block_size` rows, the
block's max if |max| > |min|, else its min, `m`, gives scale = m / -8 (fp32); q =
clamp(roundf(w * (1 / scale) + 8), 0, 15) in fp32 (ties up) (0 where the scale is 0); two 4-bit values per
byte, the even row in the low nibble; B is uint8 [N, K / block, block / 2], scales [N, K / block],
no zero-point input (8 implied); a partial last block is padded with 0 nibbles.

* `check_weights` (half a of the int4 check): every MatMulNBits in the exported decoder against
  this quantization of the checkpoint's own weights, bit for bit (packed bytes, scale bits, zero
  points); a scale x 1.25 or a swapped weight fails here.
* `int4_weights` (half b): a context in which the PyTorch reference's language model runs on the
  dequantized weights of that same quantization, so int4 engines are compared with a reference
  that has exactly their weights and only their arithmetic (activation rounding, accumulation
  order) is left to the tolerance.

The builder's graph names (onnxruntime-genai 0.18) map to the checkpoint's linears by
`_SOURCES`: fused qkv_proj = [q; k; v] rows, fused gate_up_proj = [gate; up].
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

BITS_ZERO = 8
_NAME = re.compile(r"^(?:model\.layers\.(\d+)\.(attn|mlp)\.(\w+)|lm_head)\.MatMul\.weight_Q4$")
_SOURCES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_SUBMODULE = {"attn": "self_attn", "mlp": "mlp"}


def quantize_blocks(weight_kn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """fp32 [K, N] MatMul weight -> (packed uint8 [N, n_blocks, block_size // 2], scales fp32 [N, n_blocks])."""
    w = np.ascontiguousarray(np.asarray(weight_kn, np.float32).T)  # [N, K]
    n, k = w.shape
    n_blocks = -(-k // block_size)
    blocks = np.zeros((n, n_blocks * block_size), np.float32)
    blocks[:, :k] = w
    blocks = blocks.reshape(n, n_blocks, block_size)
    lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
    extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)  # a tie |max| == |min| takes the min
    scales = (extreme / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        recip = np.where(scales != 0, np.float32(1) / scales, np.float32(0)).astype(np.float32)
    x = (blocks * recip[..., None]).astype(np.float32)
    # roundf(x + 8) in fp32: ties go up (-7.5 -> 1, not 0), as MLAS rounds after adding the zero point
    shifted = (x + np.float32(BITS_ZERO)).astype(np.float32)
    q = np.clip(np.floor(shifted + np.float32(0.5)), 0, 15).astype(np.uint8)
    q.reshape(n, -1)[:, k:] = 0  # a last partial block's padding stays zero bytes (not the zero point)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), scales


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, k: int, zero_points=None) -> np.ndarray:
    """(packed [N, n_blocks, blob], scales [N, n_blocks]) -> fp32 [N, K] (the checkpoint's [out, in])."""
    n, n_blocks, _ = packed.shape
    q = np.empty(packed.shape[:2] + (packed.shape[2] * 2,), np.float32)
    q[..., 0::2], q[..., 1::2] = packed & 0x0F, packed >> 4
    zero = np.float32(BITS_ZERO) if zero_points is None else _unpack_zero_points(zero_points, n, n_blocks)[..., None]
    w = (q - zero) * np.asarray(scales, np.float32).reshape(n, n_blocks)[..., None]
    return w.reshape(n, -1)[:, :k]


def _unpack_zero_points(zp: np.ndarray, n: int, n_blocks: int) -> np.ndarray:
    zp = np.asarray(zp, np.uint8).reshape(n, -1)
    both = np.stack([zp & 0x0F, zp >> 4], -1).reshape(n, -1)
    return both[:, :n_blocks].astype(np.float32)


def _language_model(ref):
    return ref.model.model.language_model


def source_linears(ref, graph_weight: str) -> list:
    """The checkpoint's nn.Linear modules one graph MatMulNBits weight came from (row order)."""
    m = _NAME.match(graph_weight)
    if m is None:
        raise ValueError(f"{graph_weight}: not a decoder weight name this check knows")
    if m.group(1) is None:
        return [ref.model.lm_head]
    layer = _language_model(ref).layers[int(m.group(1))]
    parent = getattr(layer, _SUBMODULE[m.group(2)])
    return [getattr(parent, name) for name in _SOURCES.get(m.group(3), (m.group(3),))]


def _fp32_weight(linear) -> np.ndarray:
    """The linear's weight [out, in] as fp32 numpy (a bf16/fp16 checkpoint widens exactly)."""
    import torch

    with torch.no_grad():
        return linear.weight.detach().float().cpu().numpy()


def expected_weight(ref, graph_weight: str, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """This module's quantization of the checkpoint weight behind `graph_weight`."""
    w = np.concatenate([_fp32_weight(lin) for lin in source_linears(ref, graph_weight)])  # [N, K]
    return quantize_blocks(w.T, block_size)


def graph_int4_weights(model_path: Path) -> dict:
    """{B initializer name: {packed, scales, zero_points, K, N, block_size, bits}} for every
    MatMulNBits node of an ONNX graph (external data read)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        arr = lambda i: numpy_helper.to_array(inits[node.input[i]]) if len(node.input) > i and node.input[i] else None  # noqa: E731
        out[node.input[1]] = {"packed": arr(1), "scales": arr(2), "zero_points": arr(3), "K": attrs["K"],
                              "N": attrs["N"], "block_size": attrs["block_size"], "bits": attrs["bits"]}
    return out


def check_weights(ref, model_path: Path) -> dict:
    """Half a: every MatMulNBits weight of the graph bit for bit against `quantize_blocks` of the
    checkpoint's weight. Returns {"checked": n, "passed": bool, "failure": one line or None,
    "mismatches": [...]}; every linear of the language model and lm_head must be quantized."""
    graph = graph_int4_weights(model_path)
    mismatches = []
    for name, g in graph.items():
        if g["bits"] != 4:
            mismatches.append(f"{name}: {g['bits']} bits")
            continue
        packed, scales = expected_weight(ref, name, g["block_size"])
        got_scales = np.asarray(g["scales"])
        if got_scales.dtype != np.float32:  # fp16 scales (the CUDA builder): compare in their dtype
            scales = scales.astype(got_scales.dtype)
        if g["zero_points"] is not None and not np.all(_unpack_zero_points(g["zero_points"], g["N"], packed.shape[1]) == BITS_ZERO):
            mismatches.append(f"{name}: zero points are not all {BITS_ZERO}")
        if g["packed"].shape != packed.shape or not np.array_equal(g["packed"].view(np.uint8), packed):
            bad = -1 if g["packed"].shape != packed.shape else int((g["packed"] != packed).sum())
            mismatches.append(f"{name}: packed weights differ ({bad} bytes)")
        if got_scales.size != scales.size or not np.array_equal(got_scales.reshape(scales.shape).view(np.uint8), scales.view(np.uint8)):
            mismatches.append(f"{name}: scales differ")
    lm = _language_model(ref)
    expected_count = 1 + sum(_linear_count(layer) for layer in lm.layers)  # + lm_head
    covered = sum(len(source_linears(ref, n)) for n in graph if _NAME.match(n))
    if covered != expected_count:
        mismatches.append(f"{covered} of the checkpoint's {expected_count} decoder linears are int4 in the graph")
    failure = None if not mismatches else f"int4 weights: {mismatches[0]}" + (f" (+{len(mismatches) - 1} more)" if len(mismatches) > 1 else "")
    return {"checked": len(graph), "passed": not mismatches, "failure": failure, "mismatches": mismatches}


def _linear_count(layer) -> int:
    import torch

    return sum(isinstance(m, torch.nn.Linear) for m in layer.modules())


@contextlib.contextmanager
def int4_weights(ref, block_size: int):
    """Within the block, the reference's language-model linears and lm_head compute with the
    dequantized `quantize_blocks` weights (fp32); the original parameters are put back after. A
    tied lm_head gets its own tensor (the embedding table is left as it is)."""
    import torch

    lm = _language_model(ref)
    linears = [m for layer in lm.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)] + [ref.model.lm_head]
    saved = []
    try:
        for lin in linears:
            w = _fp32_weight(lin)
            packed, scales = quantize_blocks(w.T, block_size)
            new = torch.nn.Parameter(torch.from_numpy(dequantize_blocks(packed, scales, w.shape[1])).to(ref.device), requires_grad=False)
            owner = lin.parametrizations.weight if hasattr(lin, "parametrizations") and "weight" in lin.parametrizations else lin
            attr = "original" if owner is not lin else "weight"
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, new)
        yield ref
    finally:
        for owner, attr, old in reversed(saved):
            setattr(owner, attr, old)
