"""Export-validation helpers that need no export: the error metrics and the memory-frugal
reference loading they rely on."""

from __future__ import annotations

import numpy as np
import pytest

from sfedge.parity import errors, table_errors


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_table_errors_equal_errors_block_by_block(dtype):
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1000, 24)).astype(dtype)
    out = (ref.astype(np.float64) + rng.standard_normal(ref.shape) * 1e-3).astype(np.float32)
    whole, blocks = errors(out, ref), table_errors(out, ref, rows=64)
    for key in ("max_abs", "rel", "cosine"):
        assert blocks[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-12), key
    assert table_errors(ref, ref)["max_abs"] == 0.0
    assert table_errors(out[:10], ref)["rel"] == float("inf")  # misshapen: reported, not raised


@pytest.mark.parametrize("tied", [False, True])
def test_lazy_upcast_is_bit_identical_to_converting_up_front(tied, tiny_dir, tmp_path):
    """A half-precision checkpoint read through `lazy_upcast` (weights kept in bf16/fp16, widened
    when used; embedding rows widened after the lookup) computes exactly what the model converted
    to fp32 up front computes, at about half its memory."""
    import torch
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    from sfedge.reference.model import SlowFastLlava
    from sfedge.spec import GenerationSpec

    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_dir)
    if tied:
        model.config.tie_word_embeddings = model.config.text_config.tie_word_embeddings = True
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    half = tmp_path / "half"
    model.to(torch.bfloat16 if tied else torch.float16).save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(half)

    full = SlowFastLlava.from_pretrained(half)
    lazy = SlowFastLlava.from_pretrained(half, lazy_upcast=True)
    llm = lazy.model.model.language_model
    assert lazy.dtype == torch.float32 and llm.layers[0].mlp.up_proj.parametrizations.weight.original.dtype != torch.float32
    assert llm.embed_tokens.weight.dtype != torch.float32  # the table itself is never widened
    pixels = torch.randn(3, 3, 336, 336)
    embeds = [m.inputs_embeds(m.prompt_ids("What?"), m.pool(m.vision_features(pixels))) for m in (full, lazy)]
    assert embeds[1].dtype == torch.float32 and torch.equal(*embeds)
    assert torch.equal(full.first_step_logits(embeds[0]), lazy.first_step_logits(embeds[1]))
    gen = GenerationSpec(max_new_tokens=8)
    assert full.generate(embeds[0], gen) == lazy.generate(embeds[1], gen)
    if tied:
        head = lazy.model.lm_head.parametrizations.weight.original
        assert head.data_ptr() == llm.embed_tokens.weight.data_ptr()  # still one tensor


def test_llm_case_reads_a_bf16_table(tiny_dir, tmp_path):
    """numpy has no bfloat16: the validation's embedding table from a bf16 checkpoint (kept as stored
    under lazy_upcast) is widened exactly, and the prefill inputs are its rows."""
    import torch
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    from sfedge.export.validate import llm_case
    from sfedge.reference.model import SlowFastLlava

    half = tmp_path / "bf16"
    LlavaNextForConditionalGeneration.from_pretrained(tiny_dir).to(torch.bfloat16).save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(half)
    ref = SlowFastLlava.from_pretrained(half, lazy_upcast=True)
    assert ref.dtype == torch.float32
    case = llm_case(ref)
    stored = ref.model.model.language_model.embed_tokens.weight
    assert stored.dtype == torch.bfloat16
    assert np.array_equal(case["table"], stored.detach().float().numpy())
    assert case["prefill"][0][0].dtype == np.float32 and np.isfinite(case["prefill"][-1][1]).all()


def test_a_graph_onnx_runtime_cannot_load_fails_its_own_check_named(tmp_path):
    """Both families' compare() run their checks through run_checks: an ONNX Runtime error becomes a
    failed, named check in the report (the verdict then lists it); any other error propagates."""
    import onnxruntime as ort

    from sfedge.export.validate import _GraphFailed, run_checks, verdict
    from sfedge.errors import ValidationError

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")

    def chain():
        raise _GraphFailed("the decoder did not load")

    report = {}
    run_checks(report, [("vision", lambda: {"rel": 0.0, "cosine": 1.0, "passed": True}),
                        ("llm", lambda: ort.InferenceSession(str(broken))), ("chain", chain)])
    assert report["vision"]["passed"] and not report["llm"]["passed"] and not report["chain"]["passed"]
    assert report["llm"]["failure"].startswith("llm: the graph failed to run (")
    assert report["chain"]["failure"] == "chain: the graph failed to run (the decoder did not load)"
    with pytest.raises(ValidationError, match="llm: the graph failed to run.*chain: the graph failed"):
        verdict(report, ["vision", "llm", "chain"])
    with pytest.raises(ZeroDivisionError):  # a bug in a check is not a graph failure
        run_checks({}, [("vision", lambda: 1 / 0)])
