"""SlowFastPool (SPEC 4) against an independent numpy implementation, and its ONNX-relevant traits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfedge.reference.slowfast import SlowFastPool, slow_index_table, slow_indices
from sfedge.spec import SLOW_MODES, SlowFastSpec

FRAME_COUNTS = (1, 2, 7, 10, 11, 50, 64)
D = 8


def numpy_slowfast(features: np.ndarray, slow_frames=10, slow_mode="1d_max", fast_grid=4) -> np.ndarray:
    """Written from the SPEC text with explicit loops over windows."""
    t, _, d = features.shape
    grid = features.reshape(t, 24, 24, d)
    reduce = np.max if slow_mode.endswith("max") else np.mean
    slow = []
    # slow frames exactly as SF-LLaVA's prepare_slowfast picks them (torch's float32 linspace)
    for f in torch.linspace(0, t, slow_frames + 1).to(torch.int32).tolist()[:-1]:
        if slow_mode.startswith("1d"):  # pairs of consecutive tokens in the row-major sequence
            seq = features[f]
            slow += [reduce(seq[j:j + 2], axis=0) for j in range(0, 576, 2)]
        else:
            slow += [reduce(grid[f, r:r + 2, c:c + 2].reshape(-1, d), axis=0)
                     for r in range(0, 24, 2) for c in range(0, 24, 2)]
    w = 24 // fast_grid
    fast = [grid[f, r * w:(r + 1) * w, c * w:(c + 1) * w].reshape(-1, d).mean(axis=0)
            for f in range(t) for r in range(fast_grid) for c in range(fast_grid)]
    return np.stack(slow + fast)


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    return {t: rng.standard_normal((t, 576, D)).astype(np.float32) for t in FRAME_COUNTS}


def _pool(spec: SlowFastSpec, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return SlowFastPool(spec)(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("t", FRAME_COUNTS)
@pytest.mark.parametrize("slow_mode", SLOW_MODES)
def test_slow_modes_match_numpy(features, t, slow_mode):
    spec = SlowFastSpec(slow_mode=slow_mode)
    got = _pool(spec, features[t])
    want = numpy_slowfast(features[t], slow_mode=slow_mode)
    assert got.shape == (spec.num_tokens(t), D) == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("t", FRAME_COUNTS)
@pytest.mark.parametrize("fast_grid", (1, 2, 3, 4, 6))
def test_fast_grids_match_numpy(features, t, fast_grid):
    spec = SlowFastSpec(fast_grid=fast_grid)
    got = _pool(spec, features[t])
    want = numpy_slowfast(features[t], fast_grid=fast_grid)
    assert got.shape == (spec.num_tokens(t), D) == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_default_shape_is_3680_for_50_frames(features):
    assert _pool(SlowFastSpec(), features[50]).shape == (3680, D)


def test_order_is_slow_then_fast_frame_major():
    # token value = frame index: slow tokens show the slow frames, fast tokens each frame 16 times
    t = 7
    x = torch.arange(t, dtype=torch.float32).reshape(t, 1, 1).expand(t, 576, 1)
    out = SlowFastPool()(x)[:, 0]
    assert out[:2880:288].tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 5, 6]
    assert out[2880:].tolist() == [float(f) for f in range(t) for _ in range(16)]


def test_row_major_within_frame():
    # token value = its column: 1-D max of pairs (0,1),(2,3).. gives 1,3,..; fast 4x4 gives column means
    x = torch.arange(24, dtype=torch.float32).repeat(24).reshape(1, 576, 1)
    out = SlowFastPool()(x)[:, 0]
    assert out[:12].tolist() == [float(c) for c in range(1, 24, 2)]
    assert out[2880:2884].tolist() == [2.5, 8.5, 14.5, 20.5]


@pytest.mark.parametrize(("t", "expected"), [
    (1, [0] * 10),
    (7, [0, 0, 1, 2, 2, 3, 4, 4, 5, 6]),  # SPEC 4
    (10, list(range(10))),
    (50, list(range(0, 50, 5))),
])
def test_slow_indices_by_hand(t, expected):
    assert slow_indices(t, 10).tolist() == expected


def test_slow_indices_follow_torch_float32_linspace_not_numpy():
    # the reference code's torch.linspace: index 15 of 20 over 164 frames is 123 (numpy says 122)
    assert slow_indices(164, 20)[15] == 123
    assert np.linspace(0, 164, 21).astype(np.int32)[15] == 122
    assert slow_indices(2, 14).tolist() == [0] * 8 + [1] * 6  # numpy: 7 zeros


def test_slow_index_table_rows_are_slow_indices():
    table = slow_index_table(300, 14)
    assert all(table[t].tolist() == slow_indices(t, 14).tolist() for t in range(1, 301))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.onnx internals
def test_exports_to_onnx_with_dynamic_frame_count(tmp_path):
    """The production exporter: one graph for every T, including T < S and torch's linspace quirks
    (S = 20, T = 164; S = 14, T = 2)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sfedge.export.slowfast import export_slowfast

    for spec, frame_counts in ((SlowFastSpec(slow_frames=20, slow_mode="2d_max", fast_grid=3), (1, 7, 164, 200)),
                               (SlowFastSpec(slow_frames=14), (2, 4, 13))):
        (tmp_path / str(spec.slow_frames)).mkdir()
        path, _ = export_slowfast(spec, D, 200, tmp_path / str(spec.slow_frames))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for t in frame_counts:
            frame_ids = np.arange(t, dtype=np.float32)[:, None, None]  # shows which frames were picked
            x = frame_ids + np.random.default_rng(t).random((t, 576, D), dtype=np.float32)
            got = session.run(None, {"features": x})[0]
            # values reach ~T + 1: the fp32 sums of the average pool round at ~1e-7 relative
            np.testing.assert_allclose(got, _pool(spec, x), rtol=1e-6, atol=1e-6 * (t + 1), err_msg=f"T={t}")
