"""The PyTorch SlowFast-LLaVA reference on the tiny checkpoint, checked against transformers' own
forward / generate, and for dependence on the video."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch

from sfedge.reference.model import ReferenceAnswer, SlowFastLlava
from sfedge.spec import GenerationSpec, sample_frame_indices

GEN = GenerationSpec(max_new_tokens=24)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model is overhead-bound: one thread is faster, and fair to a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ref(tiny_dir):
    return SlowFastLlava.from_pretrained(tiny_dir)


def _pixels(seed: int, t: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 3, 336, 336, generator=g)


@pytest.fixture(scope="module")
def prompt_embeds(ref):
    """inputs_embeds of two different clips (T = 50, 3680 visual tokens) for the same question."""
    ids = ref.prompt_ids("What is happening in the video?")
    return [ref.inputs_embeds(ids, ref.pool(ref.vision_features(_pixels(seed)))) for seed in (0, 1)]


@pytest.fixture(scope="module")
def short_embeds(ref):
    """A cheap prompt (the first 96 pooled tokens of a 2-frame clip) for the decoding-logic tests."""
    ids = ref.prompt_ids("What is happening in the video?")
    return ref.inputs_embeds(ids, ref.pool(ref.vision_features(_pixels(5, t=2)))[:96])


def test_attributes(ref):
    assert ref.prompt_family == "vicuna"
    assert ref.image_token_id == ref.tokenizer.convert_tokens_to_ids("<image>")
    assert ref.model.config._attn_implementation == "sdpa"


def test_from_pretrained_tiny_name():
    model = SlowFastLlava.from_pretrained("tiny")
    assert model.model.config.text_config.model_type == "llama"


def test_vision_features_use_second_to_last_layer(ref, tiny_dir):
    pixels = _pixels(2, t=2)
    feats = ref.vision_features(pixels)
    assert feats.shape == (2, 576, ref.model.config.text_config.hidden_size)
    torch.testing.assert_close(ref.vision_features(pixels[1:]), feats[1:], rtol=1e-5, atol=1e-5)  # per frame

    other = SlowFastLlava.from_pretrained(tiny_dir)
    tower = other.model.model.vision_tower
    vision = getattr(tower, "vision_model", tower)  # transformers 5 flattened CLIPVisionModel
    with torch.no_grad():  # the last layer and post_layernorm never reach the output (SPEC 1)
        for p in [*vision.encoder.layers[-1].parameters(), *vision.post_layernorm.parameters()]:
            p.add_(1.0)
    torch.testing.assert_close(other.vision_features(pixels), feats)
    with torch.no_grad():  # ... but the layer before does
        vision.encoder.layers[-2].mlp.fc2.weight.add_(1.0)
    assert not torch.allclose(other.vision_features(pixels), feats)


def test_prompt_ids(ref):
    tok = ref.tokenizer
    ids = ref.prompt_ids("What is happening?")
    assert ids[0] == tok.bos_token_id and ids.count(ref.image_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True).endswith("ASSISTANT:\nAnswer: In the video,")
    mc = ref.prompt_ids("Which one?", ["red", "blue"])
    assert tok.decode(mc, skip_special_tokens=True).endswith("(A) red\n(B) blue\nOnly give the best option. "
                                                             "\nASSISTANT:\nAnswer: Best option:(")


def test_inputs_embeds_splices_visual_tokens(ref):
    ids = ref.prompt_ids("Where?")
    pos = ids.index(ref.image_token_id)
    visual = torch.randn(30, ref.model.config.text_config.hidden_size)
    emb = ref.inputs_embeds(ids, visual)
    table = ref.model.get_input_embeddings().weight
    assert emb.shape == (1, len(ids) - 1 + 30, table.shape[1])
    torch.testing.assert_close(emb[0, :pos], table[ids[:pos]])
    torch.testing.assert_close(emb[0, pos:pos + 30], visual)
    torch.testing.assert_close(emb[0, pos + 30:], table[ids[pos + 1:]])
    with pytest.raises(ValueError):
        ref.inputs_embeds(ids[:pos] + ids[pos + 1:], visual)


def test_first_step_logits_match_transformers_forward(ref, short_embeds):
    with torch.no_grad():
        want = ref.model(inputs_embeds=short_embeds).logits[0, -1]
    torch.testing.assert_close(ref.first_step_logits(short_embeds), want, rtol=1e-4, atol=1e-4)


def test_greedy_matches_transformers_generate(ref, short_embeds):
    got = ref.generate(short_embeds, GEN)
    with torch.no_grad():
        want = ref.model.generate(inputs_embeds=short_embeds, max_new_tokens=GEN.max_new_tokens,
                                  do_sample=False)[0].tolist()
    eos = ref.tokenizer.eos_token_id
    assert got == (want[:want.index(eos)] if eos in want else want)


def test_output_depends_on_the_video(ref, prompt_embeds):
    a, b = (ref.generate(e, GEN) for e in prompt_embeds)
    assert a != b
    for ids in (a, b):
        assert len(ids) == GEN.max_new_tokens  # EOS not produced early
        assert len(set(ids)) > 3  # not one token repeated
        assert ref.decode(ids)


def test_eos_stops_and_is_not_returned(ref, short_embeds):
    full = ref.generate(short_embeds, GEN)
    stop = full[5]
    saved = ref.eos_token_ids
    try:
        ref.eos_token_ids = frozenset({stop})
        assert ref.generate(short_embeds, GEN) == full[:full.index(stop)]
        assert ref.generate(short_embeds, GenerationSpec(max_new_tokens=24, ignore_eos=True)) == full
    finally:
        ref.eos_token_ids = saved
    assert len(ref.generate(short_embeds, GenerationSpec(max_new_tokens=3))) == 3


def test_sampling(ref, short_embeds):
    e = short_embeds
    sample = GenerationSpec(max_new_tokens=12, temperature=1.0, seed=7)
    assert ref.generate(e, sample) == ref.generate(e, sample)  # seeded: reproducible
    runs = {tuple(ref.generate(e, GenerationSpec(max_new_tokens=12, temperature=1.5, seed=s))) for s in range(4)}
    assert len(runs) > 1
    greedy = ref.generate(e, GenerationSpec(max_new_tokens=12))
    assert ref.generate(e, GenerationSpec(max_new_tokens=12, temperature=0.8, top_k=1, seed=0)) == greedy
    assert ref.generate(e, GenerationSpec(max_new_tokens=12, temperature=0.8, top_p=1e-6, seed=0)) == greedy


def test_pixels_to_text_at_real_token_counts(ref):
    """50 frames -> 3,680 visual tokens -> text. The time is printed, not asserted (timings belong
    in docs/BENCHMARKS.md: `scripts/tiny_timing.py` measures make-tiny + load + answer)."""
    start = time.perf_counter()
    visual = ref.pool(ref.vision_features(_pixels(3)))
    ids = ref.generate(ref.inputs_embeds(ref.prompt_ids("What happens?"), visual), GenerationSpec(max_new_tokens=32))
    seconds = time.perf_counter() - start
    print(f"tiny reference: 50 frames, {visual.shape[0]} visual tokens, {len(ids)} new tokens in {seconds:.2f} s")
    assert visual.shape[0] == 3680 and ref.decode(ids)


def test_mistral_variant(tiny_mistral_dir):
    ref = SlowFastLlava.from_pretrained(tiny_mistral_dir)
    visual = ref.pool(ref.vision_features(_pixels(4, t=4)))
    assert len(ref.generate(ref.inputs_embeds(ref.prompt_ids("What?"), visual), GenerationSpec(max_new_tokens=8))) == 8


_RUNTIME = all(importlib.util.find_spec(m) for m in ("sfedge.runtime.video", "sfedge.runtime.preprocess"))


@pytest.mark.skipif(not _RUNTIME, reason="sfedge.runtime.video / preprocess not written yet")
def test_answer_on_a_frame_directory(ref, tmp_path):
    from PIL import Image

    for i in range(12):  # a white square moving right on black
        frame = np.zeros((120, 160, 3), np.uint8)
        frame[40:80, 10 * i:10 * i + 40] = 255
        Image.fromarray(frame).save(tmp_path / f"{i:03d}.png")
    out = ref.answer(tmp_path, "Which way does the square move?", ["left", "right"], GenerationSpec(max_new_tokens=4))
    assert isinstance(out, ReferenceAnswer)
    assert out.num_frames_total == 12 and out.frame_indices == sample_frame_indices(12)
    assert out.num_visual_tokens == 2880 + 12 * 16
    assert 0 < len(out.token_ids) <= 4 and out.answer == ref.decode(out.token_ids)
    assert out.choice in (None, "A", "B")


def test_chatml_im_end_ends_generation():
    """Yi-34B (ChatML): llava-hf's fast tokenizer names <|endoftext|> as EOS; turns end with <|im_end|>."""
    from types import SimpleNamespace

    from sfedge.reference.model import _eos_ids

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=2))
    tokenizer = SimpleNamespace(eos_token_id=2, get_vocab=lambda: {"<|endoftext|>": 2, "<|im_end|>": 7})
    assert _eos_ids(model, tokenizer) == {2, 7}
    vicuna = SimpleNamespace(eos_token_id=2, get_vocab=lambda: {"</s>": 2})
    assert _eos_ids(model, vicuna) == {2}
