"""Issue 15 item 3, the frames' part: the vision graph takes uint8 NHWC frames and normalises them
itself (manifest schema 2); engines of schema 1 are refused by every command that loads engines.

The uint8 graph's features are compared with the old float-input graph (the same tower exported
with float32 NCHW pixels, fed the host's SPEC 2 normalisation): measured bit-identical on ONNX
Runtime's CPU provider, so the test asserts equality at fp32 and fp16. If a backend ever reorders
the normalisation's rounding, this is the test that says by how much."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from sfedge.cli import main
from sfedge.manifest import MANIFEST_NAME, SCHEMA_VERSION, load_manifest
from sfedge.runtime.preprocess import normalise, preprocess, resize_frames


def _float_input_graph(reference, out_dir, dtype):
    """The pre-schema-2 vision graph: float32 normalised pixels [T,3,336,336]."""
    from sfedge.export.graphs import export_onnx
    from sfedge.export.registry import ComponentSpec, IOSpec
    from sfedge.export.vision import build_vision

    d = reference.model.config.text_config.hidden_size
    out = "float16" if dtype == torch.float16 else "float32"
    spec = ComponentSpec("vision", "vision_float.onnx",
                         (IOSpec("pixel_values", "float32", ("T", 3, 336, 336), {"T": (1, 64)}),),
                         (IOSpec("features", out, ("T", 576, d), {"T": (1, 64)}),))
    for part in (reference.model.model.vision_tower, reference.model.model.multi_modal_projector):
        part.cpu()
    return export_onnx(build_vision(reference.model, dtype), torch.randn(2, 3, 336, 336), spec, out_dir)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_uint8_graph_equals_the_float_input_graph(precision, reference_llama, tmp_path):
    import onnxruntime as ort

    from sfedge.export.vision import export_vision

    dtype = torch.float16 if precision == "fp16" else torch.float32
    new, _ = export_vision(reference_llama.model, 64, tmp_path, dtype)
    old = _float_input_graph(reference_llama, tmp_path, dtype)
    new_s, old_s = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (new, old))
    rng = np.random.default_rng(0)
    for t in (1, 7):  # not the export dummy's 2
        frames = rng.integers(0, 256, (t, 336, 336, 3), dtype=np.uint8)  # every byte value in every channel
        got = new_s.run(None, {"frames": frames})[0]
        want = old_s.run(None, {"pixel_values": normalise(frames)})[0]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)  # measured: 0 ulp (same float32 ops in the same order)


def test_in_graph_normalisation_is_spec_preprocessing_bit_for_bit(tmp_path):
    """The normalisation alone, every byte value in every channel, against the host's SPEC 2 path
    (`preprocess` = resize + `normalise`)."""
    import onnxruntime as ort

    from sfedge.export.graphs import export_onnx
    from sfedge.export.registry import ComponentSpec, IOSpec
    from sfedge.export.vision import FrameNormalisation
    from sfedge.spec import CLIP_MEAN, CLIP_STD, PreprocessSpec

    frames = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, -1)[None]  # [1,16,16,3]
    spec = ComponentSpec("norm", "norm.onnx", (IOSpec("frames", "uint8", ("T", 16, 16, 3), {"T": (1, 4)}),),
                         (IOSpec("pixels", "float32", ("T", 3, 16, 16), {"T": (1, 4)}),))
    path = export_onnx(FrameNormalisation(CLIP_MEAN, CLIP_STD), torch.from_numpy(frames), spec, tmp_path)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"frames": frames})[0]
    small = PreprocessSpec(size=16)
    np.testing.assert_array_equal(got, normalise(frames, small))
    np.testing.assert_array_equal(got, preprocess(list(frames), small, workers=1))  # a 16x16 resize to 16x16 is the identity
    assert np.array_equal(resize_frames(list(frames), small, workers=1), frames)


def test_encoder_feeds_uint8_frames(pipeline_fp32, short_clips):
    """The runtime's vision input is the resized uint8 frames, nothing normalised on the host."""
    from sfedge.runtime.video import load_video

    enc = pipeline_fp32.encoder
    info = enc.vision.inputs[enc._input]
    assert (info.dtype, info.shape[1:]) == (np.uint8, (336, 336, 3)) and enc.upload == "host"
    clip = load_video(short_clips["mp4-7"], 4)
    seen = []
    real = enc.vision.infer
    enc.vision.infer = lambda feeds, **kw: (seen.append(feeds), real(feeds, **kw))[1]
    try:
        features = enc.encode(clip.frames)
    finally:
        enc.vision.infer = real
    (fed,) = seen[0].values()
    assert fed.dtype == np.uint8 and np.array_equal(fed, resize_frames(clip.frames))
    assert np.asarray(features).shape[:2] == (len(clip.frames), 576)


def _schema1_copy(engines, tmp_path):
    """A copy of the engines whose manifest says schema_version 1 (an export by an older sfedge)."""
    old = tmp_path / "old-engines"
    shutil.copytree(engines, old)
    m = json.loads((old / MANIFEST_NAME).read_text())
    m["schema_version"] = 1
    (old / MANIFEST_NAME).write_text(json.dumps(m))
    return old


COMMANDS = {  # every command that loads engines, with otherwise valid arguments
    "ask": lambda e, v: ["ask", e, v, "What?"],
    "verify": lambda e, v: ["verify", e, "--model", "tiny", "--video", v],
    "bench": lambda e, v: ["bench", e, "--video", v, "--runs", "1", "--warmup", "0"],
    "watch": lambda e, v: ["watch", e, "--source", v],
    "serve": lambda e, v: ["serve", e],
    "build": lambda e, v: ["build", e],
    "plan": lambda e, v: ["plan", "--engines", e, "--target", "orin-nano-8gb"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_schema_1_engines_are_refused_in_one_line(command, engines_fp32, short_clips, tmp_path, capsys):
    old = _schema1_copy(engines_fp32, tmp_path)
    video = str(short_clips["mp4-7"])
    assert SCHEMA_VERSION == 2
    assert main(COMMANDS[command](str(old), video)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schema_version 1" in err[0], err
    ckpt = load_manifest(engines_fp32, verify_files=False)["source"]["checkpoint"]
    context = load_manifest(engines_fp32, verify_files=False)["context"]["max_context"]
    assert f"`sfedge export {ckpt} {old} --precision fp32 --device cpu --max-frames 64 --max-context {context} --force`" in err[0]


def test_schema_refusal_from_a_real_process(engines_fp32, short_clips, tmp_path):
    old = _schema1_copy(engines_fp32, tmp_path)
    video = str(short_clips["mp4-7"])
    run = subprocess.run([sys.executable, "-m", "sfedge", "ask", str(old), video, "What?"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "re-export them with this sfedge" in run.stderr
    with pytest.raises(Exception, match="older sfedge"):
        load_manifest(old, verify_files=False)


def test_pinned_upload_through_onnxruntimes_allocators(monkeypatch):
    """No GPU here: ONNX Runtime's calls are recorded by a fake module. Proves the CUDA EP's
    HOST_ACCESSIBLE memory info is what the staging buffer is allocated with, that buffers are made
    once per shape, and that each call copies numpy -> pinned -> device (the device value is bound)."""
    import types

    import sfedge.runtime.upload as upload

    calls = []

    class Value:
        def __init__(self, shape, dtype, where):
            self.shape, self.dtype, self.where, self.data = tuple(shape), dtype, where, None
            calls.append(("alloc", where, self.shape))

        def update_inplace(self, src):
            self.data = np.array(src.data if isinstance(src, Value) else src)
            calls.append(("copy", getattr(src, "where", "numpy"), self.where))

    def alloc(shape, dtype, device_type="cpu", device_id=0, memory_info=None):
        return Value(shape, dtype, memory_info or f"{device_type}:{device_id}")

    cuda = types.SimpleNamespace(ep_name="CUDAExecutionProvider",
                                 memory_info=lambda kind: "pinned" if kind == "HOST_ACCESSIBLE" else "device")
    fake = types.SimpleNamespace(get_ep_devices=lambda: [types.SimpleNamespace(ep_name="CPUExecutionProvider"), cuda],
                                 OrtDeviceMemoryType=types.SimpleNamespace(HOST_ACCESSIBLE="HOST_ACCESSIBLE"),
                                 OrtValue=types.SimpleNamespace(ortvalue_from_shape_and_type=alloc))
    monkeypatch.setattr(upload, "ort", fake)
    up = upload.PinnedUpload.create()
    assert up is not None and up.memory_info == "pinned"
    frames = np.random.default_rng(0).integers(0, 256, (2, 336, 336, 3), dtype=np.uint8)
    dev = up(frames)
    assert dev.where == "cuda:0" and np.array_equal(dev.data, frames)
    assert up(frames[::-1]) is dev and np.array_equal(dev.data, frames[::-1])  # same buffers, new content
    up(frames[:1])  # another frame count: new buffers
    assert [c for c in calls if c[0] == "alloc"] == [("alloc", "pinned", (2, 336, 336, 3)), ("alloc", "cuda:0", (2, 336, 336, 3)),
                                                     ("alloc", "pinned", (1, 336, 336, 3)), ("alloc", "cuda:0", (1, 336, 336, 3))]
    assert [c for c in calls if c[0] == "copy"] == [("copy", "numpy", "pinned"), ("copy", "pinned", "cuda:0")] * 3
    # an onnxruntime without the EP-device API, or without a CUDA EP device: pageable copies (None)
    monkeypatch.setattr(upload, "ort", types.SimpleNamespace())
    assert upload.PinnedUpload.create() is None
    monkeypatch.setattr(upload, "ort", types.SimpleNamespace(get_ep_devices=lambda: [], OrtDeviceMemoryType=fake.OrtDeviceMemoryType))
    assert upload.PinnedUpload.create() is None


def test_encoder_refuses_a_float_input_vision_engine():
    """An engine whose vision input is still float32 pixels (a schema-1 graph under a hand-edited
    manifest) is refused when the encoder opens, in one line."""
    import types

    from sfedge.errors import SfedgeError
    from sfedge.runtime.encoder import Encoder
    from sfedge.runtime.engines import TensorInfo
    from sfedge.spec import PreprocessSpec

    old = types.SimpleNamespace(inputs={"pixel_values": TensorInfo("pixel_values", np.float32, (None, 3, 336, 336))},
                                device="cpu")
    with pytest.raises(SfedgeError, match=r"float32 \[None, 3, 336, 336\], not uint8 .*re-export") as e:
        Encoder(old, PreprocessSpec())
    assert "\n" not in str(e.value)
