"""`sfedge build` and TrtEngine around the TensorRT library, with FAKE `tensorrt` and `cudart`
modules: nothing here runs real TensorRT or CUDA, and nothing here says the code works on a GPU.

What the fakes prove: the API calls made (names, arguments, order), the profile shapes, plans.json
and the manifest's re-hash, the one-line errors, and TrtEngine's shape / buffer / copy logic
(the fake cudart keeps "device" memory in bytearrays and refuses copies past an allocation's end).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import sys
import types

import numpy as np
import pytest

from sfedge.errors import ManifestError, SfedgeError
from sfedge.export.tensorrt import build_plans, parse_components, profile_shapes
from sfedge.manifest import load_manifest, write_manifest
from sfedge.runtime.trt_engine import DeviceTensor, TrtEngine, native_plan

VISION_IO = {
    "path": "vision.onnx", "precision": "fp32", "opset": 18,
    "inputs": [{"name": "frames", "dtype": "uint8", "shape": ["T", 336, 336, 3], "dynamic": {"T": [1, 64]},
                "layout": "NHWC"}],
    "outputs": [{"name": "features", "dtype": "float32", "shape": ["T", 576, 64], "dynamic": {"T": [1, 64]}}],
}
SLOWFAST_IO = {
    "path": "slowfast.onnx", "precision": "fp32", "opset": 18,
    "inputs": [{"name": "features", "dtype": "float32", "shape": ["T", 576, 64], "dynamic": {"T": [1, 64]}}],
    "outputs": [{"name": "visual_tokens", "dtype": "float32", "shape": ["N", 64], "dynamic": {"N": [2896, 3904]}}],
}
# what the fake ONNX parser finds: (name, shape, TensorRT DataType name)
NETWORK_INPUTS = {"vision.onnx": [("frames", (-1, 336, 336, 3), "UINT8")], "slowfast.onnx": [("features", (-1, 576, 64), "FLOAT")]}
ORT_TO_TRT = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(uint8)": "UINT8", "tensor(int64)": "INT64"}
TRT_TO_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "UINT8": np.uint8}


def _np(ort_type: str):
    """An ONNX Runtime type string -> the numpy dtype a TensorRT plan of it would bind."""
    return TRT_TO_NP[ORT_TO_TRT[ort_type]]


# --- fake tensorrt (builder side) -------------------------------------------------------------

def fake_tensorrt(calls: list, *, version="10.3.0", parse_errors=None, fp16_flag=True, engine=None):
    """A `tensorrt` module that records every call into `calls`. parse_errors: {onnx name: [errors]}.
    engine: a FakeEngine that Runtime.deserialize_cuda_engine returns (None for a bad plan)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            calls.append(("Logger", severity))

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i][0], shape=self.inputs[i][1], dtype=self.inputs[i][2])

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile", profile))

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", [i[0] for i in network.inputs]))
            return memoryview(f"PLAN:{network.inputs[0][0]}".encode())  # IHostMemory is a buffer

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            name = path.rsplit("/", 1)[-1]
            self.errors = (parse_errors or {}).get(name, [])
            self.network.inputs = list(NETWORK_INPUTS.get(name, []))
            return not self.errors

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize_cuda_engine", bytes(data)))
            return engine(bytes(data)) if callable(engine) else engine

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "BuilderFlag.FP16"} if fp16_flag else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="MemoryPoolType.WORKSPACE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dt: TRT_TO_NP[dt]
    trt.DataType = types.SimpleNamespace(**{k: k for k in TRT_TO_NP}, INT32="INT32")
    return trt


def make_engines_dir(root, vision=VISION_IO, slowfast=SLOWFAST_IO):
    """A minimal valid engines directory (fake ONNX bytes: the fake parser never reads them)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("vision.onnx", "slowfast.onnx", "greedy_step.onnx", "splice.onnx", "embeddings.npy", "llm/model.onnx",
                 "tokenizer/tokenizer.json"):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(name.encode())
    manifest = {"precision": "fp32", "pipeline": {"sampling": {"num_frames": 50}}, "versions": {"tensorrt": None},
                "components": {"vision": vision, "slowfast": slowfast, "llm": {"path": "llm/model.onnx"},
                               "embeddings": {"path": "embeddings.npy"}, "tokenizer": {"path": "tokenizer"},
                               "greedy_step": {"path": "greedy_step.onnx"}, "splice": {"path": "splice.onnx"}}}
    write_manifest(root, manifest)
    return root


@pytest.fixture
def trt_calls(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    monkeypatch.setattr("sfedge.export.tensorrt.gpu_info", lambda: {"name": "Orin (fake)", "compute_capability": "8.7"})
    # these engines dirs hold fake ONNX bytes: the plan-vs-ONNX check has its own tests (below)
    monkeypatch.setattr("sfedge.export.tensorrt.check_plan", lambda *a, **k: {"passed": True, "skipped": "fake graphs"})
    return calls


# --- profiles -----------------------------------------------------------------------------------

def test_profile_shapes_from_manifest_ranges():
    shapes = profile_shapes(VISION_IO["inputs"], {"T": 50})
    assert shapes == {"frames": ((1, 336, 336, 3), (50, 336, 336, 3), (64, 336, 336, 3))}
    assert profile_shapes(VISION_IO["inputs"])["frames"][1] == (64, 336, 336, 3)  # opt defaults to max
    assert profile_shapes(VISION_IO["inputs"], {"T": 500})["frames"][1][0] == 64  # clamped
    assert profile_shapes([{"name": "x", "shape": [2, 3]}]) == {}  # static inputs need no profile
    with pytest.raises(SfedgeError, match="axis 'T' has no range"):
        profile_shapes([{"name": "x", "shape": ["T", 3]}])


def test_parse_components():
    assert parse_components("slowfast, vision,vision") == ("slowfast", "vision")
    with pytest.raises(SfedgeError, match="GroupQueryAttention"):
        parse_components("vision,llm")
    with pytest.raises(SfedgeError, match="unknown component 'tokenizer'"):
        parse_components("tokenizer")


# --- build_plans with the fake builder ------------------------------------------------------------

def test_build_makes_the_documented_calls(tmp_path, trt_calls):
    root = make_engines_dir(tmp_path / "e")
    build_plans(root, fp16=True, workspace_gb=1.5, progress=False)
    vision = trt_calls[trt_calls.index(("parse_from_file", str(root / "vision.onnx"))) - 2:]
    vision = vision[:vision.index(("build_serialized_network", ["frames"])) + 1]
    assert vision == [
        ("Builder",), ("create_network", 0),  # fp32 graph: default (explicit batch) network
        ("parse_from_file", str(root / "vision.onnx")),
        ("set_memory_pool_limit", "MemoryPoolType.WORKSPACE", int(1.5 * 2**30)),
        ("set_flag", "BuilderFlag.FP16"),
        ("set_shape", "frames", (1, 336, 336, 3), (50, 336, 336, 3), (64, 336, 336, 3)),  # uint8 NHWC frames
        vision[6],  # add_optimization_profile(the profile)
        ("build_serialized_network", ["frames"]),
    ]
    assert vision[6][0] == "add_optimization_profile"
    assert ("set_shape", "features", (1, 576, 64), (50, 576, 64), (64, 576, 64)) in trt_calls
    assert ("parse_from_file", str(root / "slowfast.onnx")) in trt_calls


def test_build_writes_plans_json_and_rehashes_the_manifest(tmp_path, trt_calls):
    root = make_engines_dir(tmp_path / "e")
    info = build_plans(root, opt_frames=8, progress=False)
    assert (root / "trt/vision.plan").read_bytes() == b"PLAN:frames"
    assert (root / "trt/slowfast.plan").read_bytes() == b"PLAN:features"
    assert not list((root / "trt").glob("*.partial"))
    on_disk = json.loads((root / "trt/plans.json").read_text())
    assert on_disk == info and info["tensorrt_version"] == "10.3.0"
    assert info["gpu"] == {"name": "Orin (fake)", "compute_capability": "8.7"}
    vision = info["plans"]["vision"]
    assert vision["fp16_flag"] is True and vision["strongly_typed"] is False
    assert vision["profiles"] == [{"frames": {"min": [1, 336, 336, 3], "opt": [8, 336, 336, 3],
                                              "max": [64, 336, 336, 3]}}]
    assert vision["input_dtypes"] == {"frames": "uint8"} and info["plans"]["slowfast"]["input_dtypes"] == {"features": "float32"}
    manifest = load_manifest(root)  # verification passes: every file, plans included, re-hashed
    assert manifest["tensorrt"]["plans"] == {"vision": "trt/vision.plan", "slowfast": "trt/slowfast.plan"}
    assert manifest["versions"]["tensorrt"] == "10.3.0"
    for rel in ("trt/vision.plan", "trt/slowfast.plan", "trt/plans.json", "vision.onnx"):
        assert rel in manifest["files"]
    assert manifest["files"]["trt/vision.plan"] == vision["sha256"]
    (root / "trt/vision.plan").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="trt/vision.plan does not match"):
        load_manifest(root)


def test_rebuilding_one_component_drops_the_other_plan(tmp_path, trt_calls):
    root = make_engines_dir(tmp_path / "e")
    build_plans(root, progress=False)
    build_plans(root, components=("vision",), progress=False)
    manifest = load_manifest(root)
    assert manifest["tensorrt"]["plans"] == {"vision": "trt/vision.plan"}
    assert not (root / "trt/slowfast.plan").exists()


def test_build_refuses_a_graph_whose_input_type_is_not_the_manifests(tmp_path, trt_calls, monkeypatch):
    """A float32-pixels vision graph (schema 1) under a manifest that says uint8 frames: refused."""
    monkeypatch.setitem(NETWORK_INPUTS, "vision.onnx", [("frames", (-1, 336, 336, 3), "FLOAT")])
    root = make_engines_dir(tmp_path / "e")
    with pytest.raises(SfedgeError, match="reads input frames as FLOAT, the manifest says uint8.*re-export"):
        build_plans(root, components=("vision",), progress=False)
    assert not any(c[0] == "build_serialized_network" for c in trt_calls)


def test_fp16_graph_is_strongly_typed_without_the_fp16_flag(tmp_path, trt_calls):
    root = make_engines_dir(tmp_path / "e", vision=dict(VISION_IO, precision="fp16"))
    info = build_plans(root, components=("vision",), progress=False)
    assert ("create_network", 1 << 5) in trt_calls and ("set_flag", "BuilderFlag.FP16") not in trt_calls
    assert info["plans"]["vision"]["strongly_typed"] is True


def test_no_fp16_flag(tmp_path, trt_calls):
    root = make_engines_dir(tmp_path / "e")
    info = build_plans(root, fp16=False, progress=False)
    assert not any(c[0] == "set_flag" for c in trt_calls)
    assert info["plans"]["slowfast"]["fp16_flag"] is False


def test_tensorrt_without_fp16_flag_asks_for_strong_typing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], version="11.0.0", fp16_flag=False))
    root = make_engines_dir(tmp_path / "e")
    with pytest.raises(SfedgeError, match="TensorRT 11.0.0 has no FP16 builder flag.*--no-fp16"):
        build_plans(root, progress=False)


def test_parser_error_is_one_line_and_leaves_the_dir_valid(tmp_path, monkeypatch):
    errors = ["In node 3 (importGroupQueryAttention):\n  UNSUPPORTED_NODE: No importer registered"]
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], parse_errors={"slowfast.onnx": errors}))
    root = make_engines_dir(tmp_path / "e")
    with pytest.raises(SfedgeError) as e:
        build_plans(root, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == ("TensorRT's ONNX parser rejected slowfast.onnx: In node 3 (importGroupQueryAttention): "
                   "UNSUPPORTED_NODE: No importer registered")
    assert not list((root / "trt").iterdir())  # vision's plan was built but never left behind
    assert "tensorrt" not in load_manifest(root)


def test_build_refuses_a_bad_engines_dir(tmp_path, trt_calls):
    with pytest.raises(ManifestError, match="no manifest.json"):
        build_plans(tmp_path, progress=False)


# --- the CLI --------------------------------------------------------------------------------------

def _main(monkeypatch, argv):
    from sfedge import cli

    if "build" not in cli.COMMANDS:  # until the lead registers the command
        monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + ("build",))
    return cli.main(argv)


def test_cli_without_tensorrt_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    root = make_engines_dir(tmp_path / "e")
    assert _main(monkeypatch, ["build", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sfedge build: error: TensorRT is not installed: install it on the target (JetPack 6")
    assert "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["build", "/nonexistent/engines"], "engines directory not found"),
    (["build", "{tmp}"], "no manifest.json"),
    (["build", "{e}", "--components", "llm"], "LLM is not built with TensorRT"),
    (["build", "{e}", "--workspace-gb", "0"], "--workspace-gb must be positive"),
])
def test_cli_errors(tmp_path, monkeypatch, capsys, trt_calls, argv, message):
    make_engines_dir(tmp_path / "e")
    argv = [a.format(tmp=tmp_path, e=tmp_path / "e") for a in argv]
    assert _main(monkeypatch, argv) == 2
    assert message in capsys.readouterr().err


def test_cli_json(tmp_path, monkeypatch, capsys, trt_calls):
    root = make_engines_dir(tmp_path / "e")
    assert _main(monkeypatch, ["build", str(root), "--no-fp16", "--workspace-gb", "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(info["plans"]) == {"vision", "slowfast"} and info["plans"]["vision"]["fp16_flag"] is False
    assert ("set_memory_pool_limit", "MemoryPoolType.WORKSPACE", 2**30) in trt_calls


# --- TrtEngine with a fake engine and a fake cudart -------------------------------------------------

SUCCESS = "cudaSuccess"


def install_fakes(monkeypatch, tensorrt_module, cudart) -> None:
    """The fake `tensorrt` and cuda-python (`cuda.bindings.runtime`) modules, for one test."""
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module)
    package = types.ModuleType("cuda.bindings")
    package.runtime = cudart
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", package)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)


def fake_cudart(calls: list):
    """cuda-python's runtime API over bytearrays: pointers are ints, every copy is bounds-checked."""
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.memory, addresses = {}, itertools.count(0x7F0000000000, 0x100000)
    rt.cudaError_t = types.SimpleNamespace(cudaSuccess=SUCCESS)
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")

    def cudaMalloc(n):
        ptr = next(addresses)  # never reused, so a stale pointer is caught
        rt.memory[ptr] = bytearray(n)
        calls.append(("cudaMalloc", n))
        return SUCCESS, ptr

    def cudaFree(ptr):
        del rt.memory[ptr]
        calls.append(("cudaFree", ptr))
        return (SUCCESS,)

    def cudaMemcpyAsync(dst, src, n, kind, stream):
        assert stream == "stream0"
        if kind == "H2D":
            assert n <= len(rt.memory[dst]), "copy past the device buffer"
            rt.memory[dst][:n] = ctypes.string_at(src, n)
        else:
            assert n <= len(rt.memory[src]), "copy past the device buffer"
            ctypes.memmove(dst, bytes(rt.memory[src][:n]), n)
        calls.append(("cudaMemcpyAsync", kind, n))
        return (SUCCESS,)

    rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = cudaMalloc, cudaFree, cudaMemcpyAsync
    rt.cudaStreamCreate = lambda: (SUCCESS, "stream0")
    rt.cudaStreamSynchronize = lambda s: calls.append(("sync",)) or (SUCCESS,)
    rt.cudaStreamDestroy = lambda s: (SUCCESS,)
    return rt


class FakeEngine:
    """A plan with one dynamic input x [T, 4] (profile T 1..8) and one output y [12 - T, 2] whose
    size is largest at the SMALLEST T (so the output buffer must grow): y = [sum(x), T] rows."""

    num_io_tensors = 2

    def __init__(self, calls, cudart):
        self.calls, self.cudart = calls, cudart

    def get_tensor_name(self, i):
        return ("x", "y")[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "x" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "FLOAT"

    def get_tensor_shape(self, name):
        return (-1, 4) if name == "x" else (-1, 2)

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 4), (4, 4), (8, 4)]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.calls, self.shape, self.addr = engine, engine.calls, None, {}

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        if not 1 <= shape[0] <= 8 or shape[1] != 4:
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shape if name == "x" else (12 - self.shape[0], 2)

    def set_tensor_address(self, name, ptr):
        self.calls.append(("set_tensor_address", name, ptr))
        self.addr[name] = ptr

    def execute_async_v3(self, stream_handle):
        self.calls.append(("execute_async_v3", stream_handle))
        mem = self.engine.cudart.memory
        t = self.shape[0]
        x = np.frombuffer(bytes(mem[self.addr["x"]][:t * 16]), np.float32).reshape(t, 4)
        y = np.tile(np.array([x.sum(), t], np.float32), (12 - t, 1))
        mem[self.addr["y"]][:y.nbytes] = y.tobytes()
        return True


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """(calls, cudart, plan path) with fake tensorrt + cudart installed."""
    calls: list = []
    cudart = fake_cudart(calls)
    engine = FakeEngine(calls, cudart)
    install_fakes(monkeypatch, fake_tensorrt(calls, engine=engine), cudart)
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"fake plan")
    return calls, cudart, plan


def test_trt_engine_io_and_buffers_allocated_once_at_max(fake_gpu):
    calls, cudart, plan = fake_gpu
    eng = TrtEngine(plan)
    assert ("deserialize_cuda_engine", b"fake plan") in calls
    assert list(eng.inputs) == ["x"] and list(eng.outputs) == ["y"]
    assert eng.inputs["x"].dtype is np.float32 and eng.inputs["x"].shape == (None, 4)
    assert ("set_input_shape", "x", (8, 4)) in calls  # the profile's max
    assert [c for c in calls if c[0] == "cudaMalloc"] == [("cudaMalloc", 8 * 4 * 4), ("cudaMalloc", 4 * 2 * 4)]


def test_trt_engine_infer_binds_runs_and_copies(fake_gpu):
    calls, cudart, plan = fake_gpu
    eng = TrtEngine(plan)
    del calls[:]
    x = np.arange(12, dtype=np.float64).reshape(3, 4)  # cast to the plan's float32
    (y,) = eng.infer({"x": x}).values()
    np.testing.assert_array_equal(y, np.tile([66.0, 3.0], (9, 1)))
    assert y.dtype == np.float32
    x_ptr, y_ptr = eng._buffers["x"][0], eng._buffers["y"][0]
    assert calls == [
        ("cudaMemcpyAsync", "H2D", 3 * 4 * 4),  # into the x buffer made at T=8
        ("set_input_shape", "x", (3, 4)), ("set_tensor_address", "x", x_ptr),
        calls[3], ("cudaMalloc", 9 * 2 * 4),  # y grew: [9, 2] at T=3 > the [4, 2] made at T=8
        ("set_tensor_address", "y", y_ptr),
        ("execute_async_v3", "stream0"),
        ("cudaMemcpyAsync", "D2H", 9 * 2 * 4), ("sync",),
    ]
    assert calls[3][0] == "cudaFree" and calls[3][1] != y_ptr
    del calls[:]
    eng.infer({"x": np.ones((5, 4), np.float32)})  # no new allocation once big enough
    assert not any(c[0] == "cudaMalloc" for c in calls)


def test_trt_engine_device_tensor_feeds_the_next_engine_in_place(fake_gpu):
    calls, cudart, plan = fake_gpu
    first, second = TrtEngine(plan), TrtEngine(plan)
    (dev,) = first.infer({"x": np.ones((8, 4), np.float32)}, on_device=True).values()
    assert isinstance(dev, DeviceTensor) and dev.shape == (4, 2) and dev.ptr == first._buffers["y"][0]
    np.testing.assert_array_equal(np.asarray(dev), np.tile([32.0, 8.0], (4, 1)))  # host copy on demand
    dev4 = DeviceTensor(first, dev.ptr, (4, 2), np.float32)
    del calls[:]
    with pytest.raises(SfedgeError, match="x shape \\(4, 2\\) is outside the plan's profile"):
        second.infer({"x": dev4})  # [4, 2] is not [T, 4]: refused by set_input_shape
    assert not any(c[0] == "cudaMemcpyAsync" and c[1] == "H2D" for c in calls)  # never copied through the host
    flat = DeviceTensor(first, dev.ptr, (2, 4), np.float32)  # the same 32 bytes seen as [2, 4]
    del calls[:]
    (y,) = second.infer({"x": flat}).values()
    assert ("set_tensor_address", "x", first._buffers["y"][0]) in calls  # read in place
    assert not any(c[:2] == ("cudaMemcpyAsync", "H2D") for c in calls)
    np.testing.assert_array_equal(y[0], [4 * (32.0 + 8.0), 2.0])


def test_trt_engine_errors(fake_gpu, monkeypatch):
    calls, cudart, plan = fake_gpu
    eng = TrtEngine(plan)
    with pytest.raises(SfedgeError, match="x shape \\(9, 4\\) is outside the plan's profile \\(1, 4\\) .. \\(8, 4\\)"):
        eng.infer({"x": np.zeros((9, 4), np.float32)})
    with pytest.raises(SfedgeError, match="expected inputs \\['x'\\]"):
        eng.infer({"z": np.zeros((1, 4))})
    with pytest.raises(SfedgeError, match="differ from the manifest"):
        TrtEngine(plan, {"inputs": [{"name": "frames"}], "outputs": [{"name": "y"}]})
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([], version="10.9.0", engine=None))
    with pytest.raises(SfedgeError, match="TensorRT 10.9.0 cannot load .*rerun `sfedge build`"):
        TrtEngine(plan)


def test_trt_engine_without_cuda_python(fake_gpu, monkeypatch):
    _, _, plan = fake_gpu
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SfedgeError, match="need cuda-python.*sfedge\\[tensorrt\\]"):
        TrtEngine(plan)


def test_native_plan_lookup(tmp_path):
    manifest = {"tensorrt": {"plans": {"vision": "trt/vision.plan"}}}
    assert native_plan(tmp_path, manifest, "vision") == tmp_path / "trt/vision.plan"
    assert native_plan(tmp_path, manifest, "slowfast") is None
    assert native_plan(tmp_path, {}, "vision") is None and native_plan(tmp_path, {"tensorrt": None}, "vision") is None


# --- the pipeline's engine factory, end to end over the tiny engines ---------------------------------

class OrtBackedEngine(FakeEngine):
    """A fake plan that computes with ONNX Runtime (CPU) on the component's ONNX graph, so the
    pipeline's answer through TrtEngine can be compared with the plain ORT pipeline's."""

    def __init__(self, calls, cudart, onnx_path):
        import onnxruntime as ort

        super().__init__(calls, cudart)
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.io = [(i.name, "INPUT", i.shape) for i in self.session.get_inputs()] + \
                  [(o.name, "OUTPUT", o.shape) for o in self.session.get_outputs()]
        self.types = {v.name: v.type for v in self.session.get_inputs() + self.session.get_outputs()}
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_dtype(self, name):  # the graph's own types: uint8 frames into vision
        return ORT_TO_TRT[self.types[name]]

    def get_tensor_mode(self, name):
        return dict((n, m) for n, m, _ in self.io)[name]

    def get_tensor_shape(self, name):
        return tuple(d if isinstance(d, int) else -1 for d in dict((n, s) for n, _, s in self.io)[name])

    def get_tensor_profile_shape(self, name, profile):
        fixed = self.get_tensor_shape(name)[1:]
        return [(1, *fixed), (8, *fixed), (64, *fixed)]

    def create_execution_context(self):
        return OrtBackedContext(self)


class OrtBackedContext(FakeContext):
    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):  # output shapes from a run on zeros (cached per input shape)
        if not hasattr(self, "_shapes"):
            self._shapes = {}
        if self.shape not in self._shapes:
            (inp,) = self.engine.session.get_inputs()
            outs = self.engine.session.run(None, {inp.name: np.zeros(self.shape, _np(inp.type))})
            self._shapes[self.shape] = [o.shape for o in outs]
        return self.shape if self.engine.get_tensor_mode(name) == "INPUT" else self._shapes[self.shape][0]

    def execute_async_v3(self, stream_handle):
        self.calls.append(("execute_async_v3", stream_handle))
        mem, (inp,) = self.engine.cudart.memory, self.engine.session.get_inputs()
        n = int(np.prod(self.shape)) * np.dtype(_np(inp.type)).itemsize
        x = np.frombuffer(bytes(mem[self.addr[inp.name]][:n]), _np(inp.type)).reshape(self.shape)
        (y,) = self.engine.session.run(None, {inp.name: x})
        out = self.engine.session.get_outputs()[0].name
        mem[self.addr[out]][:y.nbytes] = np.ascontiguousarray(y).tobytes()
        return True


def test_pipeline_uses_native_plans_for_vision_and_slowfast(engines_fp32, clip_path, tmp_path, monkeypatch):
    import shutil

    import sfedge.runtime.pipeline as pipeline_mod
    from sfedge.runtime.engines import OrtEngine
    from sfedge.spec import GenerationSpec

    root = tmp_path / "engines"
    shutil.copytree(engines_fp32, root)
    calls: list = []
    cudart = fake_cudart(calls)
    by_plan = {b"PLAN:frames": root / "vision.onnx", b"PLAN:features": root / "slowfast.onnx"}
    monkeypatch.setitem(sys.modules, "tensorrt",
                        fake_tensorrt(calls, engine=lambda data: OrtBackedEngine(calls, cudart, by_plan[data])))
    package = types.ModuleType("cuda.bindings")
    package.runtime = cudart
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", package)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    build_plans(root, progress=False)
    # No TensorRT EP and no CUDA here: the provider check is skipped and the LLM runs on the CPU.
    monkeypatch.setattr(pipeline_mod, "check_provider", lambda provider: None)
    monkeypatch.setattr(pipeline_mod, "OrtEngine", lambda path, provider, **kw: OrtEngine(path, "cpu", **kw))
    gen = GenerationSpec(max_new_tokens=4)
    expected = pipeline_mod.Pipeline(engines_fp32).ask(clip_path, "What is moving?", None, gen)
    pipe = pipeline_mod.Pipeline(root, provider="tensorrt")
    assert isinstance(pipe.vision, TrtEngine) and isinstance(pipe.slowfast, TrtEngine)
    del calls[:]
    result = pipe.ask(clip_path, "What is moving?", None, gen)
    assert result.token_ids == expected.token_ids
    assert result.num_visual_tokens == expected.num_visual_tokens
    # vision's output fed SlowFast in place: its device buffer is SlowFast's input address
    assert ("set_tensor_address", "features", pipe.vision._buffers["features"][0]) in calls
    # the plan binds the uint8 frames: T x 336 x 336 x 3 bytes go up, a quarter of float32 pixels
    assert pipe.vision.inputs["frames"].dtype is np.uint8
    assert ("cudaMemcpyAsync", "H2D", len(result.frame_indices) * 336 * 336 * 3) in calls


# --- the plan-vs-ONNX check after `sfedge build` (real tiny graphs, fake TensorRT) ---------------

class OnnxBackedEngine:
    """A fake TensorRT engine that computes its ONNX graph with ONNX Runtime through the fake
    device memory. `mode`: "exact"; "fp16" (inputs and outputs rounded to fp16: what a healthy
    FP16 plan's error looks like); "overflow" (an FP16 plan whose activations overflowed: inf in
    the output); "wrong" (outputs x 1.1: a broken plan)."""

    def __init__(self, onnx_path, cudart, mode):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.cudart, self.mode = cudart, mode
        self.ins = [(i.name, i.shape) for i in self.sess.get_inputs()]
        self.outs = [(o.name, o.shape) for o in self.sess.get_outputs()]
        self.num_io_tensors = len(self.ins) + len(self.outs)
        self.max_t = 12

    def get_tensor_name(self, i):
        return (self.ins + self.outs)[i][0]

    def get_tensor_mode(self, name):
        return "INPUT" if name in dict(self.ins) else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "UINT8" if self.np_dtype(name) == np.uint8 else "FLOAT"  # a float32 plan of either graph

    def np_dtype(self, name):
        return _np(next(v.type for v in self.sess.get_inputs() + self.sess.get_outputs() if v.name == name))

    def get_tensor_shape(self, name):
        return tuple(d if isinstance(d, int) else -1 for d in dict(self.ins + self.outs)[name])

    def get_tensor_profile_shape(self, name, profile):
        shape = dict(self.ins)[name]
        return [tuple(t if not isinstance(d, int) else d for d in shape) for t in (1, 50, self.max_t)]

    def create_execution_context(self):
        return OnnxBackedContext(self)


class OnnxBackedContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addr, self.out_shapes = engine, {}, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        # output shapes from a run on zeros; vision's [T, 576, D] from one frame (64 would be slow)
        frames = 1 if name == "frames" else shape[0]
        outs = self.engine.sess.run(None, {name: np.zeros((frames,) + tuple(shape[1:]), self.engine.np_dtype(name))})
        self.out_shapes = {n: (o.shape[0] * shape[0] // frames,) + o.shape[1:] for (n, _), o in zip(self.engine.outs, outs)}
        return True

    def get_tensor_shape(self, name):
        return self.shapes.get(name) or self.out_shapes[name]

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream):
        mem, mode = self.engine.cudart.memory, self.engine.mode
        feeds = {}
        for n, _ in self.engine.ins:
            count, dtype = int(np.prod(self.shapes[n])), self.engine.np_dtype(n)
            x = np.frombuffer(bytes(mem[self.addr[n]][:count * np.dtype(dtype).itemsize]), dtype).reshape(self.shapes[n])
            # an fp16 plan rounds float inputs (uint8 frames are exact in fp16)
            feeds[n] = x.astype(np.float16).astype(np.float32) if mode in ("fp16", "overflow") and dtype != np.uint8 else x
        for (n, _), y in zip(self.engine.outs, self.engine.sess.run(None, feeds)):
            y = {"fp16": lambda a: a.astype(np.float16).astype(np.float32), "wrong": lambda a: a * np.float32(1.1),
                 "overflow": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.inf, a).astype(np.float32)
                 }.get(mode, lambda a: a)(y)
            mem[self.addr[n]][:y.nbytes] = np.ascontiguousarray(y, np.float32).tobytes()
        return True


@pytest.fixture
def onnx_backed_trt(monkeypatch, engines_fp32, tmp_path):
    """(engines dir copy, set_mode): fake tensorrt whose plans run the real tiny graphs."""
    import shutil

    root = tmp_path / "engines"
    shutil.copytree(engines_fp32, root)
    manifest = load_manifest(root, verify_files=False)  # T up to 12 keeps the test cheap (1, 7, 12 checked)
    for name in ("vision", "slowfast"):
        for entry in manifest["components"][name]["inputs"] + manifest["components"][name]["outputs"]:
            if "T" in entry.get("dynamic", {}):
                entry["dynamic"]["T"] = [1, 12]
    write_manifest(root, {k: v for k, v in manifest.items() if k not in ("files", "schema_version")})
    calls, state = [], {"mode": "exact"}
    cudart = fake_cudart(calls)
    graphs = {"frames": root / "vision.onnx", "features": root / "slowfast.onnx"}

    def engine(plan_bytes):
        return OnnxBackedEngine(graphs[plan_bytes.decode().split(":", 1)[1]], cudart, state["mode"])

    install_fakes(monkeypatch, fake_tensorrt(calls, engine=engine), cudart)
    monkeypatch.setattr("sfedge.export.tensorrt.gpu_info", lambda: None)
    # the fake parser hands out the tiny graphs' own input shapes
    monkeypatch.setitem(NETWORK_INPUTS, "vision.onnx", [("frames", (-1, 336, 336, 3), "UINT8")])
    monkeypatch.setitem(NETWORK_INPUTS, "slowfast.onnx", [("features", (-1, 576, 64), "FLOAT")])
    return root, lambda mode: state.update(mode=mode)


def test_plan_check_frames(engines_fp32):
    from sfedge.export.tensorrt import plan_check_frames

    manifest = load_manifest(engines_fp32, verify_files=False)
    for name in ("vision", "slowfast"):
        assert plan_check_frames(manifest["components"][name]) == [1, 7, 50, manifest["model"]["max_frames"]]
    assert plan_check_frames({"inputs": [{"shape": ["T", 4], "dynamic": {"T": [1, 8]}}]}) == [1, 7, 8]


@pytest.mark.parametrize("mode", ["exact", "fp16"])
def test_build_checks_each_plan_against_its_onnx_graph(onnx_backed_trt, mode):
    root, set_mode = onnx_backed_trt
    set_mode(mode)
    info = build_plans(root, fp16=True, progress=False)
    for name in ("vision", "slowfast"):
        check = info["plans"][name]["check"]
        assert check["passed"] and set(check["frames"]) == {"1", "7", "12"}
        assert check["rel"] < check["rel_tol"] and (check["rel"] == 0.0) == (mode == "exact")


@pytest.mark.parametrize("mode", ["wrong", "overflow"])
def test_build_fails_when_a_plan_disagrees_with_its_graph(onnx_backed_trt, mode):
    from sfedge.errors import ValidationError

    root, set_mode = onnx_backed_trt
    set_mode(mode)
    with pytest.raises(ValidationError, match="TensorRT plan disagrees with vision.onnx") as err:
        build_plans(root, fp16=True, progress=False)
    assert "FP16 builder flag" in str(err.value) and err.value.exit_code == 1
    assert not list((root / "trt").glob("*.plan*")) and "tensorrt" not in load_manifest(root, trust_stamps=False)
