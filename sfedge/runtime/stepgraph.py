"""The greedy step as a two-node ONNX graph, so that greedy decoding never reads logits on the host.

    token  = ArgMax(logits[1, 1, V], axis=2, keepdims=0)    -> int64 [1, 1]
    embeds = Gather(table[V, D], token, axis=0)             -> [1, 1, D]

It runs on the LLM's device: `embeds` is written straight into the buffer the LLM reads as
`inputs_embeds`, and only `token` (8 bytes) goes to the host. The runtime may not depend on the
`onnx` package, so the ModelProto is written here with a minimal protobuf encoder (field numbers
from onnx.proto3).
"""

from __future__ import annotations

import numpy as np

_ELEM = {np.dtype(np.float32): 1, np.dtype(np.int64): 7, np.dtype(np.float16): 10}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, dtype, shape: list) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in shape)
    tensor_type = _int(1, _ELEM[np.dtype(dtype)]) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str], **int_attrs: int) -> bytes:
    attrs = b"".join(_bytes(5, _bytes(1, k) + _int(3, v) + _int(20, 2)) for k, v in int_attrs.items())
    return b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + _bytes(4, op) + attrs


def greedy_step_model(logits_dtype, table_dtype) -> bytes:
    """Serialized ONNX model: inputs `logits` [1,1,V], `table` [V,D]; outputs `token`, `embeds`."""
    graph = (
        _bytes(1, _node("ArgMax", ["logits"], ["token"], axis=2, keepdims=0))
        + _bytes(1, _node("Gather", ["table", "token"], ["embeds"], axis=0))
        + _bytes(2, "greedy_step")
        + _bytes(11, _value_info("logits", logits_dtype, [1, 1, "V"]))
        + _bytes(11, _value_info("table", table_dtype, ["V", "D"]))
        + _bytes(12, _value_info("token", np.int64, [1, 1]))
        + _bytes(12, _value_info("embeds", table_dtype, [1, 1, "D"]))
    )
    opset = _bytes(1, "") + _int(2, 17)
    return _int(1, 8) + _bytes(2, "sfedge") + _bytes(7, graph) + _bytes(8, opset)
