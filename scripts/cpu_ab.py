"""A/B of LLM decoder settings on the CPU, side by side in one run (issue 18).

    PYTHONPATH=$PWD python scripts/cpu_ab.py ENGINES --variant NAME=SPEC [--variant ...] \
        [--positions 3008] [--decode-steps 16] [--rounds 3] [--no-prefill] [--json]

SPEC: comma-separated key=value over the runtime's defaults: `llm=DIR` (another llm/ directory,
e.g. an accuracy-level or KV-dtype variant of the same weights), `threads=N` (intra-op threads),
`spinning=0|1`, `block_base=N` (session.dynamic_block_base), `chunk=N` (the Pipeline's
prefill_chunk). An empty SPEC is the default. Each round runs every variant once, in order
(A B C, A B C, ...), each in a fresh process that opens the decoder as the runtime does
(OrtEngine + Decoder), runs one untimed prefill + 2 decode steps, then times a prefill of N
random positions and `--decode-steps` greedy decode steps after it. Medians over rounds;
ratios against the first variant. The load average is printed before and after.

Each time is given as wall clock (`_ms`) and as the process's CPU time (`_cpu_ms`, all its threads).
On a machine shared with other work, wall clock with 2 intra-op threads on 2 cores swings several-fold
(a preempted worker stalls every parallel section), so kernel choices are compared with `threads=1`,
whose CPU time is the work itself; thread settings can only be judged by wall clock on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _open(engines: Path, spec: dict):
    """(Decoder, prefill chunk) for one variant, opened as the runtime opens the LLM."""
    from sfedge.manifest import load_manifest
    from sfedge.runtime import engines as eng
    from sfedge.runtime.pipeline import open_decoder, shares_buffer

    manifest = load_manifest(engines)
    comps = manifest["components"]
    llm_path = Path(spec["llm"]) / "model.onnx" if "llm" in spec else engines / comps["llm"]["path"]
    plain = eng.session_options

    def options(provider, *, threads=0):
        opts = plain(provider, threads=threads)
        if "block_base" in spec:
            opts.add_session_config_entry("session.dynamic_block_base", str(spec["block_base"]))
        return opts

    eng.session_options = options
    try:
        spinning = None if "spinning" not in spec else spec["spinning"] == "1"
        llm = eng.OrtEngine(llm_path, "cpu", threads=int(spec.get("threads", 0)), mem_reuse=True, spinning=spinning)
    finally:
        eng.session_options = plain
    dec = open_decoder(engines, manifest, llm, shares_buffer(engines, comps["llm"]))
    chunk = int(spec["chunk"]) if "chunk" in spec else None
    return dec, chunk


def _child(engines: Path, spec: dict, positions: list[int], steps: int, do_prefill: bool) -> dict:
    import numpy as np

    from sfedge.runtime.generate import decode_one, prefill

    dec, chunk = _open(engines, spec)
    table = dec.table
    rng = np.random.default_rng(0)
    out = {}

    def step() -> None:
        dec.step.run_with_iobinding(dec.step_binding)
        decode_one(dec)

    warm = (rng.standard_normal((1, 64, table.shape[1])) * 0.02).astype(dec.dtype)
    prefill(dec, warm, chunk)
    step()
    step()
    for n in positions:
        embeds = (rng.standard_normal((1, n, table.shape[1])) * 0.02).astype(dec.dtype)
        dec.reset()
        if do_prefill:
            t, c = time.perf_counter(), time.process_time()
            prefill(dec, embeds, chunk)
            out[f"prefill@{n}_ms"] = (time.perf_counter() - t) * 1e3
            out[f"prefill@{n}_cpu_ms"] = (time.process_time() - c) * 1e3
        else:  # fill the cache untimed, in 1,024-position chunks
            prefill(dec, embeds, 1024)
        times, cpu = [], []
        for _ in range(steps):
            t, c = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[f"decode@{n}_ms"] = statistics.median(times) * 1e3
        out[f"decode@{n}_cpu_ms"] = statistics.median(cpu) * 1e3
    return out


def interleaved(engines: Path, variants: list, n: int, steps: int, rounds: int) -> dict:
    """Decode only, all variants in this process: each variant's cache filled to `n` positions once,
    then `rounds` x (for each variant: `steps` decode steps from context n), ABAB...; per-step wall and
    CPU time, medians. Meant for threads=1 variants (no worker pools competing between sessions)."""
    import numpy as np

    from sfedge.runtime.generate import decode_one, prefill

    decs = {}
    for name, spec in variants:
        dec, _ = _open(engines, dict(kv.split("=", 1) for kv in spec.split(",") if kv))
        embeds = (np.random.default_rng(0).standard_normal((1, n, dec.table.shape[1])) * 0.02).astype(dec.dtype)
        prefill(dec, embeds, 1024)
        decs[name] = dec
    times = {name: {"wall": [], "cpu": []} for name in decs}
    for _ in range(rounds):
        for name, dec in decs.items():
            dec.truncate(n)
            dec.set_mask(n)
            for _ in range(steps):
                t, c = time.perf_counter(), time.process_time()
                dec.step.run_with_iobinding(dec.step_binding)
                decode_one(dec)
                times[name]["wall"].append((time.perf_counter() - t) * 1e3)
                times[name]["cpu"].append((time.process_time() - c) * 1e3)
    return {name: {f"decode@{n}_ms": statistics.median(t["wall"]), f"decode@{n}_cpu_ms": statistics.median(t["cpu"])}
            for name, t in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engines", type=Path)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=SPEC")
    p.add_argument("--positions", type=int, nargs="+", default=[3008])
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-prefill", dest="prefill", action="store_false")
    p.add_argument("--json", action="store_true")
    p.add_argument("--interleaved", action="store_true",
                   help="decode only, every variant in this one process, alternating every --decode-steps steps")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        spec = dict(kv.split("=", 1) for kv in args.child.split(",") if kv)
        print(json.dumps(_child(args.engines, spec, args.positions, args.decode_steps, args.prefill)))
        return 0
    variants = [v.split("=", 1) if "=" in v else (v, "") for v in args.variant] or [("default", "")]
    load = [os.getloadavg()]
    results = {name: [] for name, _ in variants}
    if args.interleaved:
        for n in args.positions:
            for name, r in interleaved(args.engines, variants, n, args.decode_steps, args.rounds).items():
                (results[name] or results[name].append({}) or results[name])[0].update(r)
    for r in range(0 if args.interleaved else args.rounds):
        for name, spec in variants:
            cmd = [sys.executable, __file__, str(args.engines), "--child", spec, "--positions", *map(str, args.positions),
                   "--decode-steps", str(args.decode_steps)] + ([] if args.prefill else ["--no-prefill"])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr[-2000:], file=sys.stderr)
                return 1
            results[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {name}: {results[name][-1]} (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    load.append(os.getloadavg())
    keys = list(results[variants[0][0]][0])
    summary = {name: {k: statistics.median(x[k] for x in runs) for k in keys} for name, runs in results.items()}
    base = summary[variants[0][0]]
    print(f"load average before {load[0][0]:.2f}, after {load[1][0]:.2f}; {args.rounds} rounds, medians (ms), "
          f"ratio = {variants[0][0]} / variant (> 1: variant faster)")
    print(f"  {'variant':12}" + "".join(f"{k:>22}{'ratio':>6}" for k in keys))
    for name, _ in variants:
        print(f"  {name:12}" + "".join(f"{summary[name][k]:>22.1f}{base[k] / summary[name][k]:>6.2f}" for k in keys))
    if args.json:
        print(json.dumps({"variants": dict(variants), "runs": results, "median": summary, "load": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
