"""VideoLLaMA3's numpy preprocessing (sfedge/runtime/videollama3_*.py) against transformers.

The resize is checked against PyTorch's uint8 antialiased bicubic kernel (what torchvision's v2
resize runs on CPU); the whole video processor (sampling, resize, normalise, patches, grid,
compression mask, timestamps) against transformers' VideoLlama3VideoProcessor when torchvision
imports (skipped otherwise, with the reason)."""

from __future__ import annotations

import numpy as np
import pytest

from sfedge.errors import SfedgeError
from sfedge.runtime import videollama3_preprocess as vp
from sfedge.runtime.videollama3_resize import resize_bicubic_uint8

torch = pytest.importorskip("torch")


def _video(t, h, w, seed=0, motion="moving"):
    """uint8 [t, h, w, 3]: smooth gradients plus noise; "static": one frame repeated; "half": the
    left half still, the right half moving."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        shift = 0 if motion == "static" else 3 * i
        base = np.stack([(xx + shift) * 255 // max(w, 1), (yy * 2 + shift) % 256, (xx + yy + 5 * shift) % 256], -1)
        noise = np.random.default_rng(seed).integers(0, 20, (h, w, 3)) if motion == "static" else rng.integers(0, 20, (h, w, 3))
        frame = np.clip(base + noise, 0, 255).astype(np.uint8)
        if motion == "half" and i:
            frame[:, : w // 2] = frames[0][:, : w // 2]
        frames.append(frame)
    return np.stack(frames)


@pytest.mark.parametrize("h,w,oh,ow", [(37, 53, 28, 56), (100, 77, 56, 56), (20, 30, 56, 84), (240, 320, 112, 140),
                                       (5, 7, 28, 28), (300, 2, 28, 28), (57, 91, 57, 112), (480, 640, 196, 252)])
def test_resize_is_torch_uint8_bicubic(h, w, oh, ow):
    img = np.random.default_rng(h * w).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(0, 3, 1, 2).contiguous(), size=(oh, ow),
                                          mode="bicubic", antialias=True)
    np.testing.assert_array_equal(resize_bicubic_uint8(img, oh, ow), ref.permute(0, 2, 3, 1).numpy())


def test_resize_differs_from_pil():
    """Why the port exists: PIL's bicubic is not torchvision's (so a PIL resize would need a tolerance)."""
    from PIL import Image

    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(img).resize((56, 28), Image.BICUBIC))
    assert np.abs(pil.astype(int) - resize_bicubic_uint8(img, 28, 56)).max() > 1


def test_position_ids_are_transformers():
    from transformers.vision_utils import get_vision_position_ids

    for gh, gw in [(2, 2), (4, 6), (8, 2), (10, 14)]:
        ref = get_vision_position_ids(torch.tensor([[3, gh, gw]]), 2)[: gh * gw].numpy()
        np.testing.assert_array_equal(vp.position_ids(gh, gw), ref)


def test_spec_from_manifest():
    spec = vp.VideoProcessorSpec.from_manifest({"fps": 2, "max_frames": 8, "image_mean": [0.1, 0.2, 0.3],
                                                "compression": {"enabled": False, "threshold": 0.5}})
    assert (spec.fps, spec.max_frames, spec.image_mean, spec.compression, spec.threshold) == (2, 8, (0.1, 0.2, 0.3), False, 0.5)
    with pytest.raises(SfedgeError, match="temporal_patch_size"):
        vp.VideoProcessorSpec(temporal_patch_size=2)


def test_bad_frames_are_one_line_errors():
    with pytest.raises(SfedgeError, match="one size"):
        vp.preprocess_frames([np.zeros((28, 28, 3), np.uint8), np.zeros((56, 28, 3), np.uint8)], [0, 1], 1.0)
    with pytest.raises(SfedgeError, match="frame rate"):
        vp.sample_indices(10, 0)


def test_no_prune_keeps_every_token():
    video = _video(5, 60, 90, motion="static")
    pruned = vp.preprocess_frames(video, list(range(5)), 1.0)
    full = vp.preprocess_frames(video, list(range(5)), 1.0, prune=False)
    assert pruned.kept_per_frame[1:] == [1] * 4 and pruned.pruned == 4 * (pruned.tokens_per_frame - 1)
    assert full.pruned == 0 and full.kept == 5 * full.tokens_per_frame
    np.testing.assert_array_equal(pruned.pixel_values, full.pixel_values)


# ---- the whole video processor against transformers' (needs torchvision) -----------------------

def _transformers_video_processor():
    try:  # sfedge's shim lets PyPI's torchvision import beside the CPU torch (reference extra)
        from sfedge.torchvision_compat import install
        install()
    except ImportError:
        pass
    pytest.importorskip("torchvision", reason="transformers' VideoLLaMA3 video processor needs torchvision")
    from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor

    return VideoLlama3VideoProcessor()


CASES = [  # (frames, height, width, source fps, motion)
    (8, 61, 97, 4.0, "moving"),     # odd sizes, fewer samples than min_frames at 1 fps -> min_frames
    (30, 120, 90, 10.0, "static"),  # pruning removes nearly everything
    (12, 45, 200, 1.0, "half"),     # half the tokens pruned
    (400, 30, 40, 2.0, "moving"),   # 200 s at 1 fps: capped at 180 frames
    (3, 300, 33, 25.0, "moving"),   # fewer frames than min_frames; tall and thin
    (2, 64, 64, 30.0, "moving"),    # two frames (transformers fails on a one-frame video: its int32 index tensor of one element indexes the array as a scalar)
    (7, 33, 29, 7.5, "static"),     # fractional fps; upscaled frames
]


@pytest.mark.parametrize("t,h,w,fps,motion", CASES)
def test_processor_matches_transformers(t, h, w, fps, motion):
    from transformers.video_utils import VideoMetadata

    proc = _transformers_video_processor()
    video = _video(t, h, w, seed=t + h, motion=motion)
    meta = VideoMetadata(total_num_frames=t, fps=fps, width=w, height=h, duration=t / fps)
    # the long video with a small per-frame floor (the default, 100k pixels a frame, makes it slow)
    spec = vp.VideoProcessorSpec(min_pixels=56 * 56) if t > 100 else vp.VideoProcessorSpec()
    ref = proc(videos=[video], video_metadata=[meta], do_sample_frames=True, fps=1, max_frames=180, min_frames=4,
               size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
               return_tensors="pt", input_data_format="channels_last")
    indices = vp.sample_indices(t, fps, spec)
    ours = vp.preprocess_frames(video[indices], indices, fps, spec)
    ref_meta = ref["video_metadata"][0]
    assert indices == [int(i) for i in ref_meta.frames_indices]
    assert ours.timestamps == [float(x) for x in ref_meta.timestamps]
    assert list(ours.grid) == ref["video_grid_thw"][0].tolist()
    n = len(indices)
    np.testing.assert_array_equal(ours.pixel_values.reshape(n * ours.pixel_values.shape[1], -1),
                                  ref["pixel_values_videos"].numpy())
    np.testing.assert_array_equal(ours.keep.reshape(-1), ref["video_compression_mask"].numpy())
    if motion == "static" and n > 1:
        assert ours.kept_per_frame[1:] == [1] * (n - 1)
    if motion == "moving":
        assert ours.pruned == 0
