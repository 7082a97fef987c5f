"""SlowFast-LLaVA on LLaVA-NeXT (SPEC 1-6): CLIP ViT-L/336 + projector per frame, SlowFast pooling
over the window, and the SPEC 5 prompt with one `<image>` where all visual tokens go.

Graphs: vision (pixels -> [T, 576, D]), slowfast ([T, 576, D] -> [S*k + T*G*G, D]), the LLM
(onnxruntime-genai, exclude_embeds), its embedding table, the tokenizer, greedy_step (ArgMax +
Gather) and splice (the prompt embeddings with the visual tokens put in on the device).
Visual layout: one block of `spec.slowfast.num_tokens(T)` tokens keyed by the window's content.
"""

from __future__ import annotations

from ..prompts import build_prompt, detect_family, tokenize_prompt
from .base import Family, PlanRules, PromptContext, VisualBlock, lazy

GRAPHS = ("vision", "slowfast", "llm", "embeddings", "tokenizer", "greedy_step", "splice")


def prompt_ids(ctx: PromptContext, question: str, options=None, blocks=None) -> list[int]:
    """SPEC 5 prompt ids, tokenised chunk-wise around `<image>`: one image token, whatever `blocks`."""
    return tokenize_prompt(build_prompt(question, options, ctx.variant), ctx.encode, ctx.bos, ctx.image_token_id)


def layout(spec, visual) -> list[VisualBlock]:
    """One block: the window's SlowFast tokens (SPEC 4), keyed by the window's content key."""
    return [VisualBlock(visual.key, spec.slowfast.num_tokens(visual.num_frames))]


def encoder(vision, spec, max_frames):
    from ..runtime.encoder import Encoder

    return Encoder(vision, spec.preprocess, max_frames)


def reference(checkpoint, **kw):
    from ..reference.model import SlowFastLlava

    return SlowFastLlava.from_pretrained(checkpoint, **kw)


LLAVA_NEXT = Family(name="llava_next", model_types=("llava_next",), graphs=GRAPHS, prompt_ids=prompt_ids,
                    layout=layout, encoder=encoder, reference=reference, detect_variant=detect_family,
                    pipeline=lazy("sfedge.runtime.pipeline", "Pipeline"),
                    verify=lazy("sfedge.parity", "verify"),
                    bench_reference=lazy("sfedge.bench.runner", "bench_reference"),
                    export=lazy("sfedge.export", "_build"),
                    # plan: the SlowFast rule and CLIP formulas of sfedge.plan (prompt None: SPEC 4 counts)
                    plan=PlanRules(prompt=lambda info: None, vision_modelled=True,
                                   vision_params=lazy("sfedge.plan.model", "clip_vision_params"),
                                   preset_config=lazy("sfedge.plan.model", "llava_preset_config")))
