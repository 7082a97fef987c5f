"""scripts/gpu_bench.sh without a GPU (its syntax, the summary table on fabricated bench reports,
results copied into $OUT, the guards), and the CUDA-library preload (runtime/cuda_libraries.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sfedge.bench.report import format_table
from sfedge.bench.runner import SideResult, _side_report
from sfedge.errors import SfedgeError
from sfedge.runtime import cuda_libraries, engines

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench.sh"


def _script(args: list[str], work: Path, out: Path, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, SFEDGE_GPU_WORK=str(work), OUT=str(out), PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=60)


def _side(e2e: float, per_token: float, dtype: str | None = None) -> dict:
    runs = [{"decode_video": 40.0, "preprocess": 20.0, "vision": 100.0 + i, "slowfast": 1.0, "prefill": 300.0,
             "decode_ms_per_token": per_token, "e2e": e2e + i, "new_tokens": 128} for i in (-1, 0, 1)]
    side = SideResult(runs=runs, peak_rss_mb=900.0, peak_gpu_mb=15000.0,
                      info={"frames": 50, "visual_tokens": 3680} | ({"dtype": dtype} if dtype else {}))
    floors = {"vision": 20.0, "prefill": 75.0, "decode_ms_per_token": 4.0}
    return _side_report(side, floors)


def _report(precision: str, e2e: float, per_token: float, with_reference: bool) -> dict:
    eng = _side(e2e, per_token)
    ref = _side(2500.0, 20.0, "float16") if with_reference else None
    speedup = {k: ref["stages_ms"][k]["median"] / eng["stages_ms"][k]["median"] for k in eng["stages_ms"]} if ref else None
    return {"engines": f"/w/engines-{precision}", "provider": "cuda", "precision": precision, "video": "/w/clip.mp4",
            "frames": 50, "visual_tokens": 3680, "prefill_tokens": 3744, "new_tokens": 128, "runs": 3, "warmup": 1,
            "ceilings": {"device": "NVIDIA H100 80GB HBM3", "bandwidth_GBps": 3000.0, "matmul_TFLOPs": 700.0,
                         "how": "fabricated"},
            "engine": eng, "reference": ref, "speedup": speedup,
            "environment": {"date_utc": "2026-11-21T00:00:00Z", "versions": {}}}


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_table_step_on_fabricated_reports(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "results").mkdir(parents=True)
    reports = {"fp16": _report("fp16", 1000.0, 8.0, True), "int4": _report("int4", 500.0, 4.0, False)}
    for prec, r in reports.items():
        format_table(r)  # the fabricated reports have the shape the report code reads
        (work / "results" / f"bench-{prec}.json").write_text(json.dumps(r))
        (work / "results" / f"bench-{prec}.txt").write_text(format_table(r) + "\n")
    (work / "results" / "setup.txt").write_text("NVIDIA H100 80GB HBM3, 81559 MiB\n")
    res = _script(["table"], work, out)
    assert res.returncode == 0, res.stderr
    rows = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.startswith(("fp16", "int4"))}
    assert set(rows) == {"fp16", "int4*"}
    assert "2.50x" in rows["fp16"] and "125.0 / 50.0" in rows["fp16"]  # e2e 2500/1000; tok/s 1000/8, 1000/20
    assert "5.00x" in rows["int4*"] and "250.0 / 50.0" in rows["int4*"]  # against the fp16 run's reference
    assert "20% / 25% / 50%" in rows["fp16"]  # floor fractions of vision, prefill, decode
    assert "float16 PyTorch" in res.stdout and "NVIDIA H100" in res.stdout
    got = sorted(p.name for p in out.iterdir())
    assert got == ["bench-fp16.json", "bench-fp16.txt", "bench-int4.json", "bench-int4.txt", "summary.txt"]
    summary = (out / "summary.txt").read_text()
    assert "81559 MiB" in summary and "int4*" in summary


def test_table_without_results_fails_clearly(tmp_path):
    res = _script(["table"], tmp_path / "work", tmp_path / "out")
    assert res.returncode != 0 and "no bench results" in res.stderr


def test_steps_refuse_to_run_beside_a_background_run(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "bg.pid").write_text(str(os.getpid()))  # a live process stands for the background run
    (work / "engines-fp16.partial-x").mkdir()
    res = _script(["make"], work, tmp_path / "out", PROVIDER="cpu")
    assert res.returncode == 1 and "background run is going on" in res.stderr
    assert (work / "engines-fp16.partial-x").is_dir()  # its files were left alone


def test_unknown_step_and_wait_without_a_run(tmp_path):
    assert _script(["nonsense"], tmp_path / "w", tmp_path / "o").returncode == 2
    res = _script(["wait"], tmp_path / "w", tmp_path / "o")
    assert res.returncode == 2 and "no background run" in res.stdout


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
