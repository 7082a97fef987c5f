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


def test_slowfast_timing_excludes_lazy_features(pipeline_fp32):
    """The features a window computes lazily (preprocessing + vision) are not timed as pooling:
    `sfedge bench` showed slowfast = vision before the fix (docs/BENCHMARKS.md, issue 18 targets)."""
    import os
    import time

    import numpy as np

    from sfedge.runtime.pipeline import _drain
    from sfedge.spec import GenerationSpec

    n = 2
    features = np.zeros((n, 576, pipeline_fp32.manifest["model"]["hidden_size"]), np.float32)

    def slow_features():
        time.sleep(0.3)
        return features

    visual = pipeline_fp32.window([os.urandom(16) for _ in range(n)], slow_features)  # never cached
    r = _drain(pipeline_fp32.stream_visual(visual, "What?", gen=GenerationSpec(max_new_tokens=1)), None)
    assert 0 < r.timings_ms["slowfast"] < 250, r.timings_ms
    assert r.timings_ms["ttft"] >= 300
