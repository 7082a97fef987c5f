"""Deliberately wrong engines for the mutation tests (tests/test_mutations.py): each function edits
a copy of an exported engines directory's ONNX graphs in place and re-writes the manifest's file
hashes (so `sfedge verify`'s integrity check passes and only the numbers can fail).

* rope_theta: the decoder's cos/sin caches recomputed with base 500,000 instead of 10,000
  (a Llama-2 / Llama-3 mix-up);
* mask_shift: the attention mask shifted right by one position ([0, m0, .., m(n-2)]) before the
  builder's mask subgraph reads it;
* kv_swap: layer 0's K and V projections swapped (the fused qkv weight's K and V blocks; packed
  rows and scales in an int4 graph);
* scales_x1.25: every quantization scale of layer 0 x 1.25 (int4 only: other precisions have none);
* gelu_relu: the projector's GELU (erf form or a Gelu node) replaced by ReLU in vision.onnx.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sfedge.manifest import load_manifest, write_manifest

MUTATIONS = ("rope_theta", "mask_shift", "kv_swap", "scales_x1.25", "gelu_relu")


def _load(path: Path):
    return onnx.load(str(path))


def _save(model, path: Path) -> None:
    data = path.with_name(path.name + ".data")
    external = data.exists()
    data.unlink(missing_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name)
    else:
        onnx.save_model(model, str(path))


def _init(model, name: str):
    return next(t for t in model.graph.initializer if t.name == name)


def _set(tensor, array: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array.astype(numpy_helper.to_array(tensor).dtype)), tensor.name))


def rope_theta(model, manifest: dict, theta: float = 500_000.0) -> None:
    cos, sin = _init(model, "cos_cache"), _init(model, "sin_cache")
    old = numpy_helper.to_array(cos)
    positions, half = old.shape
    inv_freq = 1.0 / (theta ** (np.arange(0, 2 * half, 2, dtype=np.float64) / (2 * half)))
    base = 1.0 / (10_000.0 ** (np.arange(0, 2 * half, 2, dtype=np.float64) / (2 * half)))
    angles = np.outer(np.arange(positions), inv_freq)
    assert np.allclose(old, np.cos(np.outer(np.arange(positions), base)), atol=1e-3), "cos_cache is not base 10,000"
    _set(cos, np.cos(angles))
    _set(sin, np.sin(angles))


def mask_shift(model, manifest: dict) -> None:
    g = model.graph
    reduce = next(n for n in g.node if n.op_type == "ReduceSum" and "attention_mask" in n.input)
    shifted = "attention_mask_shifted_by_one"
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                          (("mut_zero", [[0]]), ("mut_start", [0]), ("mut_end", [-1]), ("mut_axis", [1]))])
    g.node.extend([helper.make_node("Slice", ["attention_mask", "mut_start", "mut_end", "mut_axis"], ["mut_sliced"]),
                   helper.make_node("Concat", ["mut_zero", "mut_sliced"], [shifted], axis=1)])
    reduce.input[list(reduce.input).index("attention_mask")] = shifted
    _topological(g)


def _topological(g) -> None:
    """Nodes re-ordered so that every input is produced before it is used (appended nodes)."""
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    nodes, ordered = list(g.node), []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise ValueError("graph has a cycle or a missing input")
        nodes = rest
    g.ClearField("node")
    g.node.extend(ordered)


def kv_swap(model, manifest: dict, layer: int = 0) -> None:
    kv = manifest["components"]["llm"]["kv_cache"]
    heads, dim = kv["num_kv_heads"], kv["head_dim"]
    node = next(n for n in model.graph.node if n.op_type in ("MatMul", "MatMulNBits") and f"layers.{layer}/attn/qkv_proj" in n.name)
    kv_cols = heads * dim
    if node.op_type == "MatMul":  # [K, Nq + Nk + Nv]: K and V are the last two column blocks
        t = _init(model, node.input[1])
        w = numpy_helper.to_array(t).copy()
        n = w.shape[1]
        k, v = slice(n - 2 * kv_cols, n - kv_cols), slice(n - kv_cols, n)
        w[:, k], w[:, v] = w[:, v].copy(), w[:, k].copy()
        _set(t, w)
        return
    for i in (1, 2):  # packed [N, blocks, blob] and scales [N, blocks] (or [N * blocks]): rows
        t = _init(model, node.input[i])
        a = numpy_helper.to_array(t).copy()
        n = {a.name: a for a in node.attribute}["N"].i
        rows = a.reshape(n, -1)
        k, v = slice(n - 2 * kv_cols, n - kv_cols), slice(n - kv_cols, n)
        rows[k], rows[v] = rows[v].copy(), rows[k].copy()
        _set(t, rows.reshape(a.shape))


def scales_x125(model, manifest: dict, layer: int = 0) -> None:
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits" and f"/layers.{layer}/" in n.name]
    if not nodes:
        raise NotApplicable("no quantization scales (not an int4 decoder)")
    for node in nodes:
        t = _init(model, node.input[2])
        _set(t, numpy_helper.to_array(t) * np.float32(1.25))


def gelu_relu(model, manifest: dict) -> None:
    g = model.graph
    act = [n for n in g.node if n.name.startswith("/projector/act/")]
    if len(act) == 1 and act[0].op_type == "Gelu":
        x, y = act[0].input[0], act[0].output[0]
    else:  # erf form: y = x * 0.5 * (1 + erf(x / sqrt 2)) -- its input is the Div's first input
        x = next(n.input[0] for n in act if n.op_type == "Div")
        consumers = {i for n in g.node if n not in act for i in n.input}
        y = next(o for n in act for o in n.output if o in consumers or o in {v.name for v in g.output})
    keep = [n for n in g.node if not n.name.startswith("/projector/act/")]
    g.ClearField("node")
    g.node.extend(keep + [helper.make_node("Relu", [x], [y], name="/projector/act/Relu")])
    _topological(g)


class NotApplicable(Exception):
    """The mutation has nothing to change in this engine (e.g. scales at fp32)."""


_FUNCS = {"rope_theta": ("llm", rope_theta), "mask_shift": ("llm", mask_shift), "kv_swap": ("llm", kv_swap),
          "scales_x1.25": ("llm", scales_x125), "gelu_relu": ("vision", gelu_relu)}


def mutate(src: Path, dst: Path, name: str) -> Path:
    """A copy of engines `src` at `dst` with mutation `name` applied; raises NotApplicable."""
    shutil.copytree(src, dst)
    manifest = load_manifest(dst, verify_files=False)
    component, func = _FUNCS[name]
    path = dst / manifest["components"][component]["path"]
    model = _load(path)
    func(model, manifest)
    _save(model, path)
    write_manifest(dst, {k: v for k, v in manifest.items() if k not in ("files", "schema_version")})
    return dst
