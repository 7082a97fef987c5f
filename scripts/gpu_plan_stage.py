"""Here, before the device calls (scripts/gpu_plan.py prepare): the carried tiny engines with the CPU's
tokens, and onnxruntime-genai + a trimmed onnxruntime-gpu split into parts that fill each call."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sfedge.bench.plan import write_json

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is happening in the video?"
TINY_TOKENS = 16  # new tokens compared in the CUDA-vs-CPU token check (greedy, EOS ignored)


def prepare_carry(carry: Path) -> None:
    """The tiny fp32 engines, a small frame directory, and the CPU's tokens on them (ONNX Runtime here)."""
    import onnxruntime as ort

    from sfedge.export import export_model
    from sfedge.models.tiny import resolve_model
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.spec import GenerationSpec
    from sfedge.synthetic import make_image_dir

    carry.mkdir(parents=True, exist_ok=True)
    if not (carry / "tiny-fp32" / "manifest.json").is_file():
        export_model(resolve_model("tiny"), carry / "tiny-fp32", precision="fp32", device="cpu", validate=False,
                     force=True, progress=False)
    if not (carry / "clip").is_dir():
        make_image_dir(carry / "clip", 12, width=160, height=120, seed=3)
    res = Pipeline(carry / "tiny-fp32").ask(carry / "clip", QUESTION,
                                           gen=GenerationSpec(max_new_tokens=TINY_TOKENS, ignore_eos=True))
    write_json(carry / "expected.json", {"question": QUESTION, "new_tokens": TINY_TOKENS, "tokens": res.token_ids,
                                         "onnxruntime": ort.__version__, "provider": "cpu"})
    print(f"carry: {carry} ({sum(p.stat().st_size for p in carry.rglob('*') if p.is_file()) / 2**20:.1f} MiB)")


# Not needed for the plan's Python use: the C API library (onnxruntime's Python module links the runtime
# itself; onnxruntime-genai loads it, but the exports use the machine's own onnxruntime) and TensorRT's EP.
ORT_DROP = ("onnxruntime/capi/libonnxruntime.so", "onnxruntime/capi/libonnxruntime_providers_tensorrt.so")


def trim_wheel(whl: Path, dst: Path) -> int:
    """Copy the onnxruntime-gpu wheel into the zip `dst` without ORT_DROP's files; their bytes saved."""
    import zipfile

    saved = 0
    with zipfile.ZipFile(whl) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            if info.filename.startswith(ORT_DROP):
                saved += info.compress_size
                continue
            zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return saved


def stage_wheels(stage: Path, carry: Path, wheels, call_mib: float, budget_s: float) -> list[dict]:
    """Download the wheels; onnxruntime-genai travels whole with the first call (with the carry and the first
    part of onnxruntime-gpu, trimmed), onnxruntime-gpu in parts filling each call. Writes stage/calls.json."""
    dl = stage / "dl"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "genai").mkdir(parents=True)
    (stage / "parts").mkdir()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(dl), *wheels], check=True)
    genai = Path(shutil.move(next(dl.glob("onnxruntime_genai-*.whl")), stage / "genai"))
    ort_whl = next(dl.glob("onnxruntime_gpu-*.whl"))
    trimmed = stage / "ort-gpu.zip"
    saved = trim_wheel(ort_whl, trimmed)
    mib = lambda n: n / 2**20  # noqa: E731
    carry_bytes = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    first = int((call_mib - mib(genai.stat().st_size) - mib(carry_bytes)) * 2**20)
    data, sizes, off = trimmed.read_bytes(), [], 0
    while off < len(data):
        n = first if not sizes else int(call_mib * 2**20)
        (stage / "parts" / f"ort.{len(sizes):02d}").write_bytes(data[off:off + n])
        sizes.append(len(data[off:off + n]))
        off += n
    write_json(stage / "ort-wheel.json", {"wheel": ort_whl.name, "parts": len(sizes), "bytes": len(data),
                                          "wheel_bytes": ort_whl.stat().st_size, "dropped": list(ORT_DROP),
                                          "dropped_compressed_bytes": saved})
    trimmed.unlink()
    shutil.rmtree(dl)
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
    calls = [{"command": f"python3 scripts/gpu_plan.py start --budget-s {budget_s:.0f}",
              "carry": [rel(stage / "genai"), rel(stage / "ort-wheel.json"), rel(stage / "parts" / "ort.00"),
                        rel(carry)],
              "mib": mib(genai.stat().st_size + carry_bytes + sizes[0])}]
    for i in range(1, len(sizes)):
        last = i == len(sizes) - 1
        last_cmd = "python3 scripts/gpu_plan.py install && python3 scripts/gpu_plan.py wait --follow-s 540"
        calls.append({"command": last_cmd if last else "python3 scripts/gpu_plan.py status",
                      "carry": [rel(stage / "parts" / f"ort.{i:02d}")], "mib": mib(sizes[i])})
    calls.append({"command": "python3 scripts/gpu_plan.py wait --follow-s 540", "carry": [],
                  "mib": 0.0, "note": "only while the last one answered 75 (still running)"})
    write_json(stage / "calls.json", calls)
    return calls
