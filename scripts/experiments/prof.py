"""Profile vision.onnx (T frames) and the LLM prefill (S tokens) + decode steps with ORT profiling; op-type breakdown."""
import json, sys, time, collections, os
import numpy as np, onnxruntime as ort
root = sys.argv[1]; T = int(sys.argv[2]); S = int(sys.argv[3]); what = sys.argv[4] if len(sys.argv) > 4 else "vision,llm"
spin = os.environ.get("SPIN")

def sess(path):
    o = ort.SessionOptions(); o.enable_profiling = True; o.log_severity_level = 3
    o.profile_file_prefix = "/tmp/prof_" + os.path.basename(os.path.dirname(path) or "x")
    if spin is not None: o.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

def summarize(s, label):
    f = s.end_profiling(); ev = json.load(open(f))
    by = collections.Counter(); cnt = collections.Counter(); runs = []
    for e in ev:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"]; cnt[e["args"]["op_name"]] += 1
        if e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append(e["dur"] / 1e3)
    tot = sum(by.values())
    print(f"== {label}: model_run ms {[round(r,1) for r in runs]}, kernel sum {tot/1e3:.1f} ms")
    for op, d in by.most_common(12):
        print(f"   {op:28s} {d/1e3:9.1f} ms {100*d/tot:5.1f}%  n={cnt[op]}")
    return by

if "vision" in what:
    s = sess(f"{root}/vision.onnx")
    x = np.random.default_rng(0).integers(0, 256, (T, 336, 336, 3), dtype=np.uint8)  # schema 2: uint8 frames
    s.run(None, {"frames": x})
    t = time.perf_counter(); s.run(None, {"frames": x}); print("vision wall ms", (time.perf_counter() - t) * 1e3)
    summarize(s, f"vision T={T} (warmup + 1)")
if "llm" in what:
    s = sess(f"{root}/llm/model.onnx")
    ins = {i.name: i for i in s.get_inputs()}
    D = ins["inputs_embeds"].shape[2]
    kv = [n for n in ins if n.startswith("past_key_values")]
    H, d = 4, 64
    dt = np.float32
    e = np.random.default_rng(0).standard_normal((1, S, D)).astype(dt) * 0.02
    feed = {"inputs_embeds": e, "attention_mask": np.ones((1, S), np.int64)}
    if "position_ids" in ins: feed["position_ids"] = np.arange(S)[None]
    for n in kv: feed[n] = np.zeros((1, H, 0, d), dt)
    t = time.perf_counter(); out = s.run(None, feed); print("prefill wall ms", (time.perf_counter() - t) * 1e3)
    summarize(s, f"llm prefill S={S}")
