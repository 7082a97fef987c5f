"""The greedy decode step as a two-node ONNX graph, written beside the LLM at export time:

    token  = ArgMax(logits[1, 1, V], axis=2, keepdims=0)    -> int64 [1, 1]
    embeds = Gather(table[V, D], token, axis=0)             -> [1, 1, D]

The runtime runs it on the LLM's device with `embeds` bound to the buffer the LLM reads as
`inputs_embeds`, so greedy decoding never copies logits to the host: only `token` (8 bytes)
goes there. The embedding table is an input (bound once), not a weight: the graph is a few
hundred bytes and embeddings.npy stays the one copy on disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATH = "greedy_step.onnx"
OPSET = 17


def export_step(root: Path, logits_dtype: str, table_dtype: str) -> dict:
    """Write root/greedy_step.onnx for the given dtypes (numpy names); return its manifest entry."""
    import onnx
    from onnx import helper

    def elem(dtype: str) -> int:
        return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    io = {
        "inputs": [("logits", logits_dtype, [1, 1, "V"]), ("table", table_dtype, ["V", "D"])],
        "outputs": [("token", "int64", [1, 1]), ("embeds", table_dtype, [1, 1, "D"])],
    }
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["logits"], ["token"], axis=2, keepdims=0),
         helper.make_node("Gather", ["table", "token"], ["embeds"], axis=0)],
        "greedy_step",
        [helper.make_tensor_value_info(n, elem(d), s) for n, d, s in io["inputs"]],
        [helper.make_tensor_value_info(n, elem(d), s) for n, d, s in io["outputs"]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sfedge")
    model.ir_version = 8  # readable by every onnxruntime sfedge supports
    onnx.checker.check_model(model)
    onnx.save(model, str(Path(root) / PATH))
    return {
        "path": PATH,
        "opset": OPSET,
        **{k: [{"name": n, "dtype": d, "shape": s} for n, d, s in v] for k, v in io.items()},
    }
