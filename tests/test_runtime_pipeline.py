"""Pipeline behaviour on tiny fp32 engines: manifest checked first, sessions reused, streaming,
sampling, stopping, the IOBinding paths (shared KV buffer, chunked prefill, device-side greedy)."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from sfedge.errors import ManifestError, SfedgeError
from sfedge.runtime.generate import generate
from sfedge.runtime.pipeline import AskResult, Pipeline, parse_options
from sfedge.spec import GenerationSpec

GEN = GenerationSpec(max_new_tokens=10)
Q = "What is moving in the video?"


def test_manifest_is_verified_before_anything_is_loaded(engines_fp32, tmp_path, monkeypatch):
    bad = tmp_path / "engines"
    shutil.copytree(engines_fp32, bad)
    with open(bad / "llm" / "model.onnx.data", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    opened = []
    monkeypatch.setattr("sfedge.runtime.pipeline.OrtEngine", lambda *a, **k: opened.append(a))
    with pytest.raises(ManifestError, match="does not match its sha256"):
        Pipeline(bad)
    assert opened == []
    with pytest.raises(ManifestError, match="not found"):
        Pipeline(tmp_path / "missing")


def test_unavailable_provider_is_a_clear_error(engines_fp32):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(SfedgeError, match="not available"):
        Pipeline(engines_fp32, provider="cuda")


def test_sessions_are_reused_across_questions_and_videos(pipeline_fp32, clip_path, short_clips):
    sessions = (pipeline_fp32.vision.session, pipeline_fp32.slowfast.session, pipeline_fp32.decoder.engine.session)
    kv = dict(pipeline_fp32.decoder.kv)
    first = pipeline_fp32.ask(clip_path, Q, gen=GEN)
    pipeline_fp32.ask(short_clips["mp4-3"], "Describe the scene.", gen=GEN)
    again = pipeline_fp32.ask(clip_path, Q, gen=GEN)
    assert first.token_ids == again.token_ids  # no state leaks from one question to the next
    assert sessions == (pipeline_fp32.vision.session, pipeline_fp32.slowfast.session, pipeline_fp32.decoder.engine.session)
    assert all(pipeline_fp32.decoder.kv[n] is v for n, v in kv.items())  # the KV buffers are allocated once


def test_result_fields_and_json(pipeline_fp32, short_clips):
    r = pipeline_fp32.ask(short_clips["mp4-7"], Q, gen=GEN)
    assert isinstance(r, AskResult)
    d = r.to_dict()
    assert set(d) == {"answer", "token_ids", "frame_indices", "num_frames_total", "num_visual_tokens",
                      "prompt_tokens", "reused_prompt_tokens", "timings_ms", "tokens_per_s", "stop_reason"}
    assert set(d["timings_ms"]) == {"decode_video", "preprocess", "vision", "slowfast", "prefill", "decode", "ttft",
                                    "total"}
    assert d["prompt_tokens"] == len(pipeline_fp32.prompt_ids(Q)) - 1 + d["num_visual_tokens"]
    assert d["frame_indices"] == [0, 1, 2, 3, 3, 4, 5] and d["num_frames_total"] == 7
    assert d["num_visual_tokens"] == 2880 + 16 * 7
    assert 1 <= len(d["token_ids"]) <= GEN.max_new_tokens
    assert d["stop_reason"] == ("max_new_tokens" if len(d["token_ids"]) == GEN.max_new_tokens else "eos")
    mc = pipeline_fp32.ask(short_clips["mp4-7"], Q, ["yes", "no"], gen=GEN).to_dict()
    assert "choice" in mc


def test_stream_yields_the_answer_as_it_is_made(pipeline_fp32, short_clips):
    pieces = list(pipeline_fp32.stream(short_clips["dir-5"], Q, gen=GEN))
    result = pipeline_fp32.last_result
    assert len(pieces) > 1 and "".join(pieces).strip() == result.answer
    seen = []
    assert pipeline_fp32.ask(short_clips["dir-5"], Q, gen=GEN, on_token=seen.append).answer == result.answer
    assert seen == pieces


def test_stream_yields_before_generation_has_finished(pipeline_fp32, short_clips):
    """The first piece arrives while the LLM is still mid-answer: at that moment the decoder has made
    fewer tokens than the answer ends with, and it makes no more until the consumer asks (a lazy
    generator, no background thread finishing the answer). Observable: `decoder.length`, the tokens
    in the KV cache; it grows by one per decode step, and the last token needs no decode step."""
    n = 16
    gen = GenerationSpec(max_new_tokens=n, ignore_eos=True)  # cannot stop early
    dec = pipeline_fp32.decoder
    before = getattr(pipeline_fp32, "last_result", None)
    it = pipeline_fp32.stream(short_clips["dir-5"], Q, gen=gen)
    first = next(it)
    length_at_first = dec.length
    assert first and getattr(pipeline_fp32, "last_result", None) is before  # no result yet
    time.sleep(0.2)
    assert dec.length == length_at_first  # nothing is generated behind the consumer's back
    rest = list(it)
    result = pipeline_fp32.last_result
    assert result is not before and len(result.token_ids) == n and result.stop_reason == "max_new_tokens"
    assert "".join([first, *rest]).strip() == result.answer
    prompt = len(pipeline_fp32.prompt_ids(Q)) - 1 + result.num_visual_tokens  # image token -> visual tokens
    assert dec.length == prompt + n - 1  # prefill, then one decode step per token but the last
    made_at_first = length_at_first - prompt + 1  # tokens made when the first piece arrived
    assert 1 <= made_at_first < n, (made_at_first, n)
    # the first piece is text of the tokens made by then
    assert pipeline_fp32.tokenizer.decode(result.token_ids[:made_at_first]).startswith(first.strip())


def test_reopening_verified_engines_does_not_rehash(engines_fp32, monkeypatch):
    """Pipeline() verifies every file's sha256 once; a later open trusts the stamp for files whose
    stat is unchanged (see test_manifest.py), so `sfedge ask` does not re-read gigabytes each time."""
    import sfedge.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "_now_ns", lambda: time.time_ns() + 60 * 10**9)  # files settled
    hashed = []
    real = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", lambda path, *a, **k: hashed.append(path) or real(path, *a, **k))
    manifest_module.load_manifest(engines_fp32, trust_stamps=False)  # full verification, stamp written
    assert len(hashed) == len(manifest_module.load_manifest(engines_fp32, verify_files=False)["files"])
    hashed.clear()
    Pipeline(engines_fp32)
    assert hashed == []


def test_sampling_is_seeded(pipeline_fp32, short_clips):
    video = short_clips["mp4-3"]
    spec = GenerationSpec(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=3)
    a, b = (pipeline_fp32.ask(video, Q, gen=spec).token_ids for _ in range(2))
    c = pipeline_fp32.ask(video, Q, gen=GenerationSpec(max_new_tokens=10, temperature=1.0, seed=4)).token_ids
    greedy = pipeline_fp32.ask(video, Q, gen=GEN).token_ids
    assert a == b and (a != greedy or c != greedy)


def test_max_new_tokens_and_eos(pipeline_fp32, short_clips):
    video = short_clips["mp4-3"]
    assert len(pipeline_fp32.ask(video, Q, gen=GenerationSpec(max_new_tokens=1)).token_ids) == 1
    embeds = prompt_embeds(pipeline_fp32, video, Q)
    free = list(generate(pipeline_fp32.decoder, embeds, GenerationSpec(max_new_tokens=6), eos_token_ids=()))
    stop = set(free[2:3])  # pretend the third token is EOS: generation ends before it
    assert list(generate(pipeline_fp32.decoder, embeds, GenerationSpec(max_new_tokens=6), stop)) == free[:2]
    ignored = GenerationSpec(max_new_tokens=6, ignore_eos=True)
    assert list(generate(pipeline_fp32.decoder, embeds, ignored, stop)) == free


def test_chunked_prefill_and_host_greedy_give_the_same_tokens(engines_fp32, pipeline_fp32, short_clips):
    """Chunked prefill (shared KV buffer extended by several positions at a time) and the host
    sampling path at temperature -> 0 agree with one-shot prefill + device greedy step."""
    video = short_clips["mp4-12"]
    want = pipeline_fp32.ask(video, Q, gen=GEN, record_logits=True)
    chunked = Pipeline(engines_fp32, prefill_chunk=700).ask(video, Q, gen=GEN, record_logits=True)
    assert chunked.token_ids == want.token_ids
    np.testing.assert_allclose(chunked.first_logits, want.first_logits, rtol=0, atol=1e-4 * np.abs(want.first_logits).max())
    cold = GenerationSpec(max_new_tokens=10, temperature=1e-6, seed=0)  # sampling path, effectively greedy
    assert pipeline_fp32.ask(video, Q, gen=cold).token_ids == want.token_ids


def test_prompt_too_long_for_the_engines(pipeline_fp32):
    from sfedge.runtime.generate import prefill

    dec = pipeline_fp32.decoder
    with pytest.raises(SfedgeError, match="context of"):
        prefill(dec, np.zeros((1, dec.max_length + 1, dec.table.shape[1]), np.float32))


def prompt_embeds(pipe, video, question):
    """The spliced prompt embeddings [1, L, D] of a question about a video, stage by stage."""
    from sfedge.runtime.video import load_video

    frames = load_video(video, pipe.spec.sampling.num_frames).frames
    return pipe.answerer.splice(pipe.prompt_ids(question), pipe.answerer.pool(pipe.encoder.encode(frames)))


@pytest.mark.parametrize("text,want", [("a|b", ["a", "b"]), (" yes | no | maybe ", ["yes", "no", "maybe"])])
def test_parse_options(text, want):
    assert parse_options(text) == want


@pytest.mark.parametrize("text", ["only one", "a||b", "|", "|".join("x" * 27)])
def test_parse_options_rejects(text):
    with pytest.raises(SfedgeError):
        parse_options(text)


def test_time_the_caller_spends_between_pieces_is_not_counted(pipeline_fp32, short_clips):
    """A consumer that sleeps 30 ms per piece: decode and total exclude those sleeps."""
    gen = GenerationSpec(max_new_tokens=8, ignore_eos=True)
    start, pieces = time.perf_counter(), 0
    for _ in pipeline_fp32.stream(short_clips["dir-5"], Q, gen=gen):
        pieces += 1
        time.sleep(0.03)
    wall = (time.perf_counter() - start) * 1e3
    t = pipeline_fp32.last_result.timings_ms
    slept = 30.0 * pieces
    assert pieces >= 2 and t["total"] <= wall - slept + 5, (t, wall, slept)
    assert t["decode"] < slept  # 7 tiny decode steps take a few ms, the sleeps far more
