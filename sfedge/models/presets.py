"""Real SlowFast-LLaVA geometries with random weights, made locally (no download).

Each preset is a llava-hf `LlavaNextForConditionalGeneration` checkpoint: CLIP ViT-L/14-336 +
mlp2x_gelu projector + a Llama-architecture LLM at the real sizes. Latency does not depend on
weight values, so these stand in for the hub checkpoints in benchmarks.

The checkpoint is written tensor by tensor in fp16 into ~2 GB safetensors shards (with the usual
`model.safetensors.index.json`): peak RAM stays near one shard, never the whole model. Parameter
names and shapes come from the model built on the meta device, so they are exactly what
`from_pretrained` expects. The tokenizer is the tiny model's (trained here, ~1k tokens); the
config keeps the real `vocab_size`, and the embedding table / lm_head are sized to it.

Presets:
  sf-llava-7b      CLIP-L/336 + Vicuna-7B  (llava-hf/llava-v1.6-vicuna-7b-hf shapes, vocab 32064)
  sf-llava-34b     CLIP-L/336 + Yi-34B     (llava-hf/llava-v1.6-34b-hf shapes, vocab 64064, ChatML)
  sf-llava-jetson  CLIP-L/336 + Llama-3.2-3B shapes (tied embeddings; a LlamaForCausalLM text
                   model, which onnxruntime-genai's builder supports); int4 fits 8 GB Jetsons
  sf-llava-cpu     CLIP-L/336 + real projector to D=1024 + a small Llama-shaped LLM (0.25B: hidden
                   1024, 16 layers, 16 heads / 4 KV heads (GQA), MLP 2816, vocab 32064): the real
                   vision geometry with an LLM small enough that export + `sfedge bench --frames 4
                   --new-tokens 32 --runs 3` (engines and reference) finish in minutes on a 2-core CPU
  sf-llava-test    the same code path at toy widths, for tests

VideoLLaMA3 presets (videollama3-2b, videollama3-7b) live in presets_videollama3.py; `preset_checkpoint`
makes either kind.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import SfedgeError
from ..spec import IMAGE_SIZE, IMAGE_TOKEN, PATCH_SIZE

SHARD_BYTES = 2 * 1024**3
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")

# CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336)
CLIP_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              projection_dim=768)
VICUNA_7B = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, rope_theta=10000.0, rms_norm_eps=1e-5)
YI_34B = dict(vocab_size=64064, hidden_size=7168, intermediate_size=20480, num_hidden_layers=60,
              num_attention_heads=56, num_key_value_heads=8, rope_theta=5000000.0, rms_norm_eps=1e-5)
LLAMA32_3B = dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                  num_attention_heads=24, num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5,
                  tie_word_embeddings=True)
SMALL_LLAMA = dict(vocab_size=32064, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                   num_attention_heads=16, num_key_value_heads=4, rope_theta=10000.0, rms_norm_eps=1e-5)
TOY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  projection_dim=32)
TOY_LLM = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5)

# name -> (vision kwargs, text kwargs, prompt family)
PRESETS: dict[str, tuple[dict, dict, str]] = {
    "sf-llava-7b": (CLIP_L, VICUNA_7B, "vicuna"),
    "sf-llava-34b": (CLIP_L, YI_34B, "chatml"),
    "sf-llava-jetson": (CLIP_L, LLAMA32_3B, "vicuna"),
    "sf-llava-cpu": (CLIP_L, SMALL_LLAMA, "vicuna"),
    "sf-llava-test": (TOY_VISION, TOY_LLM, "vicuna"),
}


def _tokenizer(family: str):
    """The tiny model's byte-level BPE; ChatML presets also know <|im_start|> / <|im_end|>."""
    from .tiny import train_tokenizer

    tok = train_tokenizer()
    if family == "chatml":
        tok.add_special_tokens(list(CHATML_TOKENS))
    return tok


def preset_config(name: str, special_ids: dict[str, int] | None = None, text_overrides: dict | None = None):
    """The `LlavaNextConfig` of a preset. `special_ids` maps <s>, </s>, <pad>, <image> to the
    tokenizer's ids (defaults: the tiny tokenizer's 1, 2, 4, 3). `text_overrides` replaces text-model
    settings, e.g. {"num_hidden_layers": 8}: the full-width geometry at a truncated depth, so that
    the engines and the PyTorch reference of that checkpoint agree."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    if name not in PRESETS:
        raise SfedgeError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    vision_kw, text_kw, _ = PRESETS[name]
    ids = special_ids or {"<s>": 1, "</s>": 2, IMAGE_TOKEN: 3, "<pad>": 4}
    special = dict(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="quick_gelu", **vision_kw)
    text_kw = {"tie_word_embeddings": False, **text_kw, **(text_overrides or {})}
    text = LlamaConfig(max_position_embeddings=4096, **special, **text_kw)
    return LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=ids[IMAGE_TOKEN],
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=text_kw["tie_word_embeddings"], torch_dtype="float16", **special,
    )


def meta_model(config):
    """The model on the meta device: names, shapes and parameter counts, no memory."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    with torch.device("meta"):
        return LlavaNextForConditionalGeneration(config)


def param_counts(config) -> dict[str, int]:
    """Parameters of vision tower, projector and LLM (tied weights counted once)."""
    m = meta_model(config).model

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {"vision": count(m.vision_tower), "projector": count(m.multi_modal_projector),
            "llm": count(m.language_model) + (0 if config.tie_word_embeddings else config.text_config.vocab_size
                                              * config.text_config.hidden_size)}


def _tensors(model):
    """(name, shape) of every tensor the checkpoint holds, in state_dict order; tied duplicates
    (e.g. a tied lm_head) are skipped, as `save_pretrained` does."""
    unique = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return [(n, tuple(t.shape)) for n, t in model.state_dict().items() if n in unique]


def _init_tensor(name: str, shape: tuple, gen):
    """fp16 random tensor on gen's device: norms 1, biases 0, embeddings N(0, 1), matrices
    N(0, 1/fan_in)."""
    import torch

    if "norm" in name:
        return torch.ones(shape, dtype=torch.float16, device=gen.device)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.float16, device=gen.device)
    t = torch.randn(shape, generator=gen, dtype=torch.float16, device=gen.device)
    if len(shape) >= 2 and "embed" not in name:
        t.mul_(1.0 / math.sqrt(math.prod(shape[1:])))
    return t


def _write_shards(model, out: Path, seed: int, log: Callable[[str], None], device: str = "cpu") -> None:
    """Create tensors one at a time (drawn on `device`) and flush ~SHARD_BYTES safetensors shards +
    the index."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator(device=device).manual_seed(seed)
    shards: list[list[str]] = []
    pending: dict = {}
    size = total = 0
    t0 = time.perf_counter()

    def flush() -> None:
        nonlocal pending, size
        if pending:
            save_file(pending, str(out / f".shard-{len(shards):05d}.tmp"), metadata={"format": "pt"})
            shards.append(list(pending))
            log(f"  shard {len(shards)}: {size / 1e9:.2f} GB, {total / 1e9:.2f} GB so far "
                f"({time.perf_counter() - t0:.0f} s)")
            pending, size = {}, 0

    for name, shape in _tensors(model):
        t = _init_tensor(name, shape, gen).cpu()
        pending[name] = t
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if size >= SHARD_BYTES:
            flush()
    flush()
    n = len(shards)
    weight_map = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (out / f".shard-{i:05d}.tmp").rename(out / fname)
        weight_map.update(dict.fromkeys(names, fname))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def make_preset(name: str, out_dir: str | Path, seed: int = 0, progress: bool = True, device: str = "cpu",
                text_overrides: dict | None = None) -> Path:
    """Write preset `name` as a llava-hf checkpoint (config.json, sharded fp16 safetensors + index,
    tokenizer files) into `out_dir`; return the path. Same seed and device -> same weights.
    `device="cuda"` draws the weights with the GPU's generator (other values than the CPU's; the
    CPU takes about a minute per 7B on one core, latency does not depend on the values)."""
    from .tiny import SPECIAL_TOKENS, save_tokenizer

    if name not in PRESETS:
        raise SfedgeError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    family = PRESETS[name][2]
    log = print if progress else (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = _tokenizer(family)
    config = preset_config(name, {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}, text_overrides)
    model = meta_model(config)
    counts = param_counts(config)
    log(f"preset {name}: vision {counts['vision'] / 1e9:.3f}B, projector {counts['projector'] / 1e9:.3f}B, "
        f"LLM {counts['llm'] / 1e9:.2f}B params (fp16) -> {out}")
    _write_shards(model, out, seed, log, device)
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)

    save_tokenizer(tok, out)
    (out / "sfedge_preset.json").write_text(json.dumps({"preset": name, "seed": seed, "device": device,
                                                               "text_overrides": text_overrides or {}}, indent=2) + "\n")
    return out


def preset_checkpoint(name: str, progress: bool = True) -> Path:
    """The checkpoint of preset `name`, made once in `cache_dir()/presets/NAME` (written under a
    temporary name, renamed when complete). What `sfedge export --preset NAME OUT` exports."""
    import shutil
    import tempfile

    from ..cache import cache_dir

    from .presets_videollama3 import VL3_PRESETS
    from .presets_videollama3 import make_preset as make_vl3_preset

    if name not in PRESETS and name not in VL3_PRESETS:
        raise SfedgeError(f"unknown preset {name!r}; presets: {', '.join([*PRESETS, *VL3_PRESETS])}")
    make = make_vl3_preset if name in VL3_PRESETS else make_preset
    target = cache_dir() / "presets" / name
    if not (target / "model.safetensors.index.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            make(name, tmp, progress=progress)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
