"""int4 engines: one ask (4 frames, 32 tokens) with ORT profiling on the LLM session; per-op time of the decode steps (S=1 runs)."""
import json, collections, onnxruntime as ort, statistics
_SO = ort.SessionOptions
def SO():
    o = _SO(); o.enable_profiling = True; o.profile_file_prefix = "/tmp/decprof"; return o
ort.SessionOptions = SO
from sfedge.runtime.pipeline import Pipeline
from sfedge.bench.runner import synthetic_clip, QUESTION
from sfedge.spec import GenerationSpec
p = Pipeline(".cache/cpu-bench/engines-sf-llava-cpu-int4")
r = p.ask(synthetic_clip(4), QUESTION, gen=GenerationSpec(max_new_tokens=32, ignore_eos=True))
print("decode ms/token", r.timings_ms["decode"] / 31)
ev = json.load(open(p.decoder.engine.session.end_profiling()))
runs = [e for e in ev if e.get("cat") == "Session" and e["name"] == "model_run"]
dec = runs[-31:]  # the 31 decode steps after the first token
lo, hi = dec[0]["ts"], dec[-1]["ts"] + dec[-1]["dur"]
by = collections.Counter(); n = collections.Counter()
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and lo <= e["ts"] <= hi:
        key = e["args"]["op_name"] + (" lm_head" if "lm_head" in e["name"] else "")
        by[key] += e["dur"]; n[key] += 1
print("decode model_run ms median", statistics.median(d["dur"] for d in dec) / 1e3, "kernel sum / step ms", sum(by.values()) / 31e3)
for k, v in by.most_common(10): print(f"  {k:32s} {v/31e3:7.2f} ms/step  n/step={n[k]/31:.0f}")
