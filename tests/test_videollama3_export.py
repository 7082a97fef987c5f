"""VideoLLaMA3 (issue 16): the tiny checkpoint, the transformers reference and the export.

The reference and the export need torchvision (transformers' video processor); without it they skip.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import sfedge  # noqa: F401  (torchvision_compat before transformers)
from sfedge.synthetic import render_scene


def _torchvision():
    try:
        import torchvision  # noqa: F401
    except ImportError as e:
        pytest.skip(f"torchvision is not importable: {e}")


def _clip(seed: int, n: int = 30, scene: str = "shapes") -> np.ndarray:
    return np.stack([render_scene(i, 160, 120, seed=seed, scene=scene) for i in range(n)])


@pytest.fixture(scope="module")
def vl3_reference(tiny_vl3_dir):
    _torchvision()
    from sfedge.reference.videollama3 import VideoLlama3Reference

    return VideoLlama3Reference(tiny_vl3_dir)


@pytest.fixture(scope="module")
def vl3_engines(tmp_path_factory, tiny_vl3_dir):
    _torchvision()
    from sfedge.export import export_model

    out = tmp_path_factory.mktemp("engines") / "tiny-videollama3-fp32"
    export_model(tiny_vl3_dir, out, precision="fp32", max_frames=16, progress=False)  # validation on
    return out


def test_tiny_videollama3_is_deterministic_and_real_shaped(tiny_vl3_dir, tmp_path):
    from sfedge.models.tiny_videollama3 import make_tiny_videollama3

    again = make_tiny_videollama3(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja",
                 "video_preprocessor_config.json"):
        assert (again / name).read_bytes() == (tiny_vl3_dir / name).read_bytes(), name
    cfg = json.loads((tiny_vl3_dir / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert cfg["model_type"] == "video_llama_3" and text["model_type"] == "qwen2"
    assert text["num_key_value_heads"] < text["num_attention_heads"] and text["tie_word_embeddings"]
    assert vision["patch_size"] == 14
    tok = json.loads((tiny_vl3_dir / "tokenizer_config.json").read_text())
    assert "<|video_pad|>" in (tiny_vl3_dir / "tokenizer.json").read_text() and tok["eos_token"] == "<|im_end|>"


def test_reference_answer_depends_on_the_video(vl3_reference):
    ref = vl3_reference
    a = ref.answer_frames(_clip(0), 10.0, "What is happening in the video?", max_new_tokens=8)
    b = ref.answer_frames(_clip(1, scene="moving-object"), 10.0, "What is happening in the video?", max_new_tokens=8)
    assert a.token_ids != b.token_ids
    # 3 s at 10 fps, fps=1 -> 3 frames, raised to min_frames 4; timestamps in the prompt
    assert a.frame_indices == [0, 7, 15, 22] and a.timestamps == [0.0, 0.7, 1.5, 2.2]
    prompt = ref.tokenizer.decode(a.prompt_ids)
    assert [f"Time {t:.1f}s:" in prompt for t in a.timestamps] == [True] * 4
    assert a.prompt_ids.count(ref.processor.video_token_id) == a.visual_tokens_kept


def test_reference_prunes_a_static_clip(vl3_reference):
    still = _clip(0, scene="static")
    a = vl3_reference.answer_frames(still, 10.0, "What is happening in the video?", max_new_tokens=2)
    per_frame = a.visual_tokens_total // len(a.frame_indices)
    assert a.visual_tokens_kept == per_frame + (len(a.frame_indices) - 1)  # frame 0 whole, then min_tokens 1 each


@pytest.mark.slow
def test_export_validates_at_fp32(vl3_engines):
    m = json.loads((vl3_engines / "manifest.json").read_text())
    assert m["family"] == "video_llama_3" and "slowfast" not in m["components"]
    v = m["validation"]
    assert v["passed"] and v["vision"]["rel"] < 1e-5 and v["llm"]["rel"] < 1e-4 and v["chain"]["top1_agree"]
    assert m["prompt"]["chat_template"] == "tokenizer/chat_template.jinja"
    assert (vl3_engines / m["prompt"]["chat_template"]).is_file()
    assert m["processor"]["compression"] == {"enabled": True, "threshold": 0.1, "min_tokens": 1}
    assert [i["name"] for i in m["components"]["vision"]["inputs"]] == ["pixel_values", "position_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("frames,gh,gw", [(2, 8, 6), (1, 14, 2)])
def test_vision_graph_matches_transformers_at_other_grids(vl3_engines, vl3_reference, frames, gh, gw):
    import onnxruntime as ort
    import torch

    from sfedge.export.videollama3_vision import PATCH_DIM, position_ids

    x = torch.randn(frames, gh * gw, PATCH_DIM, generator=torch.Generator().manual_seed(gh))
    want = vl3_reference.video_features(x.reshape(-1, PATCH_DIM), (frames, gh, gw)).numpy()
    sess = ort.InferenceSession(str(vl3_engines / "vision.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"pixel_values": x.numpy(), "position_ids": position_ids(gh, gw).numpy()})[0]
    assert got.shape == (frames, gh * gw // 4, want.shape[-1])
    assert np.abs(got.reshape(want.shape) - want).max() / np.abs(want).max() < 1e-5
