"""sfedge.spec: frame sampling (SPEC 2), token counts (SPEC 4), settings round trip."""

from __future__ import annotations

import pytest

from sfedge.spec import (
    GenerationSpec, PipelineSpec, PreprocessSpec, SamplingSpec, SlowFastSpec, sample_frame_indices,
)


def _uniform_sample(total: int, num_frames: int = 50) -> list[int]:
    """Independent re-implementation with Python floats and round() (also half-to-even)."""
    n = min(total, num_frames)
    seg = float(total - 1) / n
    return [(round(seg * i) + round(seg * (i + 1))) // 2 for i in range(n)]


@pytest.mark.parametrize(("total", "expected"), [
    (1, [0]),
    (3, [0, 1, 1]),
    (7, [0, 1, 2, 3, 3, 4, 5]),  # SPEC 2: repeats 3, skips 6
    (51, list(range(50))),  # seg = 1: frame i is i
])
def test_sample_frame_indices_hand_values(total, expected):
    assert sample_frame_indices(total) == expected


def test_sample_frame_indices_300():
    got = sample_frame_indices(300)
    assert len(got) == 50
    assert got[:5] == [3, 9, 15, 21, 27]  # SPEC 2: "3, 9, 15, ..., 296"
    assert got[-1] == 296


@pytest.mark.parametrize("total", [1, 3, 7, 49, 50, 51, 300, 1001])
def test_sample_frame_indices_matches_independent(total):
    got = sample_frame_indices(total)
    assert got == _uniform_sample(total)
    assert len(got) == min(total, 50)
    assert all(0 <= i < total for i in got)
    assert got == sorted(got)


def test_sample_frame_indices_rejects_empty():
    with pytest.raises(ValueError):
        sample_frame_indices(0)


def test_num_tokens_default_is_3680_for_50_frames():
    spec = SlowFastSpec()
    assert spec.num_tokens(50) == 3680 == 10 * 288 + 50 * 16
    assert spec.name() == "slow_10frms_spatial_1d_max_pool-fast_4x4"
    assert SlowFastSpec(slow_mode="2d_avg", fast_grid=6).num_tokens(7) == 10 * 144 + 7 * 36


@pytest.mark.parametrize("kwargs", [dict(slow_mode="3d_max"), dict(slow_frames=0), dict(fast_grid=5)])
def test_slowfast_spec_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        SlowFastSpec(**kwargs)


def test_pipeline_spec_round_trip():
    spec = PipelineSpec(SamplingSpec(32), PreprocessSpec(resize="cv2"), SlowFastSpec(8, "2d_max", 3))
    assert PipelineSpec.from_dict(spec.to_dict()) == spec
    assert PipelineSpec.from_dict({}) == PipelineSpec()


def test_generation_spec_greedy_by_default():
    assert GenerationSpec().greedy and GenerationSpec().max_new_tokens == 128
    assert not GenerationSpec(temperature=0.7).greedy
