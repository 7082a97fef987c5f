"""The Python steps of scripts/gpu_bench.sh, one subcommand each; the script runs them with its $PY in the
repository root, with its PYTHONPATH and environment (PROVIDER is read from it):

    gpu_bench_steps.py setup-check DIR            the imports; a tiny model through OrtEngine on $PROVIDER (in DIR)
    gpu_bench_steps.py make-preset NAME DST       the preset checkpoint (on the GPU unless PROVIDER=cpu)
    gpu_bench_steps.py export CKPT DST PRECISION DEVICE MAX_FRAMES      engines, validation off
    gpu_bench_steps.py bench-json OUT PREFIX      `sfedge bench --json` stdout -> PREFIX.txt, PREFIX.json.tmp
    gpu_bench_steps.py table RESULTS_DIR          the summary table of the bench-*.json reports there

Only the standard library is imported at the top: each step imports what it needs, so that setup-check
reports missing packages itself. A failed step exits with a message on stderr (status 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import time


def setup_check(work: str) -> None:
    """Every import the steps need, then a tiny Conv+MatMul+Add model through sfedge's OrtEngine on $PROVIDER."""
    missing = [m for m in ("onnxruntime", "onnxruntime_genai", "torch", "transformers", "onnx", "onnx_ir", "av",
                           "tokenizers", "PIL", "psutil", "safetensors", "cv2", "tqdm")
               if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"missing on this machine: {missing} (stage them: WHEELS=... bash scripts/gpu_bench.sh stage)")
    provider = os.environ["PROVIDER"]
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import onnxruntime as ort

    print("onnxruntime", ort.__version__, "from", os.path.dirname(ort.__file__), "providers:",
          ort.get_available_providers())
    # A tiny model through sfedge's own engine (CUDA / cuDNN preload, provider check): Conv (cuDNN),
    # MatMul (cuBLAS), Add. ORT falls back to the CPU silently when a library is missing; OrtEngine raises.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["img", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("MatMul", ["a", "b"], ["mm"]),
         helper.make_node("Add", ["mm", "mm"], ["sum"])],
        "setup_check",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("conv", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("sum", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "check.onnx")
    onnx.save(model, path)
    feeds = {"img": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
             "a": rng.standard_normal((4, 16)).astype(np.float32)}
    from sfedge.runtime.cuda_libraries import preload
    from sfedge.runtime.engines import PROVIDERS, OrtEngine

    t = time.perf_counter()
    eng = OrtEngine(path, provider)
    got = eng.infer(feeds)
    want = dict(zip(["conv", "sum"], ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-2, atol=1e-2)
    print(f"tiny session on {provider}: providers {eng.session.get_providers()}, outputs match the CPU "
          f"({time.perf_counter() - t:.1f} s); CUDA library notes: {preload() or 'none'}")
    if eng.session.get_providers()[0] != PROVIDERS[provider]:
        sys.exit(f"{PROVIDERS[provider]} is not the session's first provider: {eng.session.get_providers()}")
    import onnxruntime_genai, transformers, torch, onnx_ir, av  # noqa: E401 (this order, as before)

    print("onnxruntime-genai", onnxruntime_genai.__version__, "| transformers", transformers.__version__,
          "| onnx", onnx.__version__, "| onnx-ir", onnx_ir.__version__, "| av", av.__version__,
          "| numpy", np.__version__)
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else "")
    if provider != "cpu" and not torch.cuda.is_available():
        sys.exit("torch sees no GPU: the reference and the ceilings need it")


def make_preset(name: str, dst: str) -> None:
    """The preset checkpoint `name` into `dst`, after checking the disk has room for it."""
    from sfedge.models import presets

    t = time.perf_counter()
    need = 2 * sum(presets.param_counts(presets.preset_config(name)).values()) + 2e9
    free = shutil.disk_usage(os.path.dirname(dst)).free
    if free < need:
        sys.exit(f"disk: the preset needs {need / 1e9:.1f} GB, {os.path.dirname(dst)} has {free / 1e9:.1f} GB free")
    import torch

    # Same distributions as the CPU preset, drawn on the GPU (the CPU generator takes ~1 min per 7B on
    # one core): other values than on the CPU; latency does not depend on them.
    device = "cuda" if os.environ["PROVIDER"] != "cpu" and torch.cuda.is_available() else "cpu"
    presets.make_preset(name, dst, device=device)
    print(f"preset {name}: {time.perf_counter() - t:.0f} s")


def export(ckpt: str, dst: str, prec: str, device: str, max_frames: str) -> None:
    """Engines of `ckpt` at `prec` for `device` into `dst` (validation off)."""
    from sfedge.export import export_model

    t = time.perf_counter()
    export_model(ckpt, dst, precision=prec, device=device, max_frames=int(max_frames), validate=False, force=True,
                 progress=True)
    print(f"export {prec} ({device}): {time.perf_counter() - t:.0f} s")


def bench_json(out_file: str, prefix: str) -> None:
    """Split `sfedge bench --json` stdout into the table (PREFIX.txt) and the report (PREFIX.json.tmp).

    The stdout is the table, then the JSON report as its last line; the script renames the .json.tmp."""
    lines = open(out_file).read().rstrip("\n").split("\n")
    report = json.loads(lines[-1])
    open(prefix + ".txt", "w").write("\n".join(lines[:-1]) + "\n")
    json.dump(report, open(prefix + ".json.tmp", "w"), indent=1)


def table(results: str) -> None:
    """The summary table of the bench-{fp16,int4,fp32}.json reports in `results`, on stdout."""
    res = pathlib.Path(results)
    reports = {p: json.loads((res / f"bench-{p}.json").read_text()) for p in ("fp16", "int4", "fp32")
               if (res / f"bench-{p}.json").exists()}
    if not reports:
        sys.exit(f"no bench results in {res}")
    f = lambda x, s=".1f": "-" if x is None else format(x, s)  # noqa: E731
    med = lambda side, k: ((side or {}).get("stages_ms", {}).get(k) or {}).get("median")  # noqa: E731
    first = next(iter(reports.values()))
    c = first.get("ceilings") or {}
    env = first.get("environment") or {}
    print(f"{first['frames']} frames -> {first['prefill_tokens']} prefill tokens, {first['new_tokens']} new tokens, "
          f"{first['runs']} runs after {first['warmup']} warmup, provider {first['provider']}; "
          f"{c.get('device', '?')}: {f(c.get('bandwidth_GBps'), '.0f')} GB/s, {f(c.get('matmul_TFLOPs'))} TFLOP/s "
          f"(measured); {env.get('date_utc', '')}")
    cols = ("vision ms", "prefill=TTFT ms", "decode tok/s", "e2e ms", "e2e speedup", "floor vis/pre/dec", "peak GPU MB")
    print(f"{'eng / ref':10}" + "".join(f"{h:>19}" for h in cols))
    notes = []
    for prec, r in reports.items():
        e, ref = r["engine"], r.get("reference")
        mark = ""
        if ref is None and prec != "fp16" and (reports.get("fp16") or {}).get("reference"):
            ref, mark = reports["fp16"]["reference"], "*"
            notes.append(f"* {prec}: the reference is the fp16 run's ({ref.get('dtype')} PyTorch, same device, "
                         f"frames, prompt and new tokens: the bench gives int4 engines the same reference dtype as "
                         f"fp16)")
        sp = lambda k: ref and med(ref, k) and med(e, k) and med(ref, k) / med(e, k)  # noqa: E731
        fr = e.get("floor_fraction") or {}
        cells = [f"{f(med(e, 'vision'))} / {f(med(ref, 'vision'))}",
                 f"{f(med(e, 'prefill'))} / {f(med(ref, 'prefill'))}",
                 f"{f(e.get('tokens_per_s'))} / {f((ref or {}).get('tokens_per_s'))}",
                 f"{f(med(e, 'e2e'), '.0f')} / {f(med(ref, 'e2e'), '.0f')}",
                 f"{f(sp('e2e'), '.2f')}x" if sp("e2e") else "-",
                 " / ".join(f(fr.get(k), ".0%") for k in ("vision", "prefill", "decode_ms_per_token")),
                 f"{f(e.get('peak_gpu_mb'), '.0f')} / {f((ref or {}).get('peak_gpu_mb'), '.0f')}"]
        print(f"{prec + mark:10}" + "".join(f"{x:>19}" for x in cells))
    for n in notes:
        print(n)


STEPS = {  # subcommand: (function, its positional arguments)
    "setup-check": (setup_check, ("work",)),
    "make-preset": (make_preset, ("name", "dst")),
    "export": (export, ("ckpt", "dst", "prec", "device", "max_frames")),
    "bench-json": (bench_json, ("out_file", "prefix")),
    "table": (table, ("results",)),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gpu_bench_steps.py", description="the Python steps of scripts/gpu_bench.sh")
    sub = parser.add_subparsers(dest="step", required=True)
    for name, (func, params) in STEPS.items():
        p = sub.add_parser(name, help=func.__doc__.split("\n")[0])
        for param in params:
            p.add_argument(param)
    args = parser.parse_args(argv)
    func, params = STEPS[args.step]
    func(*(getattr(args, param) for param in params))


if __name__ == "__main__":
    main()
