"""The two small device graphs written beside the LLM at export time.

The greedy decode step, two nodes:

    token  = ArgMax(logits[1, 1, V], axis=2, keepdims=0)    -> int64 [1, 1]
    embeds = Gather(table[V, D], token, axis=0)             -> [1, 1, D]

The runtime runs it on the LLM's device with `embeds` bound to the buffer the LLM reads as
`inputs_embeds`, so greedy decoding never copies logits to the host: only `token` (8 bytes)
goes there. The embedding table is an input (bound once), not a weight: the graph is a few
hundred bytes and embeddings.npy stays the one copy on disk.

The splice (`SPLICE_PATH`), the prompt embeddings with the visual tokens put in on the device
(runtime/splice.py lays the prompt out):

    text   = Gather(table[V, D], ids[S], axis=0)                  -> [S, D]
    picked = Cast(Gather(visual[N, D], rows[M], axis=0), table's dtype)  -> [M, D]
    embeds = Unsqueeze(ScatterND(text, positions[M, 1], picked), 0)     -> [1, S, D]

`ids` holds 0 at visual positions (overwritten); `rows` are the pooled tokens that fall in the
positions being prefilled (all of them for a fresh prompt). Any number of visual blocks, anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATH = "greedy_step.onnx"
SPLICE_PATH = "splice.onnx"
OPSET = 17


def export_step(root: Path, logits_dtype: str, table_dtype: str) -> dict:
    """Write root/greedy_step.onnx for the given dtypes (numpy names); return its manifest entry."""
    from onnx import helper

    io = {
        "inputs": [("logits", logits_dtype, [1, 1, "V"]), ("table", table_dtype, ["V", "D"])],
        "outputs": [("token", "int64", [1, 1]), ("embeds", table_dtype, [1, 1, "D"])],
    }
    nodes = [helper.make_node("ArgMax", ["logits"], ["token"], axis=2, keepdims=0),
             helper.make_node("Gather", ["table", "token"], ["embeds"], axis=0)]
    return _save(root, PATH, "greedy_step", nodes, io)


def export_splice(root: Path, visual_dtype: str, table_dtype: str) -> dict:
    """Write root/splice.onnx (pooled visual tokens in `visual_dtype`, the table and the result in
    `table_dtype`, numpy names); return its manifest entry."""
    from onnx import helper

    io = {
        "inputs": [("ids", "int64", ["S"]), ("table", table_dtype, ["V", "D"]), ("visual", visual_dtype, ["N", "D"]),
                   ("rows", "int64", ["M"]), ("positions", "int64", ["M", 1])],
        "outputs": [("embeds", table_dtype, [1, "S", "D"])],
    }
    nodes = [helper.make_node("Gather", ["table", "ids"], ["text"], axis=0),
             helper.make_node("Gather", ["visual", "rows"], ["picked"], axis=0),
             helper.make_node("Cast", ["picked"], ["picked_cast"], to=_elem(table_dtype)),
             helper.make_node("ScatterND", ["text", "positions", "picked_cast"], ["spliced"]),
             helper.make_node("Unsqueeze", ["spliced", "axis0"], ["embeds"])]
    axis0 = helper.make_tensor("axis0", _elem("int64"), [1], [0])
    return _save(root, SPLICE_PATH, "splice", nodes, io, [axis0])


def _elem(dtype: str) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _save(root: Path, path: str, name: str, nodes: list, io: dict, initializers: list = ()) -> dict:
    """Check and write a small graph; return its manifest entry (path, opset, I/O)."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, _elem(d), s) for n, d, s in io["inputs"]],
        [helper.make_tensor_value_info(n, _elem(d), s) for n, d, s in io["outputs"]],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sfedge")
    model.ir_version = 8  # readable by every onnxruntime sfedge supports
    onnx.checker.check_model(model)
    onnx.save(model, str(Path(root) / path))
    return {
        "path": path,
        "opset": OPSET,
        **{k: [{"name": n, "dtype": d, "shape": s} for n, d, s in v] for k, v in io.items()},
    }
