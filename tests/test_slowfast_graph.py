"""The exported SlowFast graph (`sfedge.export.slowfast.SlowFastGraph`) against the reference's
`SlowFastPool` and the independent numpy pooling of test_pooling.py: every slow mode, slow-frame
count and fast grid, T dynamic (T < S included), fp32 and fp16. Max pooling must be bit-exact,
averages within 1e-6 of the largest value (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_pooling import numpy_slowfast

from sfedge.export.slowfast import SlowFastGraph, export_slowfast
from sfedge.reference.slowfast import SlowFastPool, slow_indices
from sfedge.spec import GRID, SLOW_MODES, SlowFastSpec

D = 8
STANDARD_OPS = {"Shape", "Gather", "Reshape", "ReduceMax", "ReduceMean", "Concat", "Constant"}


def _features(t: int, d: int = D, seed: int = 0) -> np.ndarray:
    # frame id + noise: a wrong slow frame shows up as an error of ~1
    rng = np.random.default_rng(seed + t)
    return np.arange(t, dtype=np.float32)[:, None, None] + rng.standard_normal((t, 576, d), dtype=np.float32)


def _reference(spec: SlowFastSpec, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return SlowFastPool(spec)(torch.from_numpy(x)).numpy()


def _check(got: np.ndarray, want: np.ndarray, spec: SlowFastSpec, rel: float = 1e-6) -> None:
    """Slow max tokens bit-exact; everything else within `rel` of the largest |value|."""
    assert got.shape == want.shape and got.dtype == want.dtype
    n_slow = spec.slow_frames * spec.slow_tokens_per_frame
    if spec.slow_mode.endswith("max"):
        np.testing.assert_array_equal(got[:n_slow], want[:n_slow])
    g, w = got.astype(np.float64), want.astype(np.float64)
    assert np.max(np.abs(g - w)) <= rel * np.max(np.abs(w))


def _session(path):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("t", (1, 2, 7, 10, 11, 50))
@pytest.mark.parametrize("slow_mode", SLOW_MODES)
def test_eager_matches_reference_and_numpy(t, slow_mode):
    spec = SlowFastSpec(slow_mode=slow_mode)
    x = _features(t)
    with torch.no_grad():
        got = SlowFastGraph(spec, D, 64)(torch.from_numpy(x)).numpy()
    _check(got, _reference(spec, x), spec)
    _check(got, numpy_slowfast(x, slow_mode=slow_mode), spec)


@pytest.mark.parametrize("fast_grid", [g for g in range(1, GRID + 1) if GRID % g == 0])
def test_eager_fast_grids(fast_grid):
    spec = SlowFastSpec(slow_frames=3, fast_grid=fast_grid)
    x = _features(5)
    with torch.no_grad():
        got = SlowFastGraph(spec, D, 8)(torch.from_numpy(x)).numpy()
    _check(got, _reference(spec, x), spec)
    _check(got, numpy_slowfast(x, slow_frames=3, fast_grid=fast_grid), spec)


CONFIGS = [  # (spec, max_frames, frame counts): every slow mode, S < / = / > T, several grids
    (SlowFastSpec(), 64, (1, 3, 7, 10, 11, 50, 64)),
    (SlowFastSpec(slow_mode="1d_avg", fast_grid=6), 16, (1, 2, 9, 16)),
    (SlowFastSpec(slow_frames=4, slow_mode="2d_max", fast_grid=2), 16, (1, 3, 4, 13)),
    (SlowFastSpec(slow_frames=20, slow_mode="2d_avg", fast_grid=3), 200, (1, 7, 164, 200)),
    (SlowFastSpec(slow_frames=14, fast_grid=24), 16, (2, 4, 13)),
    (SlowFastSpec(slow_frames=1, slow_mode="1d_max", fast_grid=1), 8, (1, 5)),
]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(("spec", "max_frames", "frame_counts"), CONFIGS, ids=[c[0].name() for c in CONFIGS])
def test_exported_fp32_matches_reference(tmp_path, spec, max_frames, frame_counts):
    pytest.importorskip("onnx")
    path, cspec = export_slowfast(spec, D, max_frames, tmp_path)
    assert cspec.outputs[0].dynamic == {"N": (spec.num_tokens(1), spec.num_tokens(max_frames))}
    sess = _session(path)
    for t in frame_counts:
        x = _features(t)
        got = sess.run(None, {"features": x})[0]
        assert got.shape == (spec.num_tokens(t), D), t
        _check(got, _reference(spec, x), spec)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("slow_frames", (10, 14, 20))
def test_exported_slow_indices_every_frame_count(tmp_path, slow_frames):
    """Row T of the in-graph table for every T in 1..max_frames: torch's float32 linspace exactly
    (S = 20, T = 164 and S = 14, T = 2 are where numpy's linspace differs)."""
    pytest.importorskip("onnx")
    max_frames = 170
    spec = SlowFastSpec(slow_frames=slow_frames, fast_grid=1)
    sess = _session(export_slowfast(spec, 1, max_frames, tmp_path)[0])
    for t in range(1, max_frames + 1):
        x = np.broadcast_to(np.arange(t, dtype=np.float32)[:, None, None], (t, 576, 1))
        got = sess.run(None, {"features": np.ascontiguousarray(x)})[0][: slow_frames * 288 : 288, 0]
        assert got.tolist() == slow_indices(t, slow_frames).tolist(), t


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("slow_mode", SLOW_MODES)
def test_exported_fp16(tmp_path, slow_mode):
    """fp16 in, fp16 out, standard ops only (CUDA / TensorRT friendly): max bit-exact with the
    reference on the same fp16 values, averages within fp16 rounding."""
    onnx = pytest.importorskip("onnx")
    spec = SlowFastSpec(slow_frames=4, slow_mode=slow_mode)
    path, _ = export_slowfast(spec, D, 16, tmp_path, torch.float16)
    graph = onnx.load(str(path)).graph
    assert {n.op_type for n in graph.node} <= STANDARD_OPS
    dtypes = {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    sess = _session(path)
    for t in (1, 3, 16):
        x = _features(t).astype(np.float16)
        got = sess.run(None, {"features": x})[0]
        want = _reference(spec, x.astype(np.float32)).astype(np.float16)
        _check(got, want, spec, rel=2e-3)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_graph_reductions_are_single_axis(tmp_path):
    """Every reduction reduces one axis of a reshape whose last dim is D (ORT's fast strided path),
    and T comes from Shape, not from a reduction over the features."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    for mode in SLOW_MODES:
        out = tmp_path / mode
        out.mkdir()
        graph = onnx.load(str(export_slowfast(SlowFastSpec(slow_mode=mode), D, 16, out)[0])).graph
        consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
        reductions = [n for n in graph.node if n.op_type.startswith("Reduce")]
        assert reductions and all(consts[n.input[1]].size == 1 for n in reductions)
        assert {n.op_type for n in graph.node} <= STANDARD_OPS
        shapes = [consts[n.input[1]] for n in graph.node if n.op_type == "Reshape"]
        assert all(s[-1] % D == 0 for s in shapes)
