"""The encoder / answer split and prefix reuse on tiny engines.

A follow-up question about the same frames prefills only the tokens after the visual ones; the
tokens must equal a cold run's (a fresh Pipeline), with the parity suite's near-tie rule: where the
reuse path's tokens differ, the reference's top-2 gap at the first differing step is below 1e-3."""

from __future__ import annotations

import numpy as np
import pytest

from sfedge.errors import SfedgeError
from sfedge.runtime.answer import StopMatcher
from sfedge.runtime.pipeline import Pipeline
from sfedge.runtime.prefix_cache import common_prefix
from sfedge.runtime.video import load_video
from sfedge.spec import GenerationSpec

GEN = GenerationSpec(max_new_tokens=12)
Q1, Q2, Q3 = "What is moving in the video?", "Which direction does the red circle go?", "Describe the scene."


def cold(engines, video, question, options=None, gen=GEN):
    """The answer of a Pipeline that has never seen anything."""
    return Pipeline(engines, prefix_cache_mb=0).ask(video, question, options, gen=gen)


def assert_same_tokens(got, want, reference, pipe, video, question, options=None):
    if got.token_ids == want.token_ids:
        return
    from sfedge.commands.verify import _reference_logits_at, reference_visual_tokens, top2_gap

    k = common_prefix(got.token_ids, want.token_ids)
    _, _, visual = reference_visual_tokens(reference, pipe, video)
    embeds = reference.inputs_embeds(reference.prompt_ids(question, options), visual)
    gap = top2_gap(_reference_logits_at(reference, embeds, want.token_ids[:k]))
    assert gap < 1e-3, f"tokens differ at step {k} with a reference top-2 gap of {gap}"


@pytest.fixture()
def pipe(engines_fp32):
    return Pipeline(engines_fp32)


def test_follow_up_prefills_only_the_question(pipe, engines_fp32, clip_path, reference_llama):
    first = pipe.ask(clip_path, Q1, gen=GEN)
    assert first.reused_prompt_tokens == 0
    second = pipe.ask(clip_path, Q2, gen=GEN)
    image_at = pipe.prompt_ids(Q2).index(pipe.answerer.image_token_id)
    assert second.reused_prompt_tokens >= image_at + second.num_visual_tokens
    assert second.prompt_tokens - second.reused_prompt_tokens < 40  # the question and the template's tail
    assert second.timings_ms["vision"] == 0 and second.timings_ms["slowfast"] == 0  # not needed
    assert_same_tokens(second, cold(engines_fp32, clip_path, Q2), reference_llama, pipe, clip_path, Q2)
    mc = pipe.ask(clip_path, "What colour is the square?", ["red", "green", "blue"], gen=GEN)
    assert mc.reused_prompt_tokens <= 1  # BOS only: the multiple-choice template differs before <image>
    back = pipe.ask(clip_path, Q2, gen=GEN)  # the open template's visual prefix was saved before mc overwrote it
    assert back.reused_prompt_tokens == image_at + back.num_visual_tokens
    same = pipe.ask(clip_path, Q2, gen=GEN)  # the same prompt again: all but its last position reused
    assert same.reused_prompt_tokens == same.prompt_tokens - 1 and same.token_ids == back.token_ids


def test_saved_prefix_of_other_frames_is_restored(pipe, engines_fp32, clip_path, short_clips, reference_llama):
    other = short_clips["mp4-12"]
    pipe.ask(clip_path, Q1, gen=GEN)
    pipe.ask(other, Q1, gen=GEN)  # overwrites the buffer: clip_path's visual prefix is saved first
    assert len(pipe.answerer.prefix.saved) == 1
    back = pipe.ask(clip_path, Q3, gen=GEN)
    assert back.reused_prompt_tokens >= back.num_visual_tokens
    assert_same_tokens(back, cold(engines_fp32, clip_path, Q3), reference_llama, pipe, clip_path, Q3)
    again = pipe.ask(other, Q3, gen=GEN)  # and the other clip's prefix was saved in turn
    assert again.reused_prompt_tokens >= again.num_visual_tokens
    assert_same_tokens(again, cold(engines_fp32, other, Q3), reference_llama, pipe, other, Q3)


def test_saved_prefixes_stay_within_their_byte_cap(engines_fp32, clip_path, short_clips):
    probe = Pipeline(engines_fp32)
    probe.ask(clip_path, Q1, gen=GenerationSpec(max_new_tokens=1))
    one = probe.answerer.prefix.keep * probe.decoder.bytes_per_token  # bytes of one 50-frame visual prefix
    pipe = Pipeline(engines_fp32, prefix_cache_mb=1.5 * one / 2**20)  # room for one such prefix, not two
    for video in (clip_path, short_clips["mp4-12"], short_clips["mp4-7"], clip_path):
        pipe.ask(video, Q1, gen=GenerationSpec(max_new_tokens=1))
        assert pipe.answerer.prefix.saved_bytes <= pipe.answerer.prefix.max_bytes
    assert len(pipe.answerer.prefix.saved) == 1
    off = Pipeline(engines_fp32, prefix_cache_mb=0)
    off.ask(clip_path, Q1, gen=GEN)
    off.ask(short_clips["mp4-3"], Q1, gen=GEN)
    assert off.answerer.prefix.saved == {} and off.ask(clip_path, Q2, gen=GEN).reused_prompt_tokens < 10
    never = Pipeline(engines_fp32, prefix_reuse=False)  # what the bench uses: every prefill cold
    never.ask(clip_path, Q1, gen=GEN)
    assert never.ask(clip_path, Q1, gen=GEN).reused_prompt_tokens == 0


def test_seeded_sampling_is_the_same_with_reuse(pipe, engines_fp32, clip_path):
    spec = GenerationSpec(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=5)
    pipe.ask(clip_path, Q1, gen=GEN)
    warm = pipe.ask(clip_path, Q2, gen=spec)
    assert warm.reused_prompt_tokens > warm.num_visual_tokens
    assert warm.token_ids == cold(engines_fp32, clip_path, Q2, gen=spec).token_ids


def test_explicit_frames_answer_equals_ask(pipe, engines_fp32, short_clips):
    video = short_clips["mp4-12"]
    frames = load_video(video, pipe.spec.sampling.num_frames).frames
    by_frames = Pipeline(engines_fp32).ask_frames(frames, Q1, gen=GEN)
    by_video = pipe.ask(video, Q1, gen=GEN)
    assert by_frames.token_ids == by_video.token_ids
    assert by_frames.frame_indices == list(range(len(frames))) and by_frames.num_frames_total == len(frames)
    # the content key: the same frames, from a file or given directly, are the same visual tokens
    assert pipe.ask_frames(frames, Q2, gen=GEN).reused_prompt_tokens >= by_video.num_visual_tokens
    with pytest.raises(SfedgeError, match="no frames"):
        pipe.ask_frames([], Q1)


def test_context_edges(engines_fp32, short_clips):
    """A prompt of exactly the context's length runs and stops with "length" after its one token;
    one position more is refused with the numbers (the context is lowered on the decoder: the
    buffers stay allocated for more, the policy is what is tested)."""
    video = short_clips["mp4-3"]
    n = Pipeline(engines_fp32).ask(video, Q2, gen=GenerationSpec(max_new_tokens=1)).prompt_tokens
    edge = Pipeline(engines_fp32)
    edge.decoder.max_length = n
    got = edge.ask(video, Q2, gen=GenerationSpec(max_new_tokens=8))
    assert len(got.token_ids) == 1 and got.stop_reason == "length"
    edge.decoder.max_length = n - 1
    with pytest.raises(SfedgeError, match=rf"needs {n} positions \({got.num_visual_tokens} visual tokens for 3 frames"):
        edge.ask(video, Q2)
    roomy = Pipeline(engines_fp32)
    roomy.decoder.max_length = n + 3  # room for the prompt and 3 more tokens
    got = roomy.ask(video, Q2, gen=GenerationSpec(max_new_tokens=8, ignore_eos=True))
    assert got.stop_reason == "length" and len(got.token_ids) == 4


@pytest.mark.parametrize("pieces,stops,want", [
    (["Hello", " wor", "ld. Bye"], ["world"], ("Hello ", True)),
    (["ab", "c", "d"], ["cd"], ("ab", True)),
    (["a", "b", "c"], ["x"], ("abc", False)),
    (["one ", "tw", "o three"], ["two", "o t"], ("one ", True)),
    (["x<", "|im", "_end|>y"], ["<|im_end|>"], ("x", True)),
    (["ab"], [], ("ab", False)),
])
def test_stop_strings_across_pieces(pieces, stops, want):
    m = StopMatcher(stops)
    out, stopped = "", False
    for p in pieces:
        text, stopped = m.push(p)
        out += text
        if stopped:
            break
    if not stopped:
        out += m.flush()
    assert (out, stopped) == want


def test_stop_strings_end_the_answer(pipe, short_clips):
    video = short_clips["dir-5"]
    full = pipe.ask(video, Q1, gen=GenerationSpec(max_new_tokens=16, ignore_eos=True))
    text = full.answer
    cut = text[len(text) // 2: len(text) // 2 + 3]
    if len(cut.strip()) < 2:
        pytest.skip(f"no usable stop string in {text!r}")
    got = pipe.ask(video, Q1, gen=GenerationSpec(max_new_tokens=16, ignore_eos=True), stop=[cut])
    assert got.stop_reason == "stop" and got.answer == text[:text.index(cut)].strip()
    assert len(got.token_ids) < len(full.token_ids)


def test_cancelled_is_asked_after_every_token(pipe, short_clips):
    """A server's disconnect check: asked once per token (also a token that completes no text yet),
    generation ends right after the token where it says True; the next answer is unaffected."""
    video = short_clips["dir-5"]
    gen = GenerationSpec(max_new_tokens=16, ignore_eos=True)
    calls = []
    stream = pipe.stream(video, Q1, gen=gen, cancelled=lambda: calls.append(1) or len(calls) >= 3)
    while True:
        try:
            next(stream)
        except StopIteration as done:
            result = done.value
            break
    assert result.stop_reason == "cancelled" and len(result.token_ids) == 3 and len(calls) == 3
    full = pipe.ask(video, Q1, gen=gen)
    assert len(full.token_ids) == 16 and full.token_ids[:3] == result.token_ids
