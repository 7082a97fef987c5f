"""A tiny random-weight VideoLLaMA3 checkpoint in the transformers layout (`VideoLlama3ForConditionalGeneration`).

The real architecture at toy widths: a SigLIP-style vision encoder with patch 14 and 2-D axial RoPE
(2 layers), the 2x2 downsampling and projector, and a Qwen2 text model with grouped-query attention
(4 heads / 2 KV heads) and tied input/output embeddings, like Qwen2.5-1.5B (the 2B model's LLM).
Processor files: `video_preprocessor_config.json` / `preprocessor_config.json` (the transformers
defaults of VideoLLaMA3's processors, with a smaller pixel budget so tests stay fast), a byte-level BPE
tokenizer trained here with VideoLLaMA3's special tokens (Qwen's <|endoftext|>, <|im_start|>,
<|im_end|>, and <|image_pad|> / <|video_pad|>), and the real checkpoint's chat template
(`assets/videollama3_chat_template.jinja`). Made in seconds, byte-identical for a seed, initialised
as the LLaVA tiny model is (`tiny._init_weights`) so that greedy answers depend on the video.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
CHAT_TEMPLATE = ASSETS / "videollama3_chat_template.jinja"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>")
IMAGE_TOKEN, VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"
VOCAB_SIZE = 1024
# The tiny video budget: 64 merged tokens per 4-frame video at most (transformers' default is
# longest_edge 28*28*768 / shortest_edge 128*28*28, recorded in the presets)
TINY_SIZE = {"shortest_edge": 4 * 28 * 28, "longest_edge": 64 * 28 * 28}
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]  # transformers' IMAGENET_STANDARD_*, VideoLLaMA3's defaults


def video_processor_config(size: dict | None = None) -> dict:
    """video_preprocessor_config.json: VideoLlama3VideoProcessor's class defaults (transformers 5.24),
    the issue's sampling settings, and `size` (the pixel budget)."""
    return {
        "video_processor_type": "VideoLlama3VideoProcessor", "processor_class": "VideoLlama3Processor",
        "do_resize": True, "size": dict(size or TINY_SIZE), "resample": 3,  # PIL bicubic
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": SIGLIP_MEAN, "image_std": SIGLIP_STD, "do_convert_rgb": True,
        "patch_size": 14, "temporal_patch_size": 1, "merge_size": 2,
        "do_sample_frames": True, "fps": 1, "min_frames": 4, "max_frames": 180,
        "use_token_compression": True, "return_metadata": True,
    }


def image_processor_config(size: dict | None = None) -> dict:
    """preprocessor_config.json: VideoLlama3ImageProcessor's defaults (merge size 1 for images)."""
    return {
        "image_processor_type": "VideoLlama3ImageProcessor", "processor_class": "VideoLlama3Processor",
        "do_resize": True, "size": dict(size or TINY_SIZE), "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": SIGLIP_MEAN, "image_std": SIGLIP_STD,
        "do_convert_rgb": True, "patch_size": 14, "temporal_patch_size": 1, "merge_size": 1,
    }


def _corpus() -> list[str]:
    from .tiny import _QUESTIONS, _WORDS

    words = _WORDS.split()
    texts = [f"<|im_start|>user\n<|video_pad|>\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in _QUESTIONS]
    texts += [",".join(f"Time {t / 2:.1f}s:" for t in range(i, i + 8)) for i in range(0, 400, 8)]
    texts += [" ".join(words[i:i + 12]) + "." for i in range(0, len(words), 12)]
    texts += [" In the video, " + w.capitalize() + " " + w + "," for w in words]
    return texts


def train_tokenizer():
    """A byte-level BPE `tokenizers.Tokenizer` with VideoLLaMA3's special tokens (ids 0..4); no BOS (Qwen)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def tiny_config(vocab_size: int, ids: dict[str, int]):
    from transformers import Qwen2Config, VideoLlama3Config, VideoLlama3VisionConfig

    vision = VideoLlama3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    text = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                       tie_word_embeddings=True, use_sliding_window=False,
                       bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return VideoLlama3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                             image_token_id=ids[IMAGE_TOKEN], video_token_id=ids[VIDEO_TOKEN], tie_word_embeddings=True)


def make_tiny_videollama3(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny VideoLLaMA3 checkpoint to `out_dir` and return its path. Same seed -> same bytes."""
    import torch
    from transformers import PreTrainedTokenizerFast, VideoLlama3ForConditionalGeneration

    from .tiny import _init_weights

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config = tiny_config(tok.get_vocab_size(), ids)
    torch.manual_seed(seed)
    model = VideoLlama3ForConditionalGeneration(config).eval()
    _init_weights(model, seed, ids["<|im_end|>"])
    with torch.no_grad():
        model.lm_head.weight[ids["<|endoftext|>"]] *= 0.25  # the second EOS, as _init_weights does the first
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    model.save_pretrained(out)

    template = CHAT_TEMPLATE.read_text()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=4096,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    ).save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["processor_class"] = "VideoLlama3Processor"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(template)
    (out / "video_preprocessor_config.json").write_text(json.dumps(video_processor_config(), indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(image_processor_config(), indent=2) + "\n")
    (out / "sfedge_tiny.json").write_text(json.dumps({"seed": seed, "family": "video_llama_3"}, indent=2) + "\n")
    return out
