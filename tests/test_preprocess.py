"""sfedge.runtime.preprocess: SPEC 2 resize + CLIP normalisation, and the cv2 option's deviation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sfedge.runtime.preprocess import preprocess
from sfedge.spec import CLIP_MEAN, CLIP_STD, PreprocessSpec
from sfedge.synthetic import render_frame

# Written out from SPEC.md section 2, independently of sfedge.spec.
SPEC_MEAN = (0.48145466, 0.4578275, 0.40821073)
SPEC_STD = (0.26862954, 0.26130258, 0.27577711)


def _expected(frame: np.ndarray, size: int = 336) -> np.ndarray:
    """One frame the slow, obvious way: PIL bicubic resize, float64 maths, per channel."""
    img = np.asarray(Image.fromarray(frame).resize((size, size), resample=Image.Resampling.BICUBIC), np.float64)
    return np.stack([(img[..., c] / 255.0 - SPEC_MEAN[c]) / SPEC_STD[c] for c in range(3)])


def test_spec_constants():
    spec = PreprocessSpec()
    assert spec.size == 336 and spec.resize == "pil"
    assert spec.mean == CLIP_MEAN == SPEC_MEAN and spec.std == CLIP_STD == SPEC_STD


@pytest.mark.parametrize("width,height", [(320, 240), (640, 480), (500, 200)])  # enlarge, shrink, mixed
def test_matches_independent_pil_computation(width, height):
    frames = [render_frame(i, width, height, seed=i) for i in (0, 7, 31)]
    out = preprocess(frames)
    assert out.shape == (3, 3, 336, 336) and out.dtype == np.float32 and out.flags.c_contiguous
    for got, frame in zip(out, frames):
        np.testing.assert_allclose(got, _expected(frame), rtol=0, atol=2e-6)


def test_other_size_and_constants():
    spec = PreprocessSpec(size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    frame = render_frame(3, 96, 64)
    out = preprocess([frame], spec)[0]
    img = np.asarray(Image.fromarray(frame).resize((28, 28), Image.BICUBIC), np.float64).transpose(2, 0, 1)
    np.testing.assert_allclose(out, img / 127.5 - 1.0, atol=2e-6)


@pytest.mark.parametrize("width,height", [(320, 240), (1280, 720)])  # cv2 INTER_CUBIC / INTER_AREA
def test_cv2_deviation_from_pil(width, height):
    pytest.importorskip("cv2")
    frames = [render_frame(i, width, height, seed=i) for i in range(4)]
    pil = preprocess(frames)
    cv = preprocess(frames, PreprocessSpec(resize="cv2"))
    diff = np.abs(cv - pil)
    pixels = diff * np.asarray(SPEC_STD, np.float32)[:, None, None] * 255  # back in 0..255 pixel units
    print(
        f"\ncv2 vs PIL, {width}x{height} -> 336: max |diff| {diff.max():.4f} (normalised) = {pixels.max():.1f}/255, "
        f"mean {diff.mean():.5f} = {pixels.mean():.3f}/255"
    )
    assert cv.shape == pil.shape and cv.dtype == np.float32
    assert diff.mean() < 0.05  # the same picture: differences only along edges


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="resize"):
        preprocess([render_frame(0)], PreprocessSpec(resize="gpu"))
    with pytest.raises(ValueError, match="at least one"):
        preprocess([])


def test_runtime_modules_import_no_torch_or_cv2():
    code = "import sys, sfedge.runtime.video, sfedge.runtime.preprocess; print(sorted({'torch', 'cv2', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
