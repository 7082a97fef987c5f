"""VideoLLaMA3 preprocessing: the runtime's numpy port vs transformers' video processor (torchvision),
same decoded frames, same settings (do_sample_frames, fps 1, max 180, min 4, the default pixel budget,
the compression mask), median of --runs; checks the outputs are identical while at it.

    python scripts/videollama3_preprocess_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = [  # (decoded frames, height, width, fps): 10 s, 60 s, 200 s of video
    (240, 480, 640, 24.0),
    (360, 480, 640, 6.0),
    (200, 720, 1280, 1.0),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()

    import sfedge  # noqa: F401  (torchvision_compat before transformers)
    from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor
    from transformers.video_utils import VideoMetadata

    from sfedge.runtime import videollama3_preprocess as vp
    from sfedge.synthetic import render_frame

    proc, spec = VideoLlama3VideoProcessor(), vp.VideoProcessorSpec()
    print(f"{'video':>22} {'frames':>6} {'grid':>10} {'numpy ms':>9} {'transformers ms':>16}  identical")
    for n, h, w, fps in CASES:
        base = [render_frame(i, w, h, seed=0) for i in range(8)]
        video = np.stack([base[i % 8] for i in range(n)])
        ours, theirs = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            idx = vp.sample_indices(n, fps, spec)
            mine = vp.preprocess_frames(video[idx], idx, fps, spec)
            ours.append(time.perf_counter() - t)
            meta = VideoMetadata(total_num_frames=n, fps=fps, width=w, height=h, duration=n / fps)
            t = time.perf_counter()
            ref = proc(videos=[video], video_metadata=[meta], do_sample_frames=True, fps=1, max_frames=180,
                       min_frames=4, return_tensors="pt", input_data_format="channels_last")
            theirs.append(time.perf_counter() - t)
        same = np.array_equal(mine.pixel_values.reshape(-1, mine.pixel_values.shape[-1]),
                              ref["pixel_values_videos"].numpy()) and np.array_equal(
            mine.keep.reshape(-1), ref["video_compression_mask"].numpy())
        print(f"{f'{n} x {w}x{h} @ {fps:g} fps':>22} {len(idx):6d} {str(mine.grid):>10} "
              f"{1e3 * statistics.median(ours):9.1f} {1e3 * statistics.median(theirs):16.1f}  {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
