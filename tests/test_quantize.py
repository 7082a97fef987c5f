"""int4 for the CPU, one weight at a time (sfedge/export/quantize.py), against the builder's own
int4 CPU path: the same decoder, node for node and byte for byte."""

from __future__ import annotations

import filecmp
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _graph(path):
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path / "model.onnx"))
    nodes = [(n.op_type, n.domain, n.name, tuple(n.input), tuple(n.output),
              tuple((a.name, str(helper.get_attribute_value(a))) for a in n.attribute)) for n in model.graph.node]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    io = ([str(v.type) + v.name for v in model.graph.input], [str(v.type) + v.name for v in model.graph.output])
    return nodes, weights, opsets, io


def test_streamed_int4_is_the_builders_own_int4(tiny_dir, tmp_path):
    from sfedge.export.llm import _run_logged, builder_command, run_builder, save_text_checkpoint

    text = tmp_path / "text"
    save_text_checkpoint(tiny_dir, text, tmp_path / "emb.npy", "float32")
    own = tmp_path / "builder-int4"
    _run_logged(builder_command(text, own, "int4", "cpu"), tmp_path / "own.log", own, "builder")
    streamed = tmp_path / "streamed-int4"
    run_builder(text, streamed, "int4", "cpu", tmp_path / "streamed.log")

    (own_nodes, own_w, own_ops, own_io), (nodes, w, ops, io) = _graph(own), _graph(streamed)
    assert any(n[0] == "MatMulNBits" for n in nodes) and not any(n[0] == "MatMul" for n in nodes)
    assert nodes == own_nodes and ops == own_ops and io == own_io
    assert set(w) == set(own_w)
    for name, value in own_w.items():
        assert w[name].dtype == value.dtype and np.array_equal(w[name], value), name
    assert filecmp.cmp(own / "genai_config.json", streamed / "genai_config.json", shallow=False)
    assert not (tmp_path / "llm-fp32").exists()  # the fp32 scratch copy is gone


def test_a_failed_quantization_is_one_clear_error(tmp_path):
    from sfedge.errors import SfedgeError
    from sfedge.export.llm import _run_logged

    (tmp_path / "src").mkdir()
    cmd = [sys.executable, "-m", "sfedge.export.quantize", str(tmp_path / "src"), str(tmp_path / "dst"), "32", "4"]
    with pytest.raises(SfedgeError, match="int4 quantization failed"):
        _run_logged(cmd, tmp_path / "log", tmp_path / "dst", "int4 quantization")
