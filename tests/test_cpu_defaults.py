"""The CPU settings issue 18 measured and kept (docs/BENCHMARKS.md, "CPU: issue 18"), pinned as the
exporter's defaults."""

from __future__ import annotations


def test_cpu_int4_matmuls_compute_in_int8(engines_int4):
    """accuracy_level 4 (int8 activations in MatMulNBits): on the AVX2 EPYC, decode 4.3x faster in
    CPU time than accuracy_level 0 and prefill unchanged (A/B in docs/BENCHMARKS.md)."""
    import onnx

    from sfedge.manifest import load_manifest

    m = load_manifest(engines_int4)
    assert m["quantization"]["accuracy_level"] == 4 and m["quantization"]["block_size"] == 32
    graph = onnx.load(str(engines_int4 / m["components"]["llm"]["path"]), load_external_data=False).graph
    levels = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
