"""The int8 vision graph's effect (`sfedge export --vision-int8`): features and tokens against the
same engines with the fp32 vision graph, and vision time side by side (issue 18).

    PYTHONPATH=$PWD python scripts/vision_int8_effect.py tokens FP32_ENGINES INT8V_ENGINES
        the parity clips and questions of tests/test_parity.py (llama cases; the clips made as its
        fixtures make them): per case, greedy tokens (12 new) of both engines, equal prefix, exact
        agreement, first-step logits rel error, features max abs / cosine.
    PYTHONPATH=$PWD python scripts/vision_int8_effect.py speed FP32_ENGINES INT8V_ENGINES [--frames 4]
        [--rounds 5] [--threads 1]
        vision.onnx of both, alternating A B A B in one process, on the same N synthetic frames
        (preprocessed): wall and process CPU time, medians; features max abs / cosine.
    PYTHONPATH=$PWD python scripts/vision_int8_effect.py e2e FP32_ENGINES INT8V_ENGINES [--frames 4] [--rounds 2]
        whole asks (32 new tokens) through both engines in one process, alternating: stage medians.
Both directories must hold the same checkpoint's export (the second made with --vision-int8).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _features_effect(a: np.ndarray, b: np.ndarray) -> dict:
    from sfedge.export.vision_int8 import compare

    return compare(a.astype(np.float32), b.astype(np.float32))


def tokens(fp32_dir: Path, int8_dir: Path) -> dict:
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.spec import GenerationSpec
    from sfedge.synthetic import has_encoder, make_clip, make_image_dir
    from tests.test_parity import CASES, MAX_NEW_TOKENS

    root = Path(tempfile.mkdtemp(prefix="int8v-clips-"))
    clips = {"mp4-60": make_clip(root / "shapes.mp4", num_frames=60, seed=0),
             "mp4-3": make_clip(root / "three.mp4", 3, seed=1), "mp4-7": make_clip(root / "seven.mp4", 7, seed=2),
             "mp4-12": make_clip(root / "twelve.mp4", 12, seed=3), "dir-5": make_image_dir(root / "dir5", 5, seed=4),
             "dir-20": make_image_dir(root / "dir20", 20, seed=5)}
    if has_encoder("libvpx-vp9"):
        clips["webm-9"] = make_clip(root / "nine.webm", 9, seed=6)
    a, b = Pipeline(fp32_dir, prefix_reuse=False), Pipeline(int8_dir, prefix_reuse=False)
    gen = GenerationSpec(max_new_tokens=MAX_NEW_TOKENS)
    rows = []
    for clip, question, options in CASES:
        if clip not in clips:
            continue
        ra = a.ask(clips[clip], question, options, gen, record_logits=True)
        rb = b.ask(clips[clip], question, options, gen, record_logits=True)
        k = next((i for i, (x, y) in enumerate(zip(ra.token_ids, rb.token_ids)) if x != y),
                 min(len(ra.token_ids), len(rb.token_ids)))
        la, lb = ra.first_logits, rb.first_logits
        rows.append({"clip": clip, "question": question, "tokens_equal": ra.token_ids == rb.token_ids,
                     "equal_prefix": k, "compared": min(len(ra.token_ids), len(rb.token_ids)),
                     "first_logits_rel": float(np.abs(la - lb).max() / np.abs(la).max()),
                     "top1_equal": int(np.argmax(la)) == int(np.argmax(lb))})
    from sfedge.export.vision_int8 import random_frames

    feeds = random_frames(a.vision.session, 8, seed=0)
    eff = _features_effect(a.vision.infer(feeds)["features"], b.vision.infer(feeds)["features"])
    n = len(rows)
    return {"cases": n, "tokens_equal": sum(r["tokens_equal"] for r in rows),
            "top1_equal": sum(r["top1_equal"] for r in rows),
            "mean_equal_prefix": statistics.mean(r["equal_prefix"] for r in rows),
            "max_first_logits_rel": max(r["first_logits_rel"] for r in rows),
            "features_8_random_frames": eff, "rows": rows}


def speed(fp32_dir: Path, int8_dir: Path, frames: int, rounds: int, threads: int) -> dict:
    from sfedge.manifest import load_manifest
    from sfedge.runtime.engines import OrtEngine

    engines = {}
    for name, d in (("fp32", fp32_dir), ("int8", int8_dir)):
        m = load_manifest(d)
        engines[name] = OrtEngine(d / m["components"]["vision"]["path"], "cpu", threads=threads)
    from sfedge.export.vision_int8 import random_frames

    feeds = random_frames(engines["fp32"].session, frames, seed=0)
    out = {k: e.infer(feeds)["features"] for k, e in engines.items()}  # warm-up
    times = {k: {"wall_ms": [], "cpu_ms": []} for k in engines}
    for _ in range(rounds):
        for k, e in engines.items():
            t, c = time.perf_counter(), time.process_time()
            e.infer(feeds)
            times[k]["wall_ms"].append((time.perf_counter() - t) * 1e3)
            times[k]["cpu_ms"].append((time.process_time() - c) * 1e3)
    med = {k: {m: statistics.median(v) for m, v in t.items()} for k, t in times.items()}
    return {"frames": frames, "threads": threads, "rounds": rounds, "median": med,
            "speedup_wall": med["fp32"]["wall_ms"] / med["int8"]["wall_ms"],
            "speedup_cpu": med["fp32"]["cpu_ms"] / med["int8"]["cpu_ms"],
            "features": _features_effect(out["fp32"], out["int8"])}


def e2e(fp32_dir: Path, int8_dir: Path, frames: int, rounds: int, new_tokens: int = 32) -> dict:
    """Whole asks, both engines in this process, alternating A B A B (one untimed ask each first):
    a synthetic clip of `frames` frames, `new_tokens` greedy tokens (EOS ignored), the runtime's
    default threads; medians of the Pipeline's own stage timings."""
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.spec import GenerationSpec
    from sfedge.synthetic import make_clip

    clip = make_clip(Path(tempfile.mkdtemp(prefix="int8v-e2e-")) / "clip.mp4", num_frames=frames, seed=0)
    pipes = {"fp32": Pipeline(fp32_dir, prefix_reuse=False), "int8": Pipeline(int8_dir, prefix_reuse=False)}
    gen = GenerationSpec(max_new_tokens=new_tokens, ignore_eos=True)
    q = "What is happening in the video?"
    for p in pipes.values():
        p.ask(clip, q, gen=gen)
    runs = {k: [] for k in pipes}
    for _ in range(rounds):
        for k, p in pipes.items():
            runs[k].append(p.ask(clip, q, gen=gen).timings_ms)
            print(k, {s: round(v) for s, v in runs[k][-1].items()}, file=sys.stderr, flush=True)
    med = {k: {s: statistics.median(r[s] for r in rs) for s in rs[0]} for k, rs in runs.items()}
    return {"frames": frames, "rounds": rounds, "new_tokens": new_tokens, "median_ms": med,
            "speedup": {s: med["fp32"][s] / med["int8"][s] for s in ("vision", "ttft", "total") if med["int8"][s]}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("tokens", "speed", "e2e"))
    p.add_argument("fp32", type=Path)
    p.add_argument("int8", type=Path)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    load = os.getloadavg()[0]
    if args.mode == "tokens":
        res = tokens(args.fp32, args.int8)
    elif args.mode == "speed":
        res = speed(args.fp32, args.int8, args.frames, args.rounds, args.threads)
    else:
        res = e2e(args.fp32, args.int8, args.frames, args.rounds)
    res["load_average"] = [load, os.getloadavg()[0]]
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
