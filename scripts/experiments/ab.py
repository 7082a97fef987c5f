"""A/B in one process, asks alternating: A = ORT spinning on + serial preprocess (before),
B = spinning off + threaded preprocess (after). Same clip/prompt/tokens as sfedge bench."""
import os, sys, time, statistics, json
from functools import partial
import sfedge.runtime.preprocess as pp
import sfedge.runtime.pipeline as pl
from sfedge.runtime.pipeline import Pipeline
from sfedge.bench.runner import synthetic_clip, QUESTION
from sfedge.spec import GenerationSpec
eng, frames, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
video = synthetic_clip(frames); gen = GenerationSpec(max_new_tokens=32, ignore_eos=True)
orig = pp.preprocess
pipes = {}
for name, spin in (("A", "1"), ("B", "0")):
    os.environ["SFEDGE_ORT_SPINNING"] = spin
    pipes[name] = Pipeline(eng)
res = {"A": [], "B": []}
for i in range(runs + 1):
    for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
        pl.preprocess = partial(orig, workers=1) if name == "A" else orig
        t = time.perf_counter(); r = pipes[name].ask(video, QUESTION, gen=gen); wall = (time.perf_counter() - t) * 1e3
        if i:
            t = dict(r.timings_ms); t["decode_ms_per_token"] = t["decode"] / (len(r.token_ids) - 1); t["e2e"] = wall
            res[name].append(t)
keys = ("decode_video", "preprocess", "vision", "slowfast", "prefill", "decode_ms_per_token", "e2e")
print(f"{'stage':22}{'A before':>22}{'B after':>22}{'A/B':>7}")
for k in keys:
    a = [x[k] for x in res["A"]]; b = [x[k] for x in res["B"]]
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{k:22}{ma:10.1f} ({min(a):.1f}-{max(a):.1f}){mb:10.1f} ({min(b):.1f}-{max(b):.1f}){ma/mb:6.2f}x")
print(json.dumps(res))
