"""Live-video figures of docs/BENCHMARKS.md ("watch"), side by side in one run, on one engines dir.

    PYTHONPATH=$PWD python scripts/watch_bench.py .cache/cpu-bench/engines-sf-llava-cpu-fp32 \
        --config ~/.cache/sfedge/presets/sf-llava-cpu/config.json --runs 3 --out .cache/watch-bench.json

1. `watch` over a synthetic 640x480 clip (26 s at 10 fps), --fps 2 --window 50 --no-realtime:
   sustained vision throughput (frames encoded per second of wall time, first frame excluded), and
   the watch loop's own answer lines.
2. For each run, in this order (so that the two cold prefills are adjacent in time): (c) TTFT
   re-encoding the window (`ask_frames` on the 50 frames: preprocess + vision + pooling + cold
   prefill), as a peer that re-encodes its window per question does; (a) TTFT of the same question
   over the full 50-frame window whose features are cached (pooling + a cold prefill: prefix reuse
   off); (b) a second question about the same frames (prefix reuse on: only it is prefilled).
Checks: (a) == (c) - (preprocess + vision of c) within 5%; ratio (c)/(a) against FLOPs'
prediction (roofline.py); (a)/(b) against the 20x target. Prints one JSON object (last line).
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

Q1 = "What happens in the video? Describe the moving objects."
Q2 = "What colour is the largest circle?"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("engines")
    ap.add_argument("--config", help="the checkpoint's config.json, for the FLOPs prediction")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from sfedge.runtime.pipeline import Pipeline
    from sfedge.runtime.sources import AvSource, open_source
    from sfedge.runtime.watch import FpsSampler, Question, Schedule, Watcher, watch
    from sfedge.spec import GenerationSpec
    from sfedge.synthetic import make_clip

    gen = GenerationSpec(max_new_tokens=args.new_tokens)
    tmp = Path(tempfile.mkdtemp(prefix="watch-bench-"))
    seconds = (args.window + 2) / 2
    clip = make_clip(tmp / "clip.mp4", num_frames=int(seconds * 10), width=640, height=480, fps=10, seed=7)
    t = time.perf_counter()
    pipe = Pipeline(args.engines, prefix_cache_mb=0)
    load_s = time.perf_counter() - t
    info = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "load_start": os.getloadavg()[0],
            "engines": str(args.engines), "pipeline_load_s": round(load_s, 1), "window": args.window,
            "new_tokens": args.new_tokens, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(info), flush=True)

    # 1. watch: each frame encoded once, as fast as possible
    done = []

    class Timed:  # the pipeline's encoder, with the time each frame finished
        def encode_resized(self, resized, **kw):
            out = pipe.encoder.encode_resized(resized, **kw)
            done.append(time.perf_counter())
            return out

    watcher = Watcher(pipe, window=args.window, gen=gen, encoder=Timed())
    lines = []
    t_watch = time.perf_counter()
    result = watch(watcher, open_source(str(clip)), Schedule([Question(Q1, t=999.0), Question(Q2, t=999.0)]),
                   fps=2.0, realtime=False, on_answer=lambda record, res: lines.append(record))
    n = result.stats.frames_encoded
    watch_fig = {
        "frames_encoded": n, "stream_wall_s": round(done[-1] - t_watch, 2),
        "sustained_vision_fps": round((n - 1) / (done[-1] - done[0]), 4),
        "vision_ms_per_frame": round(watcher.timings["vision"] / n, 1),
        "preprocess_ms_per_frame": round(watcher.timings["preprocess"] / n, 1),
        "answers": lines,
    }
    print(json.dumps({"watch": watch_fig}), flush=True)

    # 2. cached window vs a second question vs re-encoding the window, alternating
    sampler = FpsSampler(2.0)
    frames = [f for t, f in AvSource(str(clip), live=False).frames() if sampler.take(t)][-args.window:]
    keys, features = watcher.window.snapshot()
    prefix = pipe.answerer.prefix
    rows = []
    for i in range(args.runs):
        row = {"load": os.getloadavg()[0]}
        prefix.enabled = False  # re-encode first, then the cached window at once: adjacent prefills
        c = pipe.ask_frames(frames, Q1, gen=gen)
        visual = pipe.window(keys, lambda: __import__("numpy").stack(features))
        a = _drain(pipe.stream_visual(visual, Q1, None, gen, t0=time.perf_counter()))
        prefix.enabled = True
        b = _drain(pipe.stream_visual(visual, Q2, None, gen, t0=time.perf_counter()))
        row.update(
            cached_ttft_ms=a.timings_ms["ttft"], cached_slowfast_ms=a.timings_ms["slowfast"],
            cached_prefill_ms=a.timings_ms["prefill"], prompt_tokens=a.prompt_tokens,
            second_ttft_ms=b.timings_ms["ttft"], second_prefilled_tokens=b.prompt_tokens - b.reused_prompt_tokens,
            reencode_ttft_ms=c.timings_ms["ttft"], reencode_vision_ms=c.timings_ms["vision"],
            reencode_preprocess_ms=c.timings_ms["preprocess"], reencode_prefill_ms=c.timings_ms["prefill"],
            same_tokens_cached_vs_reencode=a.token_ids == c.token_ids,
        )
        row["reencode_minus_vision_ms"] = row["reencode_ttft_ms"] - row["reencode_vision_ms"] - row["reencode_preprocess_ms"]
        rows.append(row)
        print(json.dumps({"run": i, **{k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}}),
              flush=True)
    prefix.enabled = True

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], float)}
    summary = {
        "median": {k: round(v, 1) for k, v in med.items()},
        "cached_vs_reencode_minus_vision": round(med["cached_ttft_ms"] / med["reencode_minus_vision_ms"] - 1, 4),
        "cached_vs_reencode_minus_vision_per_run": [round(r["cached_ttft_ms"] / r["reencode_minus_vision_ms"] - 1, 4)
                                                    for r in rows],
        "ratio_reencode_over_cached": round(med["reencode_ttft_ms"] / med["cached_ttft_ms"], 2),
        "ratio_first_over_second": round(med["cached_ttft_ms"] / med["second_ttft_ms"], 1),
    }
    if args.config:
        from sfedge.bench.roofline import Geometry, prefill_flops, vision_flops_per_frame

        g = Geometry.from_config(json.loads(Path(args.config).expanduser().read_text()))
        v, p = args.window * vision_flops_per_frame(g), prefill_flops(g, rows[0]["prompt_tokens"])
        summary["flops"] = {"vision_TFLOP": round(v / 1e12, 3), "prefill_TFLOP": round(p / 1e12, 3),
                            "predicted_ratio_reencode_over_cached": round((v + p) / p, 2)}
    summary["load_end"] = os.getloadavg()[0]
    out = {**info, "watch": watch_fig, "runs": rows, "summary": summary}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out), flush=True)
    return 0


def _drain(stream):
    while True:
        try:
            next(stream)
        except StopIteration as done:
            return done.value


if __name__ == "__main__":
    sys.exit(main())
