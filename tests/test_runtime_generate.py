"""generate.py against Hugging Face greedy decoding, on decoders from onnxruntime-genai's builder
made here from a small random Llama, run on CPU:

* cpu fp32: GroupQueryAttention, past and present share one max-length buffer (updated in place).
* cpu fp16: plain attention with position_ids, present = concat(past, new) (fresh per step).
* cuda fp16: the graph the builder makes for the CUDA EP (GQA, fp16 inputs_embeds / logits / KV,
  shared buffer), which ORT's CPU kernels also run: the GPU graph's contract, checked without a GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sfedge.export.step import export_step
from sfedge.runtime.engines import OrtEngine
from sfedge.runtime.generate import Decoder, generate
from sfedge.spec import GenerationSpec

pytestmark = pytest.mark.slow
LAYERS, KV_HEADS, HEAD_DIM, MAX_LEN = 2, 2, 16, 96


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(HF model, its checkpoint dir): a 2-layer GQA Llama with the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from sfedge.models.tiny import train_tokenizer

    root = tmp_path_factory.mktemp("scratch-llama")
    tok = train_tokenizer()
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=KV_HEADS,
                         max_position_embeddings=MAX_LEN, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # a sharp distribution: no near-ties in 20 steps
    model.save_pretrained(root)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(root)
    return model, root


def build(ckpt, out, precision: str, ep: str = "cpu"):
    """The builder's decoder with sfedge's last-position logits slice, as `sfedge export` makes it."""
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    from sfedge.export.llm import logits_for_last_position

    options = parse_extra_options(None, str(ckpt), str(out), precision, ep, str(out / "cache"), ["exclude_embeds=true"])
    create_model(None, str(ckpt), str(out), precision, ep, str(out / "cache"), **options)
    logits_for_last_position(out)
    return out


@pytest.mark.parametrize("ep,precision,shared", [("cpu", "fp32", True), ("cpu", "fp16", False), ("cuda", "fp16", True)])
def test_generate_matches_hf_greedy(llama, tmp_path, ep, precision, shared):
    import torch

    model, ckpt = llama
    out = build(ckpt, tmp_path / precision, precision, ep)
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["search"]["past_present_share_buffer"] is shared
    engine = OrtEngine(out / "model.onnx", mem_reuse=shared)
    assert ("position_ids" in engine.inputs) is (not shared)
    assert engine.inputs["inputs_embeds"].dtype == (np.float32 if precision == "fp32" else np.float16)
    table = model.model.embed_tokens.weight.detach().numpy()
    kv_names = [(f"past_key_values.{i}.{k}", f"present.{i}.{k}") for i in range(LAYERS) for k in ("key", "value")]
    step = export_step(out, np.dtype(engine.outputs["logits"].dtype).name, np.dtype(engine.inputs["inputs_embeds"].dtype).name)
    dec = Decoder(engine, table, out / step["path"], kv_names=kv_names, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                  max_length=MAX_LEN, shared=shared)
    ids = [1, 57, 300, 12, 999, 4, 77, 78, 79, 80, 81]
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                              pad_token_id=0)[0, len(ids):].tolist()
    embeds = table[ids][None]
    for chunk in (None, 4):  # one-shot and chunked prefill (the concat layout always takes one run)
        got = list(generate(dec, embeds, GenerationSpec(max_new_tokens=20), (), prefill_chunk=chunk))
        assert got == want, (precision, chunk)
    # prefix reuse: 7 positions kept from an earlier prompt (in place, then from a snapshot after
    # something else was run), the rest prefilled after them (one position per run in the concat layout)
    list(generate(dec, embeds[:, :7], GenerationSpec(max_new_tokens=1), (), items=ids[:7]))
    assert dec.length == 7 and dec.items == ids[:7]
    assert list(generate(dec, embeds[:, 7:], GenerationSpec(max_new_tokens=20), (), start=7)) == want
    snap = dec.snapshot(7)
    list(generate(dec, table[[1, 2, 3, 4, 5, 6, 7, 8]][None], GenerationSpec(max_new_tokens=3), ()))
    dec.restore(snap, ids[:7])
    assert list(generate(dec, embeds[:, 7:], GenerationSpec(max_new_tokens=20), (), start=7)) == want, precision
    logits = []
    list(generate(dec, embeds, GenerationSpec(max_new_tokens=1), (), on_first_logits=logits.append))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].numpy()
    err = np.abs(logits[0] - ref).max() / np.abs(ref).max()
    assert err < (1e-5 if precision == "fp32" else 2e-2), err


def test_cache_full_stops_generation(llama, tmp_path):
    model, ckpt = llama
    out = build(ckpt, tmp_path / "fp32", "fp32")
    table = model.model.embed_tokens.weight.detach().numpy()
    kv_names = [(f"past_key_values.{i}.{k}", f"present.{i}.{k}") for i in range(LAYERS) for k in ("key", "value")]
    step = export_step(out, "float32", "float32")
    dec = Decoder(OrtEngine(out / "model.onnx"), table, out / step["path"], kv_names=kv_names, num_kv_heads=KV_HEADS,
                  head_dim=HEAD_DIM, max_length=16, shared=True)
    got = list(generate(dec, table[[1, 5, 6, 7, 8, 9, 10, 11, 12, 13]][None], GenerationSpec(max_new_tokens=50), ()))
    assert len(got) == 16 - 10 + 1 and dec.length == 16  # the last token is produced, never stored


def test_a_graph_with_every_positions_logits_is_refused(llama, tmp_path):
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    from sfedge.errors import SfedgeError

    model, ckpt = llama
    out = tmp_path / "unsliced"
    options = parse_extra_options(None, str(ckpt), str(out), "fp32", "cpu", str(out / "cache"), ["exclude_embeds=true"])
    create_model(None, str(ckpt), str(out), "fp32", "cpu", str(out / "cache"), **options)
    table = model.model.embed_tokens.weight.detach().numpy()
    kv_names = [(f"past_key_values.{i}.{k}", f"present.{i}.{k}") for i in range(LAYERS) for k in ("key", "value")]
    with pytest.raises(SfedgeError, match="last-position graph"):
        Decoder(OrtEngine(out / "model.onnx"), table, out / "unused.onnx", kv_names=kv_names, num_kv_heads=KV_HEADS,
                head_dim=HEAD_DIM, max_length=MAX_LEN, shared=True)
