"""Per-op profile of the LLM decoder on the CPU: prefill and decode at several positions, each op
type's time against its floor (issue 18).

    PYTHONPATH=$PWD python scripts/cpu_profile.py ENGINES [--positions 64 1024 3008] [--decode-steps 8]
        [--reps 2] [--out DIR] [--threads N] [--json]

What it does:
1. Ceilings, measured here (best of a few): fp32 GEMM throughput with ONNX Runtime's own MatMul
   (MLAS, the kernels the engines use) and with numpy, M x K x N = 128 x 512 x 1024; memory
   read bandwidth with a read-only pass (ORT ReduceSum and numpy sum over 64 MiB); the larger of
   each pair is the ceiling; best wall time of 100 short calls (a busy machine only slows calls down). int8 GEMM throughput (ORT MatMulInteger) is printed beside it
   (MatMulNBits with accuracy_level 4 computes in int8 on this CPU) but floors use fp32 GEMM.
2. The decoder opened exactly as the runtime opens it (`Pipeline`'s OrtEngine + Decoder: shared
   KV buffer, static decode mask, default session options) with ONNX Runtime's profiler on
   (`SessionOptions.enable_profiling`), then for each N: a prefill of N random positions, then
   `--decode-steps` greedy decode steps at context N..N+steps, `--reps` times.
3. The profile's node events split per Run (its `model_run` events), aggregated by op type;
   floors per node: max(FLOPs / GEMM rate, bytes / bandwidth). FLOPs: MatMul / MatMulNBits
   2*M*K*N; GroupQueryAttention 4*H*d per (query, key) pair, pairs = causal (prefill) or
   the context (decode). Bytes: the node's parameter_size + activation_size + output_size as the
   profiler reports them, except GroupQueryAttention, whose KV inputs are the whole
   max_length buffer: its bytes are the K and V it reads (context x H_kv x d x itemsize x 2) + q
   and the output.
Medians over reps; times are kernel times (ORT's per-node durations), the run's wall time beside.
On a shared machine use `--threads 1 --cpu-scaled`: every node time of a Run is multiplied by that
Run's process CPU time / wall time (the share of the core it got), which removes the other users'
time slices; ceilings are then measured with one thread too.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def _best(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls: other users' time slices only ever slow a call down, so on a
    shared machine the best of many short calls is the estimate of the ceiling."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _ort_session(node, inputs, outputs, threads: int = 0):
    graph = helper.make_graph([node], "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ceilings(repeats: int = 100, threads: int = 0) -> dict:
    """Measured fp32 GEMM rate (TFLOP/s), int8 GEMM rate and read bandwidth (GB/s) on this CPU:
    the best of `repeats` short calls (a few ms each, shorter than a scheduler time slice)."""
    rng = np.random.default_rng(0)
    m, k, n = 128, 512, 1024  # 0.13 GFLOP: ~1.5 ms at MLAS rate, inside one scheduler time slice
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    flops = 2 * m * k * n
    mm = _ort_session(helper.make_node("MatMul", ["a", "b"], ["c"]),
                      [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
                       helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])],
                      [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])], threads)
    t_ort = _best(lambda: mm.run(None, {"a": a, "b": b}), repeats)
    t_np = _best(lambda: a @ b, repeats)
    a8 = rng.integers(0, 255, (m, k), dtype=np.uint8)
    b8 = rng.integers(-127, 127, (k, n), dtype=np.int8)
    mi = _ort_session(helper.make_node("MatMulInteger", ["a", "b"], ["c"]),
                      [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
                       helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])],
                      [helper.make_tensor_value_info("c", TensorProto.INT32, [m, n])], threads)
    t_i8 = _best(lambda: mi.run(None, {"a": a8, "b": b8}), repeats)
    big = rng.standard_normal(16 * 2**20, dtype=np.float32)  # 64 MiB: twice the 32 MiB L3
    rs = _ort_session(helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0),
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [big.size])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], threads)
    t_rs = _best(lambda: rs.run(None, {"x": big}), repeats)
    t_sum = _best(lambda: big.sum(), repeats)
    return {
        "gemm_fp32_TFLOPs": {"ort_mlas": flops / t_ort / 1e12, "numpy": flops / t_np / 1e12},
        "gemm_int8_TOPs_ort": flops / t_i8 / 1e12,
        "read_GBps": {"ort_reducesum": big.nbytes / t_rs / 1e9, "numpy_sum": big.nbytes / t_sum / 1e9},
        "matmul_TFLOPs": max(flops / t_ort, flops / t_np) / 1e12,
        "bandwidth_GBps": max(big.nbytes / t_rs, big.nbytes / t_sum) / 1e9,
        "how": f"fp32 GEMM {m}x{k}x{n} (ORT MatMul, numpy), int8 ORT MatMulInteger same shape, read-only pass "
               f"over 64 MiB fp32 (ORT ReduceSum, numpy sum); best wall time of {repeats}; ceiling = the larger; "
               f"intra-op threads {threads or 'default'}",
    }


def _open_decoder(root: Path, threads: int, profile_prefix: str):
    """The runtime's OrtEngine + Decoder for the engines' LLM, with ORT's profiler on."""
    from sfedge.manifest import load_manifest
    from sfedge.runtime import engines
    from sfedge.runtime.pipeline import open_decoder, shares_buffer

    manifest = load_manifest(root)
    comps = manifest["components"]
    plain = engines.session_options

    def profiled(provider, *, threads=0):
        opts = plain(provider, threads=threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
        return opts

    engines.session_options = profiled
    try:
        shared = shares_buffer(root, comps["llm"])
        llm = engines.OrtEngine(root / comps["llm"]["path"], "cpu", threads=threads, mem_reuse=shared)
    finally:
        engines.session_options = plain
    return manifest, open_decoder(root, manifest, llm, shared)


def _shape(args: dict, key: str) -> list[list[int]]:
    return [list(d.values())[0] for d in args.get(key, [])]


def node_floor(ev: dict, ctx: int, causal: bool, kv: dict, c: dict) -> tuple[float, float, float]:
    """(flops, bytes, floor seconds) of one profiled node. `ctx`: keys each query sees (decode:
    context; prefill: the run's positions, causal)."""
    op, a = ev["args"]["op_name"], ev["args"]
    ins, outs = _shape(a, "input_type_shape"), _shape(a, "output_type_shape")
    nbytes = int(a.get("parameter_size", 0)) + int(a.get("activation_size", 0)) + int(a.get("output_size", 0))
    flops = 0.0
    if op in ("MatMul", "MatMulNBits", "FusedMatMul") and ins and outs:
        m, k, n = int(np.prod(outs[0][:-1])), ins[0][-1], outs[0][-1]
        flops = 2.0 * m * k * n
        if op == "MatMulNBits":  # the profiler counts the scales but not the prepacked int4 weight
            nbytes = 4 * (m * k + m * n) + k * n // 2 + (k // kv["block_size"]) * n * 4
    elif op == "GroupQueryAttention" and ins:
        q = ins[0]  # [B, S, H*d] (packed q only when k and v come separately)
        s = q[1]
        h_d = outs[0][-1]  # H * d
        pairs = s * (s + 1) / 2 if causal else s * ctx
        flops = 4.0 * h_d * pairs
        kv_bytes = 2 * ctx * kv["num_kv_heads"] * kv["head_dim"] * kv["itemsize"]
        nbytes = kv_bytes + int(np.prod(q)) * 4 + int(np.prod(outs[0])) * 4
    floor = max(flops / (c["matmul_TFLOPs"] * 1e12), nbytes / (c["bandwidth_GBps"] * 1e9))
    return flops, nbytes, floor


def split_runs(events: list[dict]) -> list[list[dict]]:
    """Node events grouped by the Run (`model_run` event) that contains them, in order."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    out = [[] for _ in runs]
    starts = [r["ts"] for r in runs]
    import bisect

    for e in nodes:
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i >= 0 and e["ts"] <= runs[i]["ts"] + runs[i]["dur"]:
            out[i].append(e)
    return out, [r["dur"] / 1e3 for r in runs]


def aggregate(nodes: list[dict], ctx: int, causal: bool, kv: dict, c: dict) -> dict:
    by = defaultdict(lambda: {"ms": 0.0, "floor_ms": 0.0, "flops": 0.0, "bytes": 0.0, "count": 0})
    for e in nodes:
        op = e["args"]["op_name"]
        if op == "MatMulNBits" and "lm_head" in e["name"]:
            op = "MatMulNBits (lm_head)"
        flops, nbytes, floor = node_floor(e, ctx, causal, kv, c)
        d = by[op]
        d["ms"] += e["dur"] / 1e3
        d["floor_ms"] += floor * 1e3
        d["flops"] += flops
        d["bytes"] += nbytes
        d["count"] += 1
    return dict(by)


def _median_tables(tables: list[dict]) -> dict:
    ops = set().union(*tables)
    out = {}
    for op in ops:
        rows = [t[op] for t in tables if op in t]
        out[op] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return out


def profile(root: Path, positions: list[int], decode_steps: int, reps: int, threads: int, c: dict, log,
            cpu_scaled: bool = False) -> dict:
    from sfedge.runtime.generate import decode_one, prefill

    tmp = tempfile.mkdtemp(prefix="sfedge-prof-")
    manifest, dec = _open_decoder(root, threads, os.path.join(tmp, "llm"))
    m = manifest["model"]
    kv = {"num_kv_heads": m["num_kv_heads"], "head_dim": m["head_dim"], "itemsize": np.dtype(dec.dtype).itemsize,
          "block_size": (manifest.get("quantization") or {}).get("block_size", 32)}
    rng = np.random.default_rng(0)
    plan = []  # (kind, N, ctx) per Run, in order
    busy = []  # (process CPU s, wall s) per Run
    for _ in range(reps):
        for n in positions:
            dec.reset()
            embeds = (rng.standard_normal((1, n, dec.table.shape[1])) * 0.02).astype(dec.dtype)
            c0, t0 = time.process_time(), time.perf_counter()
            prefill(dec, embeds)
            busy.append((time.process_time() - c0, time.perf_counter() - t0))
            plan.append(("prefill", n, n))
            for i in range(decode_steps):
                dec.step.run_with_iobinding(dec.step_binding)  # greedy token -> embeds (not profiled)
                c0, t0 = time.process_time(), time.perf_counter()
                decode_one(dec)
                busy.append((time.process_time() - c0, time.perf_counter() - t0))
                plan.append(("decode", n, n + i + 1))
            log(f"  rep done for N={n}")
    path = dec.engine.session.end_profiling()
    events = json.loads(Path(path).read_text())
    runs, walls = split_runs(events)
    if len(runs) != len(plan):
        raise RuntimeError(f"profile has {len(runs)} runs, expected {len(plan)}")
    result = {}
    for n in positions:
        for kind in ("prefill", "decode"):
            idx = [i for i, p in enumerate(plan) if p[0] == kind and p[1] == n]
            # --cpu-scaled (one intra-op thread on a shared machine): each node's wall time times the
            # Run's CPU time / wall time, i.e. the time it would take with the core to itself
            scale = [min(1.0, busy[i][0] / busy[i][1]) if cpu_scaled else 1.0 for i in idx]
            for i, f in zip(idx, scale):
                for e in runs[i]:
                    e["dur"] = e["dur"] * f
            tables = [aggregate(runs[i], plan[i][2], kind == "prefill", kv, c) for i in idx]
            result[f"{kind}@{n}"] = {"ops": _median_tables(tables),
                                     "wall_ms": statistics.median(walls[i] * f for i, f in zip(idx, scale)),
                                     "kernel_ms": statistics.median(sum(e["dur"] for e in runs[i]) / 1e3 for i in idx),
                                     "cpu_share": statistics.median(scale), "runs": len(idx)}
    for f in glob.glob(os.path.join(tmp, "*")):
        os.unlink(f)
    os.rmdir(tmp)
    return result


def format_table(result: dict, top: int = 8) -> str:
    lines = []
    for key, r in result.items():
        ops = sorted(r["ops"].items(), key=lambda kv: -kv[1]["ms"])
        floor_total = sum(o["floor_ms"] for _, o in ops)
        lines.append(f"{key}: run {r['wall_ms']:.2f} ms, {r['kernel_ms']:.2f} ms in kernels, floor "
                     f"{floor_total:.2f} ms ({floor_total / r['wall_ms']:.0%} of the run; CPU share {r['cpu_share']:.2f})")
        lines.append(f"  {'op':28}{'ms':>10}{'share':>8}{'floor ms':>10}{'floor/t':>9}{'GFLOP':>9}{'MB':>9}")
        for op, o in ops[:top]:
            lines.append(f"  {op:28}{o['ms']:>10.2f}{o['ms'] / r['kernel_ms']:>8.1%}{o['floor_ms']:>10.2f}"
                         f"{o['floor_ms'] / o['ms'] if o['ms'] else 0:>9.0%}{o['flops'] / 1e9:>9.2f}{o['bytes'] / 1e6:>9.1f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engines")
    p.add_argument("--positions", type=int, nargs="+", default=[64, 1024, 3008])
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cpu-scaled", action="store_true",
                   help="with --threads 1 on a shared machine: scale each Run's node times by its CPU time / wall time")
    p.add_argument("--out", type=Path, default=None, help="write profile.json here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    log(f"load: {os.getloadavg()}")
    c = ceilings(threads=args.threads)
    log(f"ceilings: fp32 GEMM {c['matmul_TFLOPs'] * 1e3:.0f} GFLOP/s (ORT {c['gemm_fp32_TFLOPs']['ort_mlas'] * 1e3:.0f}, "
        f"numpy {c['gemm_fp32_TFLOPs']['numpy'] * 1e3:.0f}), int8 GEMM {c['gemm_int8_TOPs_ort'] * 1e3:.0f} GOP/s, read "
        f"{c['bandwidth_GBps']:.1f} GB/s (ORT {c['read_GBps']['ort_reducesum']:.1f}, numpy {c['read_GBps']['numpy_sum']:.1f})")
    if args.cpu_scaled and args.threads != 1:
        p.error("--cpu-scaled needs --threads 1")
    result = profile(Path(args.engines), args.positions, args.decode_steps, args.reps, args.threads, c, log,
                     args.cpu_scaled)
    load_after = os.getloadavg()
    print(format_table(result))
    out = {"ceilings": c, "profile": result, "load_after": load_after, "ort": ort.__version__}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile.json").write_text(json.dumps(out, indent=1))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
