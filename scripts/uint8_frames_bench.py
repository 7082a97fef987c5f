"""Host preprocessing before / after the uint8 vision input (issue 15 item 3), side by side.

    before: `preprocess`    = PIL bicubic resize + CLIP normalisation -> float32 [T,3,336,336]
                              (the vision input of manifest schema 1)
    after:  `resize_frames` = the same resize -> uint8 [T,336,336,3] (schema 2; the graph normalises)

Both on the same 50 frames, alternating, `--rounds` rounds each, medians and the ratio; the bytes per
frame that cross to the device are those of the arrays each path hands the vision engine. With
`--vision` also the tiny model's vision graph on the CPU provider, the float-input graph (fed the
host-normalised pixels) against the uint8 graph (fed the resized frames): where the normalisation's
cost went on a CPU-only machine, and a check that both give the same features.

    PYTHONPATH=$PWD python scripts/uint8_frames_bench.py --rounds 15 --vision

One JSON object on the last line of stdout. Needs torch only for --vision (it exports the graphs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfedge.runtime.preprocess import preprocess, resize_frames  # noqa: E402
from sfedge.synthetic import render_frame  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def side_by_side(before, after, rounds: int) -> dict:
    before(), after()  # warm-up (thread pool, PIL)
    a, b = [], []
    for _ in range(rounds):
        a.append(timed(before))
        b.append(timed(after))
    ma, mb = statistics.median(a), statistics.median(b)
    return {"before_ms": round(ma, 2), "after_ms": round(mb, 2), "ratio": round(ma / mb, 2),
            "before_ms_all": [round(x, 1) for x in a], "after_ms_all": [round(x, 1) for x in b]}


def host_preprocessing(frames: int, width: int, height: int, rounds: int) -> dict:
    clip = [render_frame(i, width, height, seed=0) for i in range(frames)]
    pixels, resized = preprocess(clip), resize_frames(clip)
    out = side_by_side(lambda: preprocess(clip), lambda: resize_frames(clip), rounds)
    out.update(source=f"{width}x{height}", frames=frames,
               bytes_per_frame_before=pixels[0].nbytes, bytes_per_frame_after=resized[0].nbytes,
               bytes_ratio=pixels[0].nbytes / resized[0].nbytes,
               bytes_per_clip_before=pixels.nbytes, bytes_per_clip_after=resized.nbytes)
    return out


def vision_graphs(frames: int, rounds: int) -> dict:
    """The tiny model's vision graph, float-input (schema 1) vs uint8 (schema 2), CPU provider."""
    import onnxruntime as ort
    import torch

    from sfedge.export.graphs import export_onnx
    from sfedge.export.registry import ComponentSpec, IOSpec
    from sfedge.export.vision import build_vision, export_vision
    from sfedge.models.tiny import make_tiny
    from sfedge.reference.model import SlowFastLlava
    from sfedge.runtime.preprocess import normalise

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref = SlowFastLlava.from_pretrained(make_tiny(tmp / "tiny", seed=0), torch.float32, "cpu")
        new, _ = export_vision(ref.model, 64, tmp)
        d = ref.model.config.text_config.hidden_size
        spec = ComponentSpec("vision", "vision_float.onnx",
                             (IOSpec("pixel_values", "float32", ("T", 3, 336, 336), {"T": (1, 64)}),),
                             (IOSpec("features", "float32", ("T", 576, d), {"T": (1, 64)}),))
        old = export_onnx(build_vision(ref.model), torch.randn(2, 3, 336, 336), spec, tmp)
        s_old, s_new = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (old, new))
        clip = [render_frame(i, 320, 240, seed=0) for i in range(frames)]
        resized = resize_frames(clip)
        pixels = normalise(resized)
        same = np.array_equal(s_old.run(None, {"pixel_values": pixels})[0], s_new.run(None, {"frames": resized})[0])
        out = side_by_side(lambda: s_old.run(None, {"pixel_values": normalise(resize_frames(clip))}),
                           lambda: s_new.run(None, {"frames": resize_frames(clip)}), rounds)
        out.update(what="host preprocessing + tiny vision graph (CPU provider), 320x240 source",
                   features_bit_identical=bool(same), hidden_size=d)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--vision", action="store_true", help="also the tiny vision graphs (needs torch)")
    args = p.parse_args()
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_before": os.getloadavg(),
              "host": [host_preprocessing(args.frames, w, h, args.rounds) for w, h in ((320, 240), (1280, 720))]}
    if args.vision:
        report["vision_cpu"] = vision_graphs(args.frames, args.rounds)
    report["load_after"] = os.getloadavg()
    for h in report["host"]:
        print(f"{h['frames']} frames {h['source']}: before {h['before_ms']} ms, after {h['after_ms']} ms "
              f"({h['ratio']}x); {h['bytes_per_frame_before']} -> {h['bytes_per_frame_after']} bytes/frame")
    if args.vision:
        v = report["vision_cpu"]
        print(f"tiny vision on CPU incl. host preprocessing: before {v['before_ms']} ms, after {v['after_ms']} ms "
              f"({v['ratio']}x), features bit-identical: {v['features_bit_identical']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
