"""VideoLLaMA3 (transformers' `video_llama_3`): a SigLIP-style vision encoder at each frame's own
resolution (patch 14, 2-D RoPE, attention within a frame), 2x2 downsampling and a projector per
frame, DiffFP token pruning between consecutive frames, and a Qwen2.5 LLM prompted with the
checkpoint's own chat template, "Time t.ts:" before each frame's tokens (docs/videollama3.md).

Graphs: vision (pixel_values [T, P, 588] + position_ids -> features [T, P/4, D]), the LLM
(onnxruntime-genai, exclude_embeds), its embedding table, the tokenizer (with chat_template.jinja),
greedy_step and splice. No pooling graph: the encoder stage hands the kept tokens to the answer stage.
Visual layout: one block per sampled frame, as many tokens as the mask keeps of it, its timestamp
text before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import video_llama_3_plan as plan
from .base import Family, PlanRules, PromptContext, VisualBlock, lazy

GRAPHS = ("vision", "llm", "embeddings", "tokenizer", "greedy_step", "splice")
VARIANT = "chat_template"  # one prompt: the checkpoint's template


@dataclass(frozen=True)
class FrameBlock(VisualBlock):
    """One frame's kept tokens and the time (seconds) its "Time t.ts:" text shows."""

    time: float = 0.0


@dataclass(frozen=True)
class ChatTemplateContext(PromptContext):
    """PromptContext plus the manifest's prompt settings (runtime/videollama3_prompt.PromptSpec)."""

    prompt: Any = None


def prompt_ids(ctx: ChatTemplateContext, question: str, options=None, blocks=None) -> list[int]:
    """The chat template over the question, one video token (ctx.image_token_id) per frame block
    after its timestamp text; `blocks` None: one frame at 0 s (to check the question)."""
    from ..runtime.videollama3_prompt import marked_ids

    if options:
        raise ValueError("VideoLLaMA3 takes an open question: multiple-choice options (--options) are "
                         "SlowFast-LLaVA's prompt")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the question is not valid UTF-8 (undecodable character at position {e.start})") from None
    stamps = [b.time for b in blocks] if blocks is not None else [0.0]
    return marked_ids(ctx.prompt, ctx.encode, question, stamps)


def layout(spec, visual) -> list[VisualBlock]:
    """One FrameBlock per sampled frame of `visual.video` (runtime/videollama3_preprocess.VideoInputs),
    keyed by the window's key and the frame's place in it."""
    video = visual.video
    return [FrameBlock(visual.key + i.to_bytes(4, "little"), n, t)
            for i, (n, t) in enumerate(zip(video.kept_per_frame, video.timestamps))]


def encoder(vision, spec, max_frames):
    from ..runtime.videollama3_encoder import VideoLlama3Encoder

    return VideoLlama3Encoder(vision, max_frames)


def reference(checkpoint, **kw):
    from ..reference.videollama3 import VideoLlama3Reference

    return VideoLlama3Reference(checkpoint, **kw)


VIDEO_LLAMA_3 = Family(name="video_llama_3", model_types=("video_llama_3",), graphs=GRAPHS, prompt_ids=prompt_ids,
                       layout=layout, encoder=encoder, reference=reference, detect_variant=lambda vocab: VARIANT,
                       pipeline=lazy("sfedge.runtime.videollama3_pipeline", "VideoLlama3Pipeline"),
                       verify=lazy("sfedge.parity_videollama3", "verify"),
                       bench_reference=lazy("sfedge.bench.videollama3", "bench_reference"),
                       export=lazy("sfedge.export.videollama3", "export"),
                       plan=PlanRules(prompt=plan.prompt, vision_params=plan.vision_params, vision_modelled=False,
                                      preset_config=plan.preset_config, llm_bias_params=plan.llm_bias_params))
