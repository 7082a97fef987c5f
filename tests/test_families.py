"""Model families (sfedge/families) and the one splice design: the registry, the manifest's
"family", prompts with several visual blocks spliced on the device (bit for bit the host
concatenation), the prefix cache over several blocks, and the pooled visual tokens never coming
back to the host on the prefill path."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import onnxruntime as ort
import pytest

import sfedge.runtime.answer as answer_module
from sfedge.errors import SfedgeError
from sfedge.export.step import export_splice
from sfedge.families import (FAMILIES, VisualBlock, family_for_checkpoint, family_for_model_type, family_of_manifest,
                             get_family)
from sfedge.families import llava_next
from sfedge.runtime.pipeline import Pipeline
from sfedge.runtime.splice import SplicePlan, Splicer, segments_from_marked
from sfedge.runtime.video import load_video
from sfedge.spec import GenerationSpec

GEN = GenerationSpec(max_new_tokens=8)
Q1, Q2 = "What is moving in the video?", "Which direction does the red circle go?"


# --- the registry -------------------------------------------------------------------------------


def test_the_family_is_found_by_model_type_and_by_name(tiny_dir):
    assert family_for_model_type("llava_next") is get_family("llava_next") is FAMILIES["llava_next"]
    assert family_for_checkpoint(tiny_dir).name == "llava_next"
    assert family_of_manifest({}).name == "llava_next"  # a manifest from before families
    assert set(llava_next.GRAPHS) >= {"vision", "slowfast", "llm", "greedy_step", "splice"}


def test_an_unknown_model_type_is_one_line_naming_the_supported_ones(tmp_path):
    with pytest.raises(SfedgeError) as e:
        family_for_model_type("qwen2_vl")
    assert str(e.value) == ("model_type 'qwen2_vl' is not supported; supported: llava_next (llava_next), "
                            "video_llama_3 (video_llama_3)")
    with pytest.raises(SfedgeError, match="unknown model family 'nope'; this sfedge knows llava_next, video_llama_3"):
        get_family("nope")
    from sfedge.export import export_model

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(SfedgeError, match="model_type 'qwen2_vl' is not supported"):
        export_model(tmp_path / "ckpt", tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing written


def test_the_manifest_records_the_family_and_the_splice_graph(engines_fp32, pipeline_fp32):
    manifest = json.loads((engines_fp32 / "manifest.json").read_text())
    assert manifest["family"] == "llava_next"
    assert manifest["components"]["splice"]["path"] == "splice.onnx" and "splice.onnx" in manifest["files"]
    assert pipeline_fp32.family is FAMILIES["llava_next"]


# --- the splice: segments, several blocks, on the device ----------------------------------------


def test_segments_from_marked_ids():
    a, b = VisualBlock(b"a", 2), VisualBlock(b"b", 1)
    assert segments_from_marked([1, 9, 2, 3, 9], 9, [a, b]) == [[1], a, [2, 3], b]
    assert segments_from_marked([9, 9, 4], 9, [a, b]) == [a, b, [4]]
    with pytest.raises(SfedgeError, match="must hold 2 image tokens .* found 1"):
        segments_from_marked([1, 9], 9, [a, b])


@pytest.mark.parametrize("visual_dtype,table_dtype", [("float32", "float32"), ("float16", "float32"),
                                                      ("float32", "float16"), ("float16", "float16")])
def test_three_blocks_with_text_between_equal_the_numpy_construction(tmp_path, visual_dtype, table_dtype):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 8)).astype(table_dtype)
    visual = (rng.normal(size=(9, 8)) * 3).astype(visual_dtype)
    blocks = [VisualBlock(b"a", 2), VisualBlock(b"b", 3), VisualBlock(b"c", 4)]
    plan = SplicePlan.build([[1, 5, 7], blocks[0], [9], blocks[1], [11, 12], blocks[2], [3]])
    assert plan.items == [1, 5, 7, (b"a", 0), (b"a", 1), 9, (b"b", 0), (b"b", 1), (b"b", 2), 11, 12,
                          *((b"c", i) for i in range(4)), 3]
    assert (plan.num_visual, plan.num_text, plan.visual_end) == (9, 7, 15)
    v = visual.astype(table_dtype)
    want = np.concatenate([table[[1, 5, 7]], v[0:2], table[[9]], v[2:5], table[[11, 12]], v[5:9], table[[3]]])[None]
    splicer = Splicer(tmp_path / export_splice(tmp_path, visual_dtype, table_dtype)["path"],
                      ort.OrtValue.ortvalue_from_numpy(table), "cpu")
    on_device = ort.OrtValue.ortvalue_from_numpy(visual)

    class DeviceTensor:  # as TrtEngine hands out: a pointer, a shape, a dtype (read in place on its device)
        ptr, shape, dtype, engine = visual.ctypes.data, visual.shape, visual.dtype, types.SimpleNamespace(device="cpu")

    for start in range(len(plan.items)):  # every prefix the cache may hold already
        for given in (visual, on_device, DeviceTensor()):
            got = splicer.embeds(plan, given, start)
            assert isinstance(got, ort.OrtValue)
            np.testing.assert_array_equal(got.numpy(), want[:, start:])


def _three_block_family():
    """llava_next with the window split into three blocks and text between them: exercises several
    insertion points on the real engines (the pooled tokens are the blocks' tokens concatenated)."""

    def layout(spec, visual):
        n = spec.slowfast.num_tokens(visual.num_frames)
        return [VisualBlock(visual.key + b"0", n // 3), VisualBlock(visual.key + b"1", n // 3),
                VisualBlock(visual.key + b"2", n - 2 * (n // 3))]

    def prompt_ids(ctx, question, options=None, blocks=None):
        ids = llava_next.prompt_ids(ctx, question, options, blocks)
        at = ids.index(ctx.image_token_id)
        between = ctx.encode("then")[-1:]
        return [*ids[:at], ctx.image_token_id, *between, ctx.image_token_id, *between, *between,
                ctx.image_token_id, *ids[at + 1:]]

    return dataclasses.replace(llava_next.LLAVA_NEXT, layout=layout, prompt_ids=prompt_ids)


def test_a_second_question_reuses_every_visual_block(engines_fp32, clip_path):
    pipe = Pipeline(engines_fp32, prefix_cache_mb=0)
    pipe.answerer.family = _three_block_family()
    first = pipe.ask(clip_path, Q1, gen=GEN)
    assert first.reused_prompt_tokens == 0
    second = pipe.ask(clip_path, Q2, gen=GEN)
    frames = load_video(clip_path, pipe.spec.sampling.num_frames).frames
    plan = pipe.answerer.plan(pipe.visual(frames), Q2)
    blocks = pipe.answerer.family.layout(pipe.spec, pipe.visual(frames))
    assert [b.n for b in blocks] == [1226, 1226, 1228] and plan.num_visual == second.num_visual_tokens == 3680
    assert plan.positions[1226] == plan.positions[1225] + 2  # text between the blocks
    assert second.reused_prompt_tokens >= plan.visual_end  # all three blocks and the text between them
    assert second.timings_ms["vision"] == 0 and second.timings_ms["slowfast"] == 0
    cold = Pipeline(engines_fp32, prefix_reuse=False)
    cold.answerer.family = _three_block_family()
    assert second.token_ids == cold.ask(clip_path, Q2, gen=GEN).token_ids


def test_pooled_tokens_stay_on_the_device_and_prefill_gets_the_old_concatenation(engines_fp32, clip_path,
                                                                                 monkeypatch):
    pipe = Pipeline(engines_fp32, prefix_cache_mb=0)
    ans, slowfast = pipe.answerer, pipe.answerer.slowfast
    frames = load_video(clip_path, pipe.spec.sampling.num_frames).frames
    (pooled,) = slowfast.infer({ans._input: pipe.encoder.encode(frames)}).values()  # host copy, for the expected value
    ids = pipe.prompt_ids(Q1)
    at, table = ids.index(ans.image_token_id), pipe.decoder.table
    want = np.concatenate([table[ids[:at]], pooled.astype(table.dtype), table[ids[at + 1:]]])[None]  # today's splice

    handed_out, asked_host, converted, prefilled = [], [], [], []

    class Recording:  # the slowfast engine, recording what it hands out
        inputs, outputs = slowfast.inputs, slowfast.outputs

        def infer(self, feeds, *, on_device=False):
            asked_host.append(not on_device)
            out = slowfast.infer(feeds, on_device=on_device)
            handed_out.extend(v.data_ptr() for v in out.values() if isinstance(v, ort.OrtValue))
            return out

    host_copy = ort.OrtValue.numpy

    def recording_numpy(value):
        if value.data_ptr() in handed_out:
            converted.append(value.shape())
        return host_copy(value)

    def recording_generate(dec, embeds, *args, **kw):
        prefilled.append((type(embeds), host_copy(embeds).copy()))
        return generate(dec, embeds, *args, **kw)

    generate = answer_module.generate
    ans.slowfast = Recording()
    monkeypatch.setattr(ort.OrtValue, "numpy", recording_numpy)
    monkeypatch.setattr(answer_module, "generate", recording_generate)
    result = pipe.ask(clip_path, Q1, gen=GEN)
    monkeypatch.undo()
    assert asked_host == [False] and handed_out and not converted  # pooled on the device, never read back
    ((kind, embeds),) = prefilled
    assert kind is ort.OrtValue  # the splice graph's output, fed to prefill where it is
    np.testing.assert_array_equal(embeds, want)  # bit for bit today's host concatenation
    assert result.num_visual_tokens == len(pooled)


def test_verify_and_bench_refuse_a_checkpoint_of_another_family(tiny_dir, tiny_vl3_dir):
    from sfedge.families import check_same_family, get_family

    check_same_family(tiny_dir, get_family("llava_next"))  # its own family: no error
    with pytest.raises(SfedgeError, match="is a video_llama_3 model but the engines are llava_next"):
        check_same_family(tiny_vl3_dir, get_family("llava_next"))
    with pytest.raises(SfedgeError, match="is a llava_next model but the engines are video_llama_3"):
        check_same_family(tiny_dir, get_family("video_llama_3"))
    with pytest.raises(SfedgeError, match="unknown model family"):
        family_of_manifest({"family": ["not", "a", "name"]})  # one line, not a TypeError


def test_videollama3_export_refuses_an_unsupported_checkpoint_before_any_work(tiny_vl3_dir, tmp_path):
    import shutil

    from sfedge.export.videollama3 import check_supported

    check_supported(tiny_vl3_dir)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_vl3_dir, ckpt)
    (ckpt / "chat_template.jinja").unlink()
    with pytest.raises(SfedgeError, match="no chat template"):
        check_supported(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vision_config"]["patch_size"] = 16
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SfedgeError, match="patch size 16"):
        check_supported(ckpt)
