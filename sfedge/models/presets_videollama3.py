"""VideoLLaMA3 geometries with random weights (`sfedge export --preset videollama3-2b`, bench, plan).

Sources of every figure:
* Vision encoder: VideoLLaMA3's README (github.com/DAMO-NLP-SG/VideoLLaMA3, commit 05cee23: "Vision
  Encoder: siglip-so400m-patch14-384", released as DAMO-NLP-SG/VL3-SigLIP-NaViT) -> SigLIP so400m/14:
  hidden 1152, MLP 4304, 27 layers, 16 heads, patch 14, gelu_pytorch_tanh, LayerNorm eps 1e-6
  (google/siglip-so400m-patch14-384's config.json). Same for 2B and 7B.
* LLMs: the README's model table (VideoLLaMA3-2B: Qwen2.5-1.5B, VideoLLaMA3-7B: Qwen2.5-7B) and the
  Qwen2.5 configs (Qwen/Qwen2.5-1.5B-Instruct, Qwen/Qwen2.5-7B-Instruct config.json; Qwen2.5 technical
  report, arXiv 2412.15115, table 1):
    Qwen2.5-1.5B: hidden 1536, MLP 8960, 28 layers, 12 heads / 2 KV heads, vocab 151936, tied
                  embeddings, rope_theta 1e6, 32768 positions, RMSNorm eps 1e-6
    Qwen2.5-7B:   hidden 3584, MLP 18944, 28 layers, 28 heads / 4 KV heads, vocab 152064, untied,
                  rope_theta 1e6, 32768 positions, RMSNorm eps 1e-6
* Projector (Linear 1152->D, GELU, Linear D->D) and the 2x2 downsampling: transformers 5.24's
  `VideoLlama3Projector` / `pixel_unshuffle`.
* Processor: transformers 5.24's `VideoLlama3VideoProcessor` class defaults (video budget
  longest_edge 28*28*768 px, shortest_edge 128*28*28 px, SigLIP mean/std 0.5) and the issue's sampling
  (fps 1, max_frames 180, min_frames 4). The hub checkpoints' own video_preprocessor_config.json may set
  another budget: not read here (no download).

The token ids are the tiny VideoLLaMA3 tokenizer's (the config keeps the real vocab size; the
embedding table is sized to it). The 7B cannot be exported on the 24 GB build VM (the builder holds
the fp32 text model: ~30 GB); it is for `sfedge plan` and GPU hosts.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SfedgeError

SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
QWEN25_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                   max_position_embeddings=32768, rms_norm_eps=1e-6)
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
                 max_position_embeddings=32768, rms_norm_eps=1e-6)
ROPE = {"rope_type": "default", "rope_theta": 1000000.0}
DEFAULT_SIZE = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}

VL3_PRESETS: dict[str, tuple[dict, dict]] = {
    "videollama3-2b": (SIGLIP_SO400M, QWEN25_1_5B),
    "videollama3-7b": (SIGLIP_SO400M, QWEN25_7B),
}


def config_dict(name: str) -> dict:
    """The preset as a VideoLLaMA3 config.json would hold it (no transformers needed)."""
    if name not in VL3_PRESETS:
        raise SfedgeError(f"unknown VideoLLaMA3 preset {name!r}; presets: {', '.join(VL3_PRESETS)}")
    vision, text = VL3_PRESETS[name]
    return {"model_type": "video_llama_3", "vision_config": dict(vision, model_type="video_llama_3_vision"),
            "text_config": dict(text, model_type="qwen2", rope_parameters=ROPE),
            "tie_word_embeddings": text["tie_word_embeddings"]}


def make_preset(name: str, out_dir: str | Path, seed: int = 0, progress: bool = True, device: str = "cpu") -> Path:
    """Write preset `name` as a transformers VideoLLaMA3 checkpoint (fp16 shards, tokenizer, chat
    template, processor configs) into `out_dir`, tensor by tensor (`presets._write_shards`)."""
    import torch
    from transformers import (PreTrainedTokenizerFast, Qwen2Config, VideoLlama3Config,
                              VideoLlama3ForConditionalGeneration, VideoLlama3VisionConfig)

    from .presets import _write_shards
    from .tiny_videollama3 import (CHAT_TEMPLATE, IMAGE_TOKEN, SPECIAL_TOKENS, VIDEO_TOKEN, image_processor_config,
                                   train_tokenizer, video_processor_config)

    vision_kw, text_kw = VL3_PRESETS[name] if name in VL3_PRESETS else (None, None)
    if vision_kw is None:
        raise SfedgeError(f"unknown VideoLLaMA3 preset {name!r}; presets: {', '.join(VL3_PRESETS)}")
    log = print if progress else (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    text = Qwen2Config(**text_kw, rope_parameters=ROPE, use_sliding_window=False, bos_token_id=None,
                       eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = VideoLlama3Config(text_config=text.to_dict(), vision_config=VideoLlama3VisionConfig(**vision_kw).to_dict(),
                               image_token_id=ids[IMAGE_TOKEN], video_token_id=ids[VIDEO_TOKEN],
                               tie_word_embeddings=text_kw["tie_word_embeddings"], dtype="float16")
    with torch.device("meta"):
        model = VideoLlama3ForConditionalGeneration(config)
    log(f"preset {name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params (fp16) -> {out}")
    _write_shards(model, out, seed, log, device)
    config.save_pretrained(out)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            model_max_length=32768,
                            extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN}).save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE.read_text())
    (out / "video_preprocessor_config.json").write_text(json.dumps(video_processor_config(DEFAULT_SIZE), indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(image_processor_config(DEFAULT_SIZE), indent=2) + "\n")
    (out / "sfedge_preset.json").write_text(json.dumps({"preset": name, "seed": seed, "device": device,
                                                        "family": "video_llama_3"}, indent=2) + "\n")
    return out
