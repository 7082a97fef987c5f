"""int4 weights for the CPU decoder with one fp32 weight in memory at a time.

onnxruntime-genai's builder makes its CPU int4 decoder by holding the whole fp32 decoder in memory
as one protobuf and running ONNX Runtime's MatMulNBitsQuantizer over it: ~2.9x the LLM's fp16
size in RAM (docs/BENCHMARKS.md, "Export memory"), about 40 GB for a 7B. Here the builder writes
the fp32 decoder to disk instead (weights streamed out one at a time, as for any fp32 build), and
the per-node quantizer that MatMulNBitsQuantizer runs (`DefaultWeightOnlyQuantizer`, with the
settings the builder passes: 4 bits, symmetric, QOperator MatMulNBits, the block size and accuracy
level of `llm.quantization`) turns each MatMul into MatMulNBits while only its own weight is
loaded. The result is the builder's own int4 decoder, node for node and byte for byte
(tests/test_quantize.py builds both and compares them).

    python -m sfedge.export.quantize SRC_DIR DST_DIR BLOCK_SIZE ACCURACY_LEVEL

runs it in a process of its own (the export does, so that every byte it used goes back to the OS).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

MODEL = "model.onnx"


def quantize_int4(src: Path, dst: Path, block_size: int, accuracy_level: int) -> None:
    """src/model.onnx (+ its external data, fp32, from the builder) -> dst/model.onnx +
    model.onnx.data with every MatMul's constant weight as MatMulNBits int4; the builder's other
    files (genai_config.json, tokenizer files) are copied beside it."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )
    from onnxruntime.quantization.quant_utils import QuantFormat

    def load(tensor) -> None:
        """Read a tensor's external data into it (then it is an ordinary in-memory initializer)."""
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(src))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]

    model = onnx.load(str(src / MODEL), load_external_data=False)
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ValueError("the decoder has subgraphs; streaming int4 quantization handles flat graphs only")
    quantizer = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
        quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",), bits=4))
    initializers = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is None:
            nodes.append(node)
            continue
        # The fp32 weight is loaded into a scratch graph of its own: protobuf keeps a message's
        # bytes in its tree's arena until the whole tree goes, so loading it into `graph` would
        # keep every fp32 weight alive to the end. The quantizer adds the int4 weight and its
        # scales to the scratch graph; they are copied over, and the scratch graph is dropped.
        scratch = onnx.GraphProto()
        scratch.initializer.add().CopyFrom(weight)
        load(scratch.initializer[0])
        nodes.extend(quantizer.quantize(node, [scratch]))
        added = [t for t in scratch.initializer if t.name != weight.name and t.name not in initializers]
        graph.initializer.extend(added)  # (a weight two MatMuls share is quantized twice, added once)
        initializers.update((t.name, None) for t in added)  # names only: a reference would keep
        del scratch, added  # the scratch graph's arena (and its fp32 weight) alive
    graph.ClearField("node")
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for i in reversed(range(len(graph.initializer))):  # in place: a copy would double the int4 bytes
        if graph.initializer[i].name not in used:
            del graph.initializer[i]  # the fp32 weights (never loaded into this graph)
    for tensor in graph.initializer:  # the norms, rotary caches ... (small) come along
        load(tensor)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))

    dst.mkdir(parents=True, exist_ok=True)
    for stale in (dst / MODEL, dst / (MODEL + ".data")):  # onnx appends to an existing data file
        stale.unlink(missing_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(MODEL):
            shutil.copy2(f, dst / f.name)
    onnx.save_model(model, str(dst / MODEL), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=MODEL + ".data", size_threshold=0)


if __name__ == "__main__":
    quantize_int4(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
