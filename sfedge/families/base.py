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
class PromptRules:
    """How many prompt positions a family's video takes, as `sfedge plan` counts them:
    `visual(frames, pruned)` visual tokens for `frames` frames when the family's token reduction removes
    the fraction `pruned` of what it may remove (an assumption the user states: it depends on the video),
    `text(frames)` the text positions around them (template, question, per-frame text), `frames` the
    default frame count, `label` how the plan names the rule, `chunks_frames` whether the runtime
    encodes a video in chunks (then the engines' max_frames bounds no video)."""

    visual: Callable[[int, float], int]
    text: Callable[[int], int]
    frames: int
    label: str
    chunks_frames: bool = False
    prunes: bool = False  # `pruned` changes the count (the --pruned lever applies)


@dataclass(frozen=True)
class PlanRules:
    """What `sfedge plan` needs of a family (every hook torch-free; the plan calls them and never
    compares family names):

    * `prompt(info) -> PromptRules | None`: the token counts from the engines' manifest and tokenizer,
      or a checkpoint's / preset's processor and template (`info`: sfedge.plan.model.ModelInfo);
      None: the plan's SlowFast rule (SPEC 4 tokens of the --slow-frames / --fast-grid settings, 64
      text tokens).
    * `vision_params(config, geometry) -> int`: parameters of vision.onnx (encoder + projector).
    * `vision_modelled`: the plan's vision FLOP and activation formulas (a batch of T frames of
      `geometry.patches` + 1 tokens, CLIP) describe this family's vision graph; False: those lines and
      floors are left out, with a note.
    * `preset_config(name) -> dict | None`: a preset's config.json as a dict, None if not this family's.
    * `llm_bias_params(geometry) -> int`: decoder parameters beyond the geometry's matmuls (biases).
    """

    prompt: Callable[[Any], PromptRules | None]
    vision_params: Callable[[dict, Any], int]
    vision_modelled: bool
    preset_config: Callable[[str], dict | None]
    llm_bias_params: Callable[[Any], int] = lambda geometry: 0


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
    * `pipeline(engines_dir, **kw)`: the runtime pipeline (`sfedge.runtime.pipeline.open_pipeline`).
    * `verify(...)`: the engines against the reference on one clip (`sfedge verify`; imports torch).
    * `bench_reference(...)`: the reference timed stage by stage (`sfedge bench`; imports torch).
    """

    name: str
    model_types: tuple[str, ...]
    graphs: tuple[str, ...]  # manifest components the engines directory holds (export writes, runtime opens)
    prompt_ids: Callable[..., list[int]]
    layout: Callable[[Any, Any], list[VisualBlock]]
    encoder: Callable[..., Any]
    reference: Callable[..., Any]
    detect_variant: Callable[[Sequence[str]], str]  # tokenizer vocabulary -> prompt variant
    # `pipeline(engines_dir, **options)`: the runtime over an engines directory (ask, verify, bench)
    pipeline: Callable[..., Any] | None = None
    # `verify(engines, model, video, question, options, max_new_tokens, provider) -> report`: `sfedge verify`
    verify: Callable[..., dict] | None = None
    # `bench_reference(cfg, gen, manifest, checkpoint, dtype, on_cuda) -> bench SideResult`: `sfedge bench`
    bench_reference: Callable[..., Any] | None = None
    # `export(name, ckpt, family, root, precision, device, max_frames, slowfast, validate, progress, context,
    # allow_tokenizer_mismatch) -> manifest`: fills the scratch engines directory (`export_model` owns it)
    export: Callable[..., dict] | None = None
    # what `sfedge plan` needs (token counts, vision weights, presets): PlanRules
    plan: PlanRules | None = None


def lazy(module: str, name: str) -> Callable[..., Any]:
    """A hook that imports `module` only when called (so declaring a family imports nothing heavy)
    and calls its `name` with the hook's arguments."""

    def hook(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    hook.__qualname__ = hook.__name__ = f"{module}.{name}"
    return hook
