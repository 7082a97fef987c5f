"""The LLM decoder export (onnxruntime-genai builder, exclude_embeds) on three text models: Llama
with grouped-query attention (the tiny default), Mistral, and Llama with as many KV heads as
attention heads. Prefill and one cached decode step are compared with the HF text model."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_mha_dir(tiny_dir, tmp_path_factory):
    """The tiny checkpoint with num_key_value_heads == num_attention_heads (plain multi-head)."""
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig.from_pretrained(tiny_dir)
    config.text_config.num_key_value_heads = config.text_config.num_attention_heads
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama-mha"
    LlavaNextForConditionalGeneration(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_dir / name, out / name)
    return out


@pytest.mark.parametrize("which", ["llama_gqa", "mistral", "llama_mha"])
def test_text_model_exports_and_matches_hf(which, request, tmp_path):
    from sfedge.export.llm import describe_llm, run_builder, save_text_checkpoint
    from sfedge.export.validate import check_llm, llm_case, session
    from sfedge.reference.model import SlowFastLlava

    ckpt = request.getfixturevalue({"llama_gqa": "tiny_dir", "mistral": "tiny_mistral_dir",
                                    "llama_mha": "llama_mha_dir"}[which])
    text = save_text_checkpoint(ckpt, tmp_path / "text", tmp_path / "embeddings.npy", "float32")
    assert text["architectures"] == [{"mistral": "MistralForCausalLM"}.get(text["model_type"], "LlamaForCausalLM")]
    run_builder(tmp_path / "text", tmp_path / "llm", "fp32", "cpu", tmp_path / "builder.log")
    llm = describe_llm(tmp_path / "llm", "llm", "fp32", "cpu")
    assert llm["kv_cache"]["num_kv_heads"] == text["num_key_value_heads"]
    assert {i["name"] for i in llm["inputs"]} >= {"inputs_embeds", "attention_mask", "past_key_values.0.key"}

    case = llm_case(SlowFastLlava.from_pretrained(ckpt))
    report = check_llm(session(tmp_path / "llm" / "model.onnx"), tmp_path, llm, case, "fp32")
    assert report["passed"], report
    assert report["rel"] < 1e-4 and report["cases"]["embeddings"]["max_abs"] == 0.0


def test_text_key_mapping_both_checkpoint_layouts():
    """llava-hf hub keys and transformers 5's own keys both map onto a causal-LM checkpoint."""
    from sfedge.export.llm import _text_key

    assert _text_key("language_model.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert _text_key("language_model.lm_head.weight") == "lm_head.weight"
    assert _text_key("model.language_model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert _text_key("lm_head.weight") == "lm_head.weight"
    assert _text_key("vision_tower.embeddings.patch_embedding.weight") is None
    assert _text_key("multi_modal_projector.linear_1.weight") is None
