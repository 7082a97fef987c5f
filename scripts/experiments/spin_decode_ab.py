"""int4 engines: decode ms/token with ORT spinning on vs off (two Pipelines in one process, alternating; 256-token prompt, 64 new tokens, greedy)."""
import os, time, statistics, numpy as np
from sfedge.runtime.pipeline import Pipeline
from sfedge.runtime.generate import generate
from sfedge.spec import GenerationSpec
pipes = {}
for spin in ("1", "0"):
    os.environ["SFEDGE_ORT_SPINNING"] = spin; pipes[spin] = Pipeline(".cache/cpu-bench/engines-sf-llava-cpu-int4")
emb = pipes["1"].decoder.table[np.random.default_rng(0).integers(0, 1000, 256)][None]
gen = GenerationSpec(max_new_tokens=64, ignore_eos=True)
ts = {"1": [], "0": []}
for i in range(7):
    for s in (("1", "0") if i % 2 == 0 else ("0", "1")):
        it = generate(pipes[s].decoder, emb, gen, set()); next(it); t = time.perf_counter(); n = sum(1 for _ in it)
        if i: ts[s].append((time.perf_counter() - t) * 1e3 / n)
for s, v in ts.items(): print(f"spinning {'on ' if s == '1' else 'off'}: decode {statistics.median(v):.2f} ms/token ({min(v):.2f}-{max(v):.2f}), 256-token prompt, 63 steps, 6 rounds")
