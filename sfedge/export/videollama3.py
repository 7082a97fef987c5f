"""`sfedge export` for a VideoLLaMA3 checkpoint (`model_type` video_llama_3): the engines directory of
docs/videollama3.md.

    vision.onnx (+ .data)   pixel_values [T,P,588] + position_ids [P,2] -> features [T,P/4,D]
    llm/ ...                the Qwen2.5 text model through onnxruntime-genai's builder (exclude_embeds)
    embeddings.npy, greedy_step.onnx, tokenizer/ (with the checkpoint's chat_template.jinja), manifest.json

The LLM, embeddings, greedy step and tokenizer are made by the code the llava_next family uses
(`llm.py`, `step.py`), so the runtime's Decoder is the same. Tied embeddings (Qwen2.5-1.5B, the 2B
model's LLM): the checkpoint stores no lm_head; the builder loads the text model with transformers,
which ties lm_head to the embedding table, and writes it as the graph's lm_head MatMul;
`shared_embeddings` is passed false (with exclude_embeds the graph has no embedding to share with).

The caller (`export_model`) owns the scratch directory, the stale-leftover cleanup and the final
rename; this module fills the directory. Validation (on by default, `videollama3_validate.py`)
compares every graph with transformers and raises ValidationError past the bounds.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

from ..errors import SfedgeError

FAMILY = "video_llama_3"
STAGES = ("tokenizer", "text model", "LLM builder", "reference", "vision", "manifest", "reference outputs",
          "validate vision", "validate llm", "validate chain")
# the call-time settings of the issue / paper (the processor's own defaults where they agree)
SAMPLING = {"do_sample_frames": True, "fps": 1, "max_frames": 180, "min_frames": 4}
COMPRESSION = {"enabled": True, "threshold": 0.1, "min_tokens": 1}


def processor_block(ckpt: Path) -> dict:
    """The manifest's `processor`: the checkpoint's video_preprocessor_config.json over transformers'
    VideoLlama3VideoProcessor defaults, with the sampling and compression settings used."""
    path = ckpt / "video_preprocessor_config.json"
    return processor_settings(json.loads(path.read_text()) if path.is_file() else {})


def processor_settings(cfg: dict) -> dict:
    """`processor_block` from a video_preprocessor_config.json as a dict (torch-free: `sfedge plan`
    reads a preset's or a checkpoint's processor through it)."""
    size = cfg.get("size") or {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    if cfg.get("min_pixels"):
        size = dict(size, shortest_edge=cfg["min_pixels"])
    if cfg.get("max_pixels"):
        size = dict(size, longest_edge=cfg["max_pixels"])
    return {
        **SAMPLING,
        "patch_size": int(cfg.get("patch_size", 14)), "merge_size": int(cfg.get("merge_size", 2)),
        "temporal_patch_size": int(cfg.get("temporal_patch_size", 1)),
        "min_pixels": int(size["shortest_edge"]), "max_pixels": int(size["longest_edge"]),
        "max_pixels_per_frame": "max_pixels // sampled frames",
        "resize_factor": int(cfg.get("patch_size", 14)) * int(cfg.get("merge_size", 2)),
        "resample": "bicubic", "resample_implementation": "torchvision.transforms.v2.functional.resize (antialias) on uint8",
        "do_rescale": bool(cfg.get("do_rescale", True)), "rescale_factor": float(cfg.get("rescale_factor", 1 / 255)),
        "do_normalize": bool(cfg.get("do_normalize", True)),
        "image_mean": list(cfg.get("image_mean", [0.5, 0.5, 0.5])), "image_std": list(cfg.get("image_std", [0.5, 0.5, 0.5])),
        "compression": COMPRESSION if cfg.get("use_token_compression", True) else dict(COMPRESSION, enabled=False),
    }


def prompt_block(ref, tokenizer_files: list[str]) -> dict:
    if "chat_template.jinja" not in tokenizer_files:
        raise SfedgeError(f"{ref.ckpt}: no chat_template.jinja (VideoLLaMA3's prompt comes from the checkpoint's template)")
    cfg, tok = ref.model.config, ref.tokenizer  # the ids the model splices at (the processor's, from its tokenizer)
    video, image = tok.convert_ids_to_tokens([cfg.video_token_id, cfg.image_token_id])
    return {
        "chat_template": "tokenizer/chat_template.jinja",
        "messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "{question}"}]}],
        "add_generation_prompt": True,
        "video_token": video, "video_token_id": int(cfg.video_token_id),
        "image_token": image, "image_token_id": int(cfg.image_token_id),
        "frame_prefix": "Time {t:.1f}s:", "frame_separator": ",",
        "timestamps": "sampled frame index / source fps",
    }


def model_block(ref, llm: dict, table_shape: tuple, max_frames: int) -> dict:
    cfg = ref.model.config
    eos = ref.model.generation_config.eos_token_id
    eos = sorted(eos if isinstance(eos, list) else [eos])
    return {
        "model_type": cfg.model_type, "text_model_type": cfg.text_config.model_type,
        "hidden_size": int(cfg.text_config.hidden_size), "vocab_size": int(table_shape[0]),
        "vision_hidden_size": int(cfg.vision_config.hidden_size), "vision_layers": int(cfg.vision_config.num_hidden_layers),
        "num_layers": llm["kv_cache"]["num_layers"], "num_kv_heads": llm["kv_cache"]["num_kv_heads"],
        "head_dim": llm["kv_cache"]["head_dim"], "max_length": llm["kv_cache"]["max_length"],
        "tie_word_embeddings": bool(cfg.text_config.tie_word_embeddings),
        "bos_token_id": None, "eos_token_id": eos[0], "eos_token_ids": eos,
        "image_token_id": int(cfg.image_token_id), "video_token_id": int(cfg.video_token_id), "max_frames": max_frames,
    }


def export(name: str, ckpt: Path, family, root: Path, precision: str, device: str, max_frames: int, slowfast,
           validate: bool, progress: bool, context: dict, allow_tokenizer_mismatch: bool, vision_int8: bool = False) -> dict:
    """Family.export of video_llama_3 (`export_model`'s call; SlowFast settings and the tokenizer guard
    do not apply to this family, nor, yet, the int8 vision graph)."""
    if vision_int8:
        raise SfedgeError("--vision-int8 is not available for VideoLLaMA3 checkpoints yet (SlowFast-LLaVA only)")
    return build(name, ckpt, root, precision, device, max_frames, validate, progress, context)


def check_supported(ckpt: Path) -> None:
    """One-line SfedgeError, before any work, for a checkpoint this exporter cannot handle: a vision
    tower other than patch 14 / RGB, or no chat template (the prompt comes from the checkpoint's)."""
    vision = json.loads((ckpt / "config.json").read_text()).get("vision_config", {})
    patch, channels = vision.get("patch_size", 14), vision.get("num_channels", 3)
    if (patch, channels) != (14, 3):
        raise SfedgeError(f"{ckpt}: vision patch size {patch} with {channels} channels; this exporter supports 14 / 3")
    if not (ckpt / "chat_template.jinja").is_file():
        raise SfedgeError(f"{ckpt}: no chat template (chat_template.jinja): VideoLLaMA3's prompt comes from the "
                          f"checkpoint's own template")


def build(name: str, ckpt: Path, root: Path, precision: str, device: str, max_frames: int, validate: bool,
          progress: bool, context: dict) -> dict:
    """Fill `root` (a fresh scratch directory) with the engines; return the manifest as written."""
    import numpy as np
    import torch

    from .. import __version__
    from ..context import kv_cache_bytes
    from ..reference.videollama3 import VideoLlama3Reference
    from . import _Stages, _release_memory, vision_precision
    from . import llm as llm_mod
    from .manifest_build import component_entry, read_manifest, source_identity, versions
    from .step import export_splice
    from .videollama3_validate import compare, reference_cases
    from .videollama3_vision import export_vision

    from ..reference.videollama3 import require_torchvision

    if validate:
        require_torchvision()  # validation runs transformers' processor: refuse in a second, not after the builder
    check_supported(ckpt)  # likewise what the vision graph and the prompt need
    started = time.perf_counter()
    bar = _Stages(STAGES if validate else STAGES[:6], progress)
    try:
        bar.step("tokenizer")
        tokenizer_files = llm_mod.copy_tokenizer(ckpt, root / "tokenizer")
        bar.step("text model")
        llm, step, emb_dtype = llm_mod.build_decoder(ckpt, root, precision, device, context, on_stage=bar.step)

        bar.step("reference")
        ref = VideoLlama3Reference(ckpt, torch.float32, "cpu")
        vprec = vision_precision(precision, device)
        bar.step("vision")
        _, vspec = export_vision(ref.model, max_frames, root, torch.float16 if vprec == "fp16" else torch.float32)
        splice = export_splice(root, vspec.outputs[0].dtype, emb_dtype)  # kept vision features into the prompt

        bar.step("manifest")
        table_shape = np.load(root / "embeddings.npy", mmap_mode="r").shape
        manifest = {
            "sfedge_version": __version__,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "family": FAMILY,
            "precision": precision,
            "device": device,
            "quantization": llm_mod.quantization(precision, device),
            "processor": processor_block(ckpt),
            "prompt": prompt_block(ref, tokenizer_files),
            "model": model_block(ref, llm, table_shape, max_frames),
            "context": dict(context, kv_cache=kv_cache_bytes(llm["kv_cache"]["num_layers"], llm["kv_cache"]["num_kv_heads"],
                                                             llm["kv_cache"]["head_dim"], llm["kv_cache"]["max_length"],
                                                             llm["kv_cache"]["dtype"])),
            "components": {
                "vision": component_entry(root, vspec, vprec),
                "llm": llm,
                "embeddings": {"path": "embeddings.npy", "dtype": emb_dtype, "shape": list(table_shape)},
                "tokenizer": {"path": "tokenizer", "files": sorted(tokenizer_files)},
                "greedy_step": step,
                "splice": splice,
            },
            "source": source_identity(name, ckpt),
            "versions": versions(),
            "validation": None,
        }
        if validate:
            bar.step("reference outputs")
            cases = reference_cases(ref, manifest, root)
        del ref
        _release_memory()
        if validate:
            manifest["validation"] = compare(root, manifest, cases, device, on_step=lambda n: bar.step(f"validate {n}"))
        manifest["export_seconds"] = round(time.perf_counter() - started, 2)
        write(root, manifest)
        bar.close()
        return read_manifest(root)
    except BaseException:
        bar.abort()
        raise


def write(root: Path, manifest: dict) -> Path:
    """manifest.json with schema_version and file hashes, as `sfedge.manifest.write_manifest` writes it."""
    from ..manifest import MANIFEST_NAME, SCHEMA_VERSION, hash_tree

    manifest = dict(manifest, schema_version=SCHEMA_VERSION, files=hash_tree(root))
    path = Path(root) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
