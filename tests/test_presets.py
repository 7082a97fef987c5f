"""Presets: real geometries counted on the meta device (no RAM), and a toy preset written shard by
shard and loaded back with transformers."""

from __future__ import annotations

import json

import pytest

from sfedge.errors import SfedgeError
from sfedge.models import presets
from sfedge.models.presets import PRESETS, make_preset, param_counts, preset_config

CLIP_L_PARAMS = 303_507_456  # openai/clip-vit-large-patch14-336 vision tower


@pytest.mark.parametrize(
    "name, llm_params, vocab",
    [
        ("sf-llava-7b", 6_738_939_904, 32064),    # Vicuna-7B with llava-hf's 32064 vocab
        ("sf-llava-34b", 34_389_834_752, 64064),  # Yi-34B with llava-hf's 64064 vocab
        ("sf-llava-jetson", 3_212_749_824, 128256),  # Llama-3.2-3B (tied embeddings)
        ("sf-llava-cpu", 246_055_936, 32064),     # small GQA Llama (hidden 1024, 16 layers, 4 KV heads)
    ],
)
def test_real_geometries(name, llm_params, vocab):
    config = preset_config(name)
    counts = param_counts(config)
    assert counts["vision"] == CLIP_L_PARAMS
    assert counts["llm"] == llm_params
    assert config.text_config.vocab_size == vocab
    assert config.text_config.model_type == "llama"
    assert config.vision_feature_layer == -2
    d = config.text_config.hidden_size
    assert counts["projector"] == 1024 * d + d + d * d + d  # mlp2x_gelu


def test_unknown_preset():
    with pytest.raises(SfedgeError, match="unknown preset"):
        preset_config("sf-llava-13b")


def test_toy_preset_writes_shards_and_loads(tmp_path, monkeypatch):
    import torch
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    monkeypatch.setattr(presets, "SHARD_BYTES", 256 * 1024)  # force several shards
    out = make_preset("sf-llava-test", tmp_path / "ckpt", seed=0, progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
    assert not list(out.glob(".shard-*"))

    model, info = LlavaNextForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    vocab = PRESETS["sf-llava-test"][1]["vocab_size"]
    assert model.model.language_model.embed_tokens.weight.shape[0] == vocab
    assert model.lm_head.weight.shape[0] == vocab
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) < vocab  # the small tokenizer; the table keeps the real size
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert torch.isfinite(model.lm_head.weight).all()


def test_same_seed_same_weights(tmp_path):
    a = make_preset("sf-llava-test", tmp_path / "a", seed=3, progress=False)
    b = make_preset("sf-llava-test", tmp_path / "b", seed=3, progress=False)
    name = "model-00001-of-00001.safetensors"
    assert (a / name).read_bytes() == (b / name).read_bytes()


def test_preset_checkpoint_is_cached(monkeypatch, tmp_path):
    from sfedge.models.presets import preset_checkpoint

    monkeypatch.setenv("SFEDGE_CACHE", str(tmp_path))
    path = preset_checkpoint("sf-llava-test", progress=False)
    assert path == tmp_path / "presets" / "sf-llava-test"
    stamp = (path / "config.json").stat().st_mtime_ns
    assert preset_checkpoint("sf-llava-test", progress=False) == path
    assert (path / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
