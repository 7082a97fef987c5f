"""A/B of the SlowFast graph on ONNX Runtime CPU: A = the export at a git revision (default HEAD,
the reference's `SlowFastPool` traced as is), B = the working tree's `sfedge/export/slowfast.py`.

Both graphs are exported for the same spec (default: the SPEC 4 default) and width D, then run in
one process, alternating A/B (B/A on odd rounds), on the same random features, with the session
options of `sfedge.runtime.engines.OrtEngine` (default threads, spinning on). Reports medians (and
min-max) over --runs timed calls per case after one warm-up call, the floor = (features read once +
tokens written once) / numpy copy bandwidth measured on a 256 MB buffer, and checks that B agrees
with A (slow max tokens bit-exact, the rest within 1e-6 of the largest value for fp32).

    .venv/bin/python scripts/experiments/slowfast_ab.py --frames 4 50 --hidden 1024 --runs 9
    .venv/bin/python scripts/experiments/slowfast_ab.py --frames 50 --hidden 4096 --runs 7
    .venv/bin/python scripts/experiments/slowfast_ab.py --frames 4 --dtype fp16 --profile
    .venv/bin/python scripts/experiments/slowfast_ab.py --frames 4 50 --bind --threads 1
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from sfedge.export.slowfast import export_slowfast as export_new  # noqa: E402
from sfedge.spec import SLOW_MODES, SlowFastSpec  # noqa: E402


def old_exporter(rev: str):
    """`export_slowfast` from sfedge/export/slowfast.py at `rev`, loaded as a sibling module of the
    package so its relative imports (reference, graphs, registry) resolve in the working tree."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:sfedge/export/slowfast.py"],
                         check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(prefix="slowfast-old-") as tmp:
        path = Path(tmp) / "_slowfast_old.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("sfedge.export._slowfast_old", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.export_slowfast


def session(path: Path, threads: int, profile: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def copy_bandwidth(nbytes: int = 256 << 20, runs: int = 7) -> float:
    """Bytes moved per second (read + write) by np.copyto on a buffer too big for the caches."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times)


def agree(new: np.ndarray, old: np.ndarray, spec: SlowFastSpec, rel: float) -> str | None:
    if new.shape != old.shape or new.dtype != old.dtype:
        return f"shape/dtype {new.shape} {new.dtype} vs {old.shape} {old.dtype}"
    n_slow = spec.slow_frames * spec.slow_tokens_per_frame
    if spec.slow_mode.endswith("max") and not np.array_equal(new[:n_slow], old[:n_slow]):
        return "slow max tokens differ"
    err = np.max(np.abs(new.astype(np.float64) - old)) / np.max(np.abs(old.astype(np.float64)))
    return None if err <= rel else f"rel error {err:.3g} > {rel:g}"


def op_times(prof_file: str) -> dict[str, float]:
    """Kernel time per op type, ms per call (median call), from an ORT profile."""
    events = [e for e in json.load(open(prof_file)) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per = collections.defaultdict(lambda: collections.defaultdict(float))  # op -> call number -> us
    seen = collections.Counter()
    for e in events:
        node = e["name"][: -len("_kernel_time")]
        per[e["args"]["op_name"]][seen[node]] += e["dur"]
        seen[node] += 1
    os.remove(prof_file)
    return {op: statistics.median(calls.values()) / 1e3 for op, calls in per.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[4, 50])
    ap.add_argument("--hidden", type=int, nargs="+", default=[1024])
    ap.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ORT's default)")
    ap.add_argument("--max-frames", type=int, default=64)
    ap.add_argument("--slow-mode", choices=SLOW_MODES, default="1d_max")
    ap.add_argument("--slow-frames", type=int, default=10)
    ap.add_argument("--fast-grid", type=int, default=4)
    ap.add_argument("--rev", default="HEAD", help="git revision of the A graph's exporter")
    ap.add_argument("--profile", action="store_true", help="also print ORT kernel time per op type")
    ap.add_argument("--bind", action="store_true",
                    help="time run_with_iobinding into a preallocated output (the graph alone: no output "
                         "allocation, no copy into a new numpy array as session.run makes)")
    args = ap.parse_args()

    spec = SlowFastSpec(args.slow_frames, args.slow_mode, args.fast_grid)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    npdt = np.float16 if args.dtype == "fp16" else np.float32
    max_frames = max(args.max_frames, *args.frames)
    export_old = old_exporter(args.rev)
    bw = copy_bandwidth()
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, threads={args.threads or 'default'}")
    timed = "run_with_iobinding, preallocated output" if args.bind else "session.run"
    print(f"spec {spec.name()}, {args.dtype}, {timed}, A = {args.rev}, B = working tree; numpy copy bandwidth "
          f"{bw / 1e9:.1f} GB/s (read + write, 256 MB)")
    print(f"{'T':>4} {'D':>5} {'A ms median (min-max)':>24} {'B ms median (min-max)':>24} {'A/B':>6} "
          f"{'floor ms':>9} {'A/floor':>8} {'B/floor':>8}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="slowfast-ab-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in args.hidden:
            paths = {}
            for name, export in (("A", export_old), ("B", export_new)):
                out = Path(tmp) / f"{name}-{d}"
                out.mkdir()
                paths[name] = export(spec, d, max_frames, out, dtype)[0]
            sessions = {k: session(p, args.threads) for k, p in paths.items()}
            for t in args.frames:
                x = np.random.default_rng(t).standard_normal((t, 576, d), dtype=np.float32).astype(npdt)
                outs = {k: s.run(None, {"features": x})[0] for k, s in sessions.items()}  # warm-up
                bad = agree(outs["B"], outs["A"], spec, 1e-6 if args.dtype == "fp32" else 2e-3)
                if bad:
                    print(f"T={t} D={d}: B disagrees with A: {bad}")
                    return 1
                calls = {k: (lambda s=s: s.run(None, {"features": x})) for k, s in sessions.items()}
                if args.bind:
                    for k, s in sessions.items():
                        io, out = s.io_binding(), np.empty_like(outs[k])
                        io.bind_cpu_input("features", x)
                        io.bind_output("visual_tokens", "cpu", 0, npdt, list(out.shape), out.ctypes.data)
                        calls[k] = (lambda s=s, io=io, out=out: (s.run_with_iobinding(io), out))
                        calls[k]()
                        if not np.array_equal(out, outs[k], equal_nan=True):
                            print(f"T={t} D={d}: {k} with a bound output differs from session.run")
                            return 1
                times = {"A": [], "B": []}
                for i in range(args.runs):
                    for k in ("A", "B") if i % 2 == 0 else ("B", "A"):
                        start = time.perf_counter()
                        calls[k]()
                        times[k].append((time.perf_counter() - start) * 1e3)
                floor = (x.nbytes + outs["A"].nbytes) / bw * 1e3
                a, b = statistics.median(times["A"]), statistics.median(times["B"])
                row = {"T": t, "D": d, "A_ms": a, "B_ms": b, "floor_ms": floor, "A": times["A"], "B": times["B"]}
                rows.append(row)
                print(f"{t:>4} {d:>5} {a:>9.2f} ({min(times['A']):.2f}-{max(times['A']):.2f})".ljust(36)
                      + f"{b:>9.2f} ({min(times['B']):.2f}-{max(times['B']):.2f})".ljust(25)
                      + f"{a / b:>6.2f}x {floor:>9.2f} {floor / a:>8.1%} {floor / b:>8.1%}")
                if args.profile:
                    for k, p in paths.items():
                        s = session(p, args.threads, str(Path(tmp) / f"prof-{k}"))
                        for _ in range(args.runs):
                            s.run(None, {"features": x})
                        ops = op_times(s.end_profiling())
                        top = sorted(ops.items(), key=lambda kv: -kv[1])[:6]
                        print(f"      {k} kernels: " + ", ".join(f"{op} {ms:.2f}" for op, ms in top))
            del sessions
    print(json.dumps({"bandwidth_GBps": bw / 1e9, "ort": ort.__version__, "args": vars(args), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
