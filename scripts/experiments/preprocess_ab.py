"""preprocess() of the bench clips (320x240 -> 336x336, PIL bicubic): workers=1 (the old serial path) vs default (one thread per core), alternating, 7 rounds."""
import numpy as np, time, statistics
from sfedge.runtime.preprocess import preprocess
from sfedge.runtime.video import load_video
from sfedge.bench.runner import synthetic_clip
for n in (4, 50):
    clip = load_video(synthetic_clip(n), n)
    assert np.array_equal(preprocess(clip.frames, workers=1), preprocess(clip.frames))
    ts = {1: [], None: []}
    for i in range(7):
        for w in ((1, None) if i % 2 == 0 else (None, 1)):
            t = time.perf_counter(); preprocess(clip.frames, workers=w); ts[w].append((time.perf_counter() - t) * 1e3)
    a, b = statistics.median(ts[1]), statistics.median(ts[None])
    print(f"{n} frames: serial {a:.1f} ms ({min(ts[1]):.1f}-{max(ts[1]):.1f}), threaded {b:.1f} ms ({min(ts[None]):.1f}-{max(ts[None]):.1f}), {a/b:.2f}x, outputs identical")
