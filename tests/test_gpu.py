"""CUDA correctness (pytest -m gpu): need a CUDA GPU and onnxruntime-gpu; skipped elsewhere, with the reason.

On the GPU plan's machine (scripts/gpu_plan.py, step gpu-tests) the tiny fp32 engines come from the carried
folder (SFEDGE_GPU_CARRY: exported on the CPU host, no export there); elsewhere from the session fixture.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sfedge.spec import GenerationSpec

HAVE_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAVE_CUDA_EP, reason=f"needs a CUDA GPU and onnxruntime-gpu: this onnxruntime "
                       f"{ort.__version__} has only {', '.join(ort.get_available_providers())}"),
]
GEN = GenerationSpec(max_new_tokens=16, ignore_eos=True)
Q = "What is happening in the video?"


@pytest.fixture(scope="module")
def tiny(request, tmp_path_factory):
    """(engines, frame directory) of the tiny fp32 model."""
    carry = os.environ.get("SFEDGE_GPU_CARRY")
    if carry and (Path(carry) / "tiny-fp32" / "manifest.json").is_file():
        return Path(carry) / "tiny-fp32", Path(carry) / "clip"
    from sfedge.synthetic import make_image_dir

    return request.getfixturevalue("engines_fp32"), make_image_dir(tmp_path_factory.mktemp("gpu") / "clip", 12)


@pytest.fixture(scope="module")
def cuda_pipeline(tiny):
    from sfedge.runtime.pipeline import Pipeline

    return Pipeline(tiny[0], provider="cuda")


def test_cuda_tokens_match_cpu(tiny, cuda_pipeline):
    from sfedge.runtime.pipeline import Pipeline

    engines, clip = tiny
    cpu = Pipeline(engines, provider="cpu").ask(clip, Q, gen=GEN, record_logits=True)
    gpu = cuda_pipeline.ask(clip, Q, gen=GEN, record_logits=True)
    assert gpu.token_ids == cpu.token_ids
    a, b = np.asarray(gpu.first_logits, np.float64), np.asarray(cpu.first_logits, np.float64)
    assert np.max(np.abs(a - b)) <= 1e-4 * max(1.0, np.max(np.abs(b)))  # fp32 on both, no TF32


def test_cuda_sessions_use_sfedge_options(cuda_pipeline):
    for eng in (cuda_pipeline.encoder.vision, cuda_pipeline.answerer.slowfast, cuda_pipeline.answerer.decoder.engine):
        sess = eng.session
        assert sess.get_providers()[0] == "CUDAExecutionProvider"
        opts = sess.get_provider_options()["CUDAExecutionProvider"]
        assert opts["use_tf32"] == "0" and opts["cudnn_conv_algo_search"] == "HEURISTIC"
        assert sess.get_session_options().intra_op_num_threads == 1


def test_device_iobinding_chains_vision_to_slowfast_on_the_gpu(cuda_pipeline, tiny):
    from sfedge.runtime.pipeline import Pipeline

    cpu = Pipeline(tiny[0], provider="cpu")
    vision, slowfast = cuda_pipeline.encoder.vision, cuda_pipeline.answerer.slowfast
    name = next(iter(vision.inputs))
    shape = [3 if not isinstance(d, int) else d for d in vision.inputs[name].shape]
    pixels = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feats = vision.infer({name: pixels}, on_device=True)
    assert all(v.device_name().lower() == "cuda" for v in feats.values())
    (sf_in,) = slowfast.inputs
    gpu = slowfast.infer({sf_in: next(iter(feats.values()))})
    host = cpu.answerer.slowfast.infer({sf_in: next(iter(cpu.encoder.vision.infer({name: pixels}).values()))})
    for k in host:
        np.testing.assert_allclose(gpu[k], host[k], rtol=1e-4, atol=1e-5)


def captured_decoder(root, like):
    """A Decoder over the LLM of `root` on CUDA with CUDA graphs (decode and greedy steps captured), set up as
    the Decoder `like`."""
    from sfedge.manifest import load_manifest
    from sfedge.runtime.engines import OrtEngine
    from sfedge.runtime.generate import Decoder

    comps = load_manifest(root)["components"]
    engine = OrtEngine(Path(root) / comps["llm"]["path"], "cuda", cuda_graph=True)
    _, heads, _, head_dim = like.kv[like.past_names[0]].shape()
    return Decoder(engine, like.table, Path(root) / comps["greedy_step"]["path"], kv_names=list(like.present_of.items()),
                   num_kv_heads=heads, head_dim=head_dim, max_length=like.max_length, shared=like.shared)


def test_captured_decode_loop_gives_the_cpu_tokens(tiny):
    """The CUDA-graph decode loop (captured after ONNX Runtime's warm-up runs, then replayed; prefill
    uncaptured) against the CPU's static loop: prompts of other lengths reuse the one captured graph (the
    mask's content is all that changes), and so do a kept prefix and a restored snapshot."""
    from sfedge.runtime.generate import generate
    from sfedge.runtime.pipeline import Pipeline

    cpu = Pipeline(tiny[0], provider="cpu").decoder
    gpu = captured_decoder(tiny[0], cpu)
    assert gpu.cuda_graph and gpu.engine.session.get_provider_options()["CUDAExecutionProvider"]["enable_cuda_graph"] == "1"
    rng = np.random.default_rng(0)
    gen = GenerationSpec(max_new_tokens=24, ignore_eos=True)
    for n in (40, 25, 61):
        embeds = cpu.table[rng.integers(3, cpu.table.shape[0], n)][None]
        want = list(generate(cpu, embeds, gen, ()))
        assert list(generate(gpu, embeds, gen, ())) == want, n
        assert list(generate(gpu, embeds, gen, (), prefill_chunk=16)) == want, n
        ids = list(range(n))
        list(generate(gpu, embeds[:, :20], GenerationSpec(max_new_tokens=2), (), items=ids[:20]))
        assert list(generate(gpu, embeds[:, 20:], gen, (), start=20)) == want, n  # kept prefix
        snap = gpu.snapshot(20)
        list(generate(gpu, embeds[:, 5:30], GenerationSpec(max_new_tokens=3), ()))
        gpu.restore(snap, ids[:20])
        assert list(generate(gpu, embeds[:, 20:], gen, (), start=20)) == want, n  # restored snapshot


def test_fp32_matmul_without_tf32(tmp_path):
    """A K=4096 fp32 MatMul matches float64 to ~1e-6 (TF32's 10-bit mantissa would leave ~1e-3)."""
    from onnx import TensorProto, helper

    from sfedge.runtime.engines import OrtEngine

    a_info = helper.make_tensor_value_info("a", TensorProto.FLOAT, [256, 4096])
    b_info = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4096, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "mm",
                                                [a_info, b_info], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "mm.onnx"
    path.write_bytes(model.SerializeToString())
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 4096)).astype(np.float32), rng.standard_normal((4096, 256)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    got = OrtEngine(path, "cuda").infer({"a": a, "b": b})["y"]
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert rel < 1e-5, f"relative error {rel:.1e}: TF32 in use?"


def test_cuda_uploads_uint8_frames_through_pinned_memory(tiny, cuda_pipeline):
    """The vision engine takes uint8 frames (schema 2); on CUDA they go up through ONNX Runtime's
    host-accessible (pinned) allocator where this onnxruntime-gpu offers one, and the features equal
    the CPU provider's within fp32 (no TF32) rounding either way."""
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.runtime.upload import pinned_memory_info
    from sfedge.runtime.video import load_video

    enc = cuda_pipeline.encoder
    assert enc.upload == ("pinned" if pinned_memory_info() is not None else "pageable")
    frames = load_video(tiny[1], 8).frames
    gpu = np.asarray(enc.encode(frames))
    cpu = np.asarray(Pipeline(tiny[0], provider="cpu").encoder.encode(frames))
    assert np.max(np.abs(gpu - cpu)) <= 1e-4 * max(1.0, float(np.max(np.abs(cpu))))
    if enc.upload == "pinned":
        assert enc._pinned.device.device_name().lower() == "cuda" and enc._pinned.device.shape() == [8, 336, 336, 3]
