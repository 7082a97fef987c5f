"""Frame differences (SPEC 8) on constructed frames: patch MAD, the skip rule against the last
ENCODED frame, and VideoLLaMA3's criterion (checked against transformers' own implementation)."""

from __future__ import annotations

import numpy as np
import pytest

from sfedge.runtime.frame_diff import DEFAULT_SKIP_THRESHOLD, FrameSkipper, patch_mad, videollama3_keep_mask
from sfedge.synthetic import render_scene


def frame(value=100):
    return np.full((336, 336, 3), value, np.uint8)


def test_patch_mad_on_constructed_frames():
    a, b = frame(), frame()
    b[3 * 14:4 * 14, 5 * 14:6 * 14] = 130  # one whole patch +30
    b[0:7, 0:14, 0] = 90  # half the rows of patch (0, 0), one channel of three, -10
    mad = patch_mad(b, a)
    assert mad.shape == (24, 24)
    assert mad[3, 5] == 30.0 and mad[0, 0] == pytest.approx(10 / 6)
    assert np.count_nonzero(mad) == 2
    np.testing.assert_array_equal(patch_mad(a, b), mad)  # absolute: symmetric
    with pytest.raises(ValueError, match="whole number"):
        patch_mad(np.zeros((30, 28, 3), np.uint8), np.zeros((30, 28, 3), np.uint8))


def test_skipper_compares_with_the_last_encoded_frame():
    s = FrameSkipper(4.0)
    ref = frame(100)
    assert not s.skip(ref)  # nothing encoded yet
    s.encoded(ref)
    decided = []
    for step in range(1, 7):  # a slow drift of +1 a frame: skipped until 4 away from the encoded frame
        f = frame(100 + step)
        skip = s.skip(f)
        decided.append(skip)
        if not skip:
            s.encoded(f)
    assert decided == [True, True, True, False, True, True]
    one_patch = frame(100 + 4)
    one_patch[:14, :14] += 4  # 8 away from the frame encoded at +4, in one patch only
    assert not s.skip(one_patch)
    assert FrameSkipper(None).skip(frame(0)) is False
    with pytest.raises(ValueError):
        FrameSkipper(300)


def test_default_threshold_on_rendered_scenes():
    """At the default threshold a static scene with noise (sigma 2) is skipped; the moving disc
    (12 frames apart: --fps 2 of a 24 fps source), with the same noise, never is."""
    from sfedge.runtime.preprocess import resize_frames

    static = resize_frames([render_scene(i, scene="static", noise=2.0) for i in range(4)])
    moving = resize_frames([render_scene(i * 12, scene="moving-object", noise=2.0) for i in range(4)])
    s = FrameSkipper(DEFAULT_SKIP_THRESHOLD)
    s.encoded(static[0])
    assert all(s.skip(f) for f in static[1:])
    s = FrameSkipper(DEFAULT_SKIP_THRESHOLD)
    s.encoded(moving[0])
    for f in moving[1:]:
        assert not s.skip(f)
        s.encoded(f)


def transformers_compression_mask():
    """`_get_compression_mask` of transformers' VideoLLaMA3 video processor, compiled from its source
    (the module imports torchvision, which this environment lacks; the function needs only torch)."""
    import ast
    import importlib.util
    from pathlib import Path

    torch = pytest.importorskip("torch")
    spec = importlib.util.find_spec("transformers")
    path = Path(spec.origin).parent / "models" / "video_llama_3" / "video_processing_video_llama_3.py"
    if not path.is_file():
        pytest.skip("this transformers has no VideoLLaMA3")
    fn = next(n for n in ast.walk(ast.parse(path.read_text()))
              if isinstance(n, ast.FunctionDef) and n.name == "_get_compression_mask")
    namespace = {"torch": torch, "Optional": __import__("typing").Optional}
    exec(compile(ast.Module([fn], []), str(path), "exec"), namespace)
    return namespace["_get_compression_mask"]


def test_videollama3_criterion_matches_transformers():
    theirs_fn = transformers_compression_mask()
    import torch

    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (4, 3, 56, 42)).astype(np.float32)  # 4 x 3 patches
    pixels[1] = pixels[0]
    pixels[1, :, :14, :14] += 0.001  # mean diff * 255 = 0.255 > 0.1: kept
    pixels[1, :, 14:28, 14:28] += 0.0002  # 0.051: dropped, as are the unchanged patches
    pixels[2] = pixels[1]  # nothing changed: only the first patch is kept (min_tokens)
    keep = videollama3_keep_mask(pixels)
    assert keep[0].all() and keep[3].all()
    assert keep[1].sum() == 1 and keep[1, 0, 0]
    assert keep[2].sum() == 1 and keep[2, 0, 0]
    # transformers' VideoLLaMA3 processor, merge size 1: its rows are the patches in raster order
    t, h, w = 4, 4, 3
    patches = pixels.reshape(t, 3, h, 14, w, 14).transpose(0, 2, 4, 1, 3, 5).reshape(t * h * w, -1)
    theirs = theirs_fn(
        None, torch.from_numpy(patches), torch.tensor([[t, h, w]]), torch.tensor([1]))
    np.testing.assert_array_equal(theirs.numpy(), keep.reshape(-1))
