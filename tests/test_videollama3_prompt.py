"""VideoLLaMA3's prompt (sfedge/runtime/videollama3_prompt.py): the checkpoint's chat template
rendered with jinja2, "Time t.ts:" before each frame, the video token repeated per kept token,
against transformers' VideoLlama3Processor on the tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sfedge.errors import SfedgeError
from sfedge.runtime import videollama3_preprocess as vp
from sfedge.runtime import videollama3_prompt as vprompt
from sfedge.runtime.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def vl3_ckpt(tiny_vl3_dir):
    return tiny_vl3_dir


def _spec(ckpt) -> vprompt.PromptSpec:
    tok = TextTokenizer(ckpt)
    return vprompt.PromptSpec(chat_template=(ckpt / "chat_template.jinja").read_text(),
                              video_token_id=tok.vocab()["<|video_pad|>"], special_tokens=vprompt.special_tokens(ckpt))


def test_expanded_ids_equal_tokenizing_the_full_text(vl3_ckpt):
    """One video token per frame, repeated afterwards == tokenizing every placeholder (what the processor does)."""
    spec, tok = _spec(vl3_ckpt), TextTokenizer(vl3_ckpt)
    stamps, kept = [0.0, 1.0, 2.5, 10.0], [3, 1, 7, 2]
    prompt = vprompt.build(spec, tok, "What moves, and when?", stamps, kept)
    full = vprompt.render(spec, "What moves, and when?").replace(
        "<|video_pad|>", ",".join(f"Time {t:.1f}s:" + "<|video_pad|>" * n for t, n in zip(stamps, kept)))
    assert prompt.ids == tok.encode(full)
    vid = spec.video_token_id
    assert [prompt.ids[s:s + n] for s, n in zip(prompt.starts, prompt.counts)] == [[vid] * n for n in kept]
    assert sum(i == vid for i in prompt.ids) == sum(kept)


def test_question_with_the_video_token_is_refused(vl3_ckpt):
    with pytest.raises(SfedgeError, match="exactly once"):
        vprompt.build(_spec(vl3_ckpt), TextTokenizer(vl3_ckpt), "a <|video_pad|> b", [0.0], [1])


def _frames(t, h, w, static, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.stack([base if static else np.roll(base, 5 * i, axis=1) for i in range(t)])


@pytest.mark.parametrize("t,h,w,fps,static", [(9, 50, 70, 3.0, False), (6, 90, 61, 1.0, True), (250, 20, 30, 1.0, False)])
def test_prompt_ids_equal_the_processors(vl3_ckpt, t, h, w, fps, static):
    pytest.importorskip("torchvision", reason="transformers' VideoLLaMA3 video processor needs torchvision")
    from sfedge.reference.videollama3 import load_processor, process

    question = "Describe the video in one sentence."
    inputs, indices, _ = process(load_processor(vl3_ckpt), _frames(t, h, w, static, seed=t), fps, question)
    size = json.loads((vl3_ckpt / "video_preprocessor_config.json").read_text())["size"]
    spec = vp.VideoProcessorSpec(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    ours_idx = vp.sample_indices(t, fps, spec)
    assert ours_idx == indices
    video = vp.preprocess_frames(_frames(t, h, w, static, seed=t)[ours_idx], ours_idx, fps, spec)
    prompt = vprompt.build(_spec(vl3_ckpt), TextTokenizer(vl3_ckpt), question, video.timestamps, video.kept_per_frame)
    assert prompt.ids == inputs["input_ids"][0].tolist()
    np.testing.assert_array_equal(video.keep.reshape(-1), inputs["video_compression_mask"].numpy())
    if static:
        assert video.kept_per_frame[1:] == [1] * (len(ours_idx) - 1)


def test_family_prompt_through_the_splice_plan_is_the_processors_layout(vl3_ckpt):
    """The registry finds VideoLLaMA3 by model_type; its prompt (one video token per frame block)
    through the shared splice plan puts each frame's kept tokens exactly where `build` (checked
    against the processor above) puts them."""
    from sfedge.families import family_for_checkpoint
    from sfedge.families.video_llama_3 import ChatTemplateContext, FrameBlock
    from sfedge.runtime.splice import SplicePlan, segments_from_marked

    family = family_for_checkpoint(vl3_ckpt)
    assert family.name == "video_llama_3" and "splice" in family.graphs and "slowfast" not in family.graphs
    spec, tok = _spec(vl3_ckpt), TextTokenizer(vl3_ckpt)
    stamps, kept = [0.0, 1.0, 2.0], [4, 1, 2]
    blocks = [FrameBlock(bytes([i]), n, t) for i, (n, t) in enumerate(zip(kept, stamps))]
    ctx = ChatTemplateContext(tok.encode, None, spec.video_token_id, "chat_template", prompt=spec)
    plan = SplicePlan.build(segments_from_marked(family.prompt_ids(ctx, "Why?", None, blocks), spec.video_token_id,
                                                 blocks))
    want = vprompt.build(spec, tok, "Why?", stamps, kept)
    assert plan.positions.tolist() == [s + i for s, n in zip(want.starts, want.counts) for i in range(n)]
    assert [item if not isinstance(item, tuple) else spec.video_token_id for item in plan.items] == want.ids
    with pytest.raises(ValueError, match="open question"):
        family.prompt_ids(ctx, "Why?", ["a", "b"], blocks)
