"""CUDA session options (no TF32, heuristic cuDNN algorithm search, one intra-op thread) as sfedge sets
them, the CUDA-library preload (runtime/cuda_libraries.py), and the bench's TTFT and untimed memory
sampling, all without a GPU (tests/test_gpu.py runs the same on one)."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest

from sfedge.errors import SfedgeError
from sfedge.runtime import cuda_libraries, engines


@pytest.fixture
def cuda_listed(monkeypatch):
    """onnxruntime claims a CUDA provider; the library preload does nothing."""
    monkeypatch.setattr(cuda_libraries, "_notes", [])
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_cuda_provider_options_turn_tf32_off_and_cudnn_search_to_heuristic(cuda_listed):
    name, opts = engines.session_providers("cuda")[0]
    assert name == "CUDAExecutionProvider"
    assert opts == {"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
    assert engines.session_providers("cuda", tf32=True)[0][1]["use_tf32"] == "1"


def test_tensorrt_falls_back_to_the_same_cuda_options(cuda_listed, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])
    provs = engines.session_providers("tensorrt")
    assert provs[1] == ("CUDAExecutionProvider", engines.cuda_provider_options())


def test_one_intra_op_thread_per_cuda_session_unless_asked():
    assert engines.session_options("cuda").intra_op_num_threads == 1
    assert engines.session_options("tensorrt").intra_op_num_threads == 1
    assert engines.session_options("cuda", threads=4).intra_op_num_threads == 4
    assert engines.session_options("cpu").intra_op_num_threads == 0  # ORT's default: one per core
    assert engines.session_options("cpu", threads=2).intra_op_num_threads == 2


@pytest.fixture()
def recorded_sessions(monkeypatch):
    """ort.InferenceSession records its threads and providers, then opens the graph on the CPU."""
    seen = {}
    real = ort.InferenceSession

    def recording(path, sess_options=None, providers=None):
        seen.update(threads=sess_options.intra_op_num_threads, providers=providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return seen


def test_options_reach_the_session(cuda_listed, recorded_sessions, engines_fp32):
    """OrtEngine hands both to ONNX Runtime (recorded: no CUDA provider here)."""
    seen = recorded_sessions
    with pytest.raises(SfedgeError, match="failed to start"):  # the recorded session runs on the CPU
        engines.OrtEngine(engines_fp32 / "vision.onnx", "cuda")
    assert seen["threads"] == 1
    assert seen["providers"][0] == ("CUDAExecutionProvider", engines.cuda_provider_options())


def test_validation_sessions_on_cuda_without_tf32(monkeypatch, recorded_sessions, engines_fp32):
    from sfedge.export import validate

    seen = recorded_sessions
    monkeypatch.setattr(cuda_libraries, "_notes", [])
    validate.session(engines_fp32 / "vision.onnx", "cuda")
    assert seen["providers"][0] == ("CUDAExecutionProvider", engines.cuda_provider_options())
    assert seen["threads"] == 0  # no CUDA provider here: the CPU fallback keeps every core


# --- the bench: TTFT, and no polling inside the timed loop ----------------------------------------


def test_engine_ttft_is_the_pipelines_own_or_the_sum_before_the_first_token():
    from types import SimpleNamespace

    from sfedge.bench.runner import _engine_run

    t = {"decode_video": 1.0, "preprocess": 2.0, "vision": 3.0, "slowfast": 4.0, "prefill": 5.0, "decode": 9.0}
    res = SimpleNamespace(timings_ms=t, token_ids=[1, 2, 3, 4])
    assert _engine_run(res, 30.0)["ttft"] == 15.0 and _engine_run(res, 30.0)["decode_ms_per_token"] == 3.0
    res.timings_ms = dict(t, ttft=16.5)
    assert _engine_run(res, 30.0)["ttft"] == 16.5


def test_no_memory_polling_during_timed_runs(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from sfedge.bench import runner
    from sfedge.spec import GenerationSpec

    active = []
    calls = []

    class Monitor:
        peak_rss_mb = 1.0

        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            active.append(True)
            return self

        def __exit__(self, *exc):
            active.pop()

    class FakePipeline:
        def __init__(self, *a, **k):
            pass

        def ask(self, *a, **k):
            calls.append(bool(active))
            return SimpleNamespace(timings_ms={"prefill": 1.0, "decode": 2.0, "ttft": 3.0}, token_ids=[1, 2, 3],
                                   frame_indices=[0], num_visual_tokens=4, prompt_tokens=9)

    monkeypatch.setattr(runner, "PeakMonitor", Monitor)
    monkeypatch.setattr("sfedge.runtime.pipeline.open_pipeline", FakePipeline)
    cfg = runner.BenchConfig(engines=tmp_path, video=tmp_path, runs=3, warmup=0)
    side = runner.bench_engines(cfg, GenerationSpec(max_new_tokens=3), on_cuda=False)
    assert calls == [True, False, False, False]  # one untimed run sampled, three timed runs unsampled
    assert len(side.runs) == 3 and side.runs[0]["ttft"] == 3.0 and "Pipeline" in side.info["ttft_source"]


# --- CUDA library preload (runtime/cuda_libraries.py) --------------------------------------------


@pytest.fixture
def fresh_preload(monkeypatch):
    """A process that has not tried the preload yet, with a recording onnxruntime.preload_dlls."""
    calls: list[dict] = []
    monkeypatch.setattr(cuda_libraries, "_notes", None)
    monkeypatch.setattr(ort, "preload_dlls", lambda **kw: calls.append(kw), raising=False)
    return calls


def test_preload_runs_once_for_cuda_and_never_for_cpu(fresh_preload, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert engines.session_providers("cpu") == ["CPUExecutionProvider"]
    assert fresh_preload == []
    assert engines.session_providers("cuda")[0][0] == "CUDAExecutionProvider"
    engines.session_providers("cuda")
    assert fresh_preload == [{}]  # once per process, with onnxruntime's default search


def test_preload_looks_in_every_nvidia_package_when_libraries_are_missing(fresh_preload, monkeypatch, tmp_path):
    for sub, name in (("cu13", "libcublasLt.so.13"), ("cudnn", "libcudnn.so.9")):
        (tmp_path / "nvidia" / sub / "lib").mkdir(parents=True)
        (tmp_path / "nvidia" / sub / "lib" / name).write_bytes(b"")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setattr(ort, "cuda_version", "13.0", raising=False)
    monkeypatch.setattr(cuda_libraries, "_loaded_libraries", lambda names: {"libcudart.so"})
    notes = cuda_libraries.preload()
    dirs = [c.get("directory") for c in fresh_preload]
    assert dirs[0] is None and str(tmp_path / "nvidia" / "cu13" / "lib") in dirs
    assert str(tmp_path / "nvidia" / "cudnn" / "lib") in dirs
    assert all(c["cudnn"] and c["cuda"] and c["msvc"] is False for c in fresh_preload[1:])
    assert any("not loaded: libcublasLt.so" in n for n in notes)
    assert cuda_libraries.preload() is notes  # not tried again


def test_preload_is_skipped_quietly_without_preload_dlls(monkeypatch):
    monkeypatch.setattr(cuda_libraries, "_notes", None)
    monkeypatch.delattr(ort, "preload_dlls", raising=False)
    assert cuda_libraries.preload() == []


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a real CUDA provider")
def test_cuda_that_does_not_start_is_a_clear_error_with_the_notes(monkeypatch, tmp_path):
    from onnx import TensorProto, helper

    def failing(**_kw):
        raise RuntimeError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(cuda_libraries, "_notes", None)
    monkeypatch.setattr(ort, "preload_dlls", failing, raising=False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "add.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.warns(UserWarning), pytest.raises(SfedgeError, match="failed to start.*libcudnn.so.9"):
        engines.OrtEngine(path, "cuda")
    assert engines.OrtEngine(path, "cpu").infer({"x": np.ones(2, np.float32)})["y"].tolist() == [2.0, 2.0]


def test_device_memory_reading_without_a_cuda_runtime(monkeypatch):
    """No libcudart in this process: nvidia-smi's figure, or None with the reason (never polled)."""
    from sfedge.bench import memory

    monkeypatch.setattr(memory, "_loaded_cudart", lambda: None)
    monkeypatch.setattr(memory, "gpu_used_mb", lambda index=0: None)
    assert memory.cuda_used_mb() == (None, "no CUDA runtime loaded and no nvidia-smi")
    monkeypatch.setattr(memory, "gpu_used_mb", lambda index=0: 1234.0)
    assert memory.cuda_used_mb() == (1234.0, "nvidia-smi memory.used")


def test_cuda_graph_option_only_where_asked_and_only_on_cuda(cuda_listed, monkeypatch):
    """`enable_cuda_graph` (the LLM's decode step and the greedy step only) reaches the CUDA provider when
    asked, never otherwise; TensorRT's CUDA fallback never gets it; prefill's RunOptions skip capture."""
    assert "enable_cuda_graph" not in engines.session_providers("cuda")[0][1]
    assert engines.session_providers("cuda", cuda_graph=True)[0][1]["enable_cuda_graph"] == "1"
    assert engines.session_providers("cpu", cuda_graph=True) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])
    assert "enable_cuda_graph" not in engines.session_providers("tensorrt", cuda_graph=True)[1][1]
    assert engines.uncaptured_run_options().get_run_config_entry("gpu_graph_id") == "-1"
