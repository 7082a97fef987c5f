"""What a model family declares: one frozen record per family, no behaviour of its own.

A family is what export, the reference and the runtime must know about a checkpoint beyond its
weights: which `model_type`s it accepts, which graphs its engines directory holds, how its prompt is
built, how its visual tokens are laid out in that prompt, and how its frames are encoded. Code looks
the family up (`sfedge.families.family_for_model_type` at export, `family_of_manifest` at run time)
and calls what it declares; it never compares family names.

The prompt contract (one design for every family): `prompt_ids(ctx, question, options, blocks)`
returns token ids in which `ctx.image_token_id` marks each visual block, in the order of `blocks`
(SlowFast-LLaVA: one mark; an interleaved family: one per frame, with its timestamp text between).
The answer stage turns that into segments (`sfedge.runtime.splice`): text ids and visual blocks of
N tokens, each block identified by a content key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VisualBlock:
    """`n` consecutive visual tokens in the prompt, identified by `key` (the content of the frames and
    the settings that made them: the prefix cache compares positions as (key, i))."""

    key: bytes
    n: int


@dataclass(frozen=True)
class PromptContext:
    """What a family's prompt builder needs from the engines: the tokenizer's `encode` (text -> ids,
    special tokens included), its BOS id (or None), the id that marks a visual block, and the
    family's prompt variant from the manifest (llava_next: "vicuna" or "chatml")."""

    encode: Callable[[str], list[int]]
    bos: int | None
    image_token_id: int
    variant: str


@dataclass(frozen=True)
class Family:
    """One model family. Hooks are plain functions (imported lazily by the family module, so the
    runtime never imports torch through this record):

    * `prompt_ids(ctx, question, options, blocks) -> ids`: the prompt with one `ctx.image_token_id`
      per visual block (`blocks` may be None when only the question is being checked); raises
      ValueError with a one-line message for a bad question or options.
    * `layout(spec, visual) -> [VisualBlock]`: the visual blocks of a window (spec: the manifest's
      PipelineSpec; visual: the runtime's `Visual`), in prompt order; the pooled visual tokens of the
      window are these blocks' tokens concatenated.
    * `encoder(vision_engine, spec, max_frames)`: the runtime's encoder stage (frames -> features).
    * `reference(checkpoint, **kw)`: the PyTorch reference (export and verify; imports torch).
    """

    name: str
    model_types: tuple[str, ...]
    graphs: tuple[str, ...]  # manifest components the engines directory holds (export writes, runtime opens)
    prompt_ids: Callable[..., list[int]]
    layout: Callable[[Any, Any], list[VisualBlock]]
    encoder: Callable[..., Any]
    reference: Callable[..., Any]
    detect_variant: Callable[[Sequence[str]], str]  # tokenizer vocabulary -> prompt variant
