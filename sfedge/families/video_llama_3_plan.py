"""What `sfedge plan` needs of VideoLLaMA3 (torch-free; the family record's `plan`).

Token counts, from the same settings the runtime uses:

* visual: the processor's budget rule. A video of T sampled frames is resized so that each frame
  holds at most max_pixels // T pixels in 28 x 28 blocks (patch 14 x merge 2), i.e. at most
  max(1, max_pixels // T // 784) merged tokens per frame; the plan counts every frame at that bound
  (a frame with another aspect ratio gets a little fewer; a small video with few frames can be
  scaled up to min_pixels instead: the bound holds for videos larger than the budget).
* pruning (the compression mask) as an ASSUMPTION: `--pruned F` removes floor(F x per-frame tokens)
  from every frame after the first (the mask never prunes the first frame and keeps at least
  min_tokens of each other one). What the mask really removes depends on the video (0 for a moving
  camera, most tokens of a static scene): `sfedge ask --json` reports visual_tokens_pruned per clip.
* text: the chat template around a one-line question with "Time t.ts:" before each frame, frames one
  second apart (fps 1 sampling of a video at least T seconds long), counted with the tokenizer.

Sources: an engines directory (manifest "processor" / "prompt", its tokenizer), a checkpoint
directory (video_preprocessor_config.json, chat_template.jinja, tokenizer.json) or a preset (the
presets' processor defaults and the tiny VideoLLaMA3 tokenizer and chat template, which is what
`sfedge export --preset` writes).
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import SfedgeError
from .base import PromptRules

QUESTION = "What happens in the video?"


def _sources(info):
    """(processor settings dict, PromptSpec, encode) of an engines dir, a checkpoint or a preset."""
    from ..export.videollama3 import processor_block, processor_settings
    from ..runtime.videollama3_prompt import PromptSpec, special_tokens

    if info.manifest:
        from ..runtime.tokenizer import TextTokenizer

        tok = TextTokenizer(info.root / info.manifest["components"]["tokenizer"]["path"])
        return info.manifest["processor"], PromptSpec.from_manifest(info.manifest["prompt"], info.root), tok.encode
    if info.source is not None:
        from ..runtime.tokenizer import TextTokenizer

        ckpt = Path(info.source)
        template = ckpt / "chat_template.jinja"
        if not template.is_file():
            raise SfedgeError(f"--model {ckpt}: no chat_template.jinja (VideoLLaMA3's prompt comes from the "
                              "checkpoint's template)")
        spec = PromptSpec(chat_template=template.read_text(encoding="utf-8"), special_tokens=special_tokens(ckpt))
        return processor_block(ckpt), spec, TextTokenizer(ckpt).encode
    from ..models.presets_videollama3 import DEFAULT_SIZE
    from ..models.tiny_videollama3 import CHAT_TEMPLATE, train_tokenizer, video_processor_config

    tok = train_tokenizer()  # the presets' tokenizer (presets_videollama3.make_preset), ~0.3 s
    spec = PromptSpec(chat_template=CHAT_TEMPLATE.read_text(encoding="utf-8"),
                      special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    return (processor_settings(video_processor_config(DEFAULT_SIZE)), spec,
            lambda text, add_special_tokens=True: tok.encode(text, add_special_tokens=add_special_tokens).ids)


def budget_per_frame(processor, frames: int) -> int:
    """Merged tokens of one frame at the video budget (processor: runtime VideoProcessorSpec)."""
    return max(1, processor.max_pixels // frames // processor.resample_factor ** 2)


def visual_tokens(processor, frames: int, pruned: float) -> int:
    """Visual tokens of `frames` frames at the budget, `pruned` of each later frame's removed (above)."""
    per = budget_per_frame(processor, frames)
    if not processor.compression:
        return frames * per
    later = max(processor.min_tokens, per - int(pruned * per))
    return per + (frames - 1) * later


def prompt(info) -> PromptRules:
    from ..runtime.videollama3_preprocess import VideoProcessorSpec
    from ..runtime.videollama3_prompt import marked_ids

    settings, spec, encode = _sources(info)
    processor = VideoProcessorSpec.from_manifest(settings)

    @functools.lru_cache(maxsize=None)
    def text(frames: int) -> int:
        return len(marked_ids(spec, encode, QUESTION, [float(t) for t in range(frames)])) - frames

    return PromptRules(visual=functools.partial(visual_tokens, processor), text=text, frames=processor.max_frames,
                       label="video budget" + ("" if processor.compression else " (no compression)"),
                       chunks_frames=True, prunes=processor.compression)


def vision_params(config: dict, geometry=None) -> int:
    """vision.onnx's parameters: SigLIP patch embedding (conv 3 x p x p -> h, bias), the encoder
    layers (q, k, v, o with biases, two LayerNorms, fc1 / fc2 with biases), the post LayerNorm, and
    the projector Linear(h, D) + GELU + Linear(D, D) (transformers' VideoLlama3VisionModel /
    VideoLlama3Projector). No position table: positions are 2-D RoPE."""
    v, D = config["vision_config"], config["text_config"]["hidden_size"]
    h, m, p = v["hidden_size"], v["intermediate_size"], v.get("patch_size", 14)
    layer = 4 * (h * h + h) + 2 * 2 * h + (h * m + m) + (m * h + h)
    return 3 * p * p * h + h + v["num_hidden_layers"] * layer + 2 * h + (h * D + D + D * D + D)


def llm_bias_params(geometry) -> int:
    """Qwen2's q, k, v projections carry biases (the builder keeps them next to the weights)."""
    g = geometry
    return g.layers * (g.heads * g.head_dim + 2 * g.kv_heads * g.head_dim)


def preset_config(name: str) -> dict | None:
    from ..models.presets_videollama3 import VL3_PRESETS, config_dict

    return config_dict(name) if name in VL3_PRESETS else None
