"""Prefill of 3007 positions (what generate.prefill runs before the last token): the builder's graph
(logits for every position) vs the same graph with a Slice to the last position before lm_head."""
import time, statistics, numpy as np, onnxruntime as ort, sys
S = int(sys.argv[1]) if len(sys.argv) > 1 else 3007
def sess(p):
    o = ort.SessionOptions(); o.log_severity_level = 3
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(p, o, providers=["CPUExecutionProvider"])
paths = {"all_positions": ".cache/cpu-bench/engines-sf-llava-cpu-fp32/llm/model.onnx", "last_only": ".cache/cpu-bench/llm_last/model.onnx"}
ss = {k: sess(p) for k, p in paths.items()}
e = (np.random.default_rng(0).standard_normal((1, S, 1024)) * 0.02).astype(np.float32)
feed = {"inputs_embeds": e, "attention_mask": np.ones((1, S), np.int64)}
names = [i.name for i in ss["last_only"].get_inputs()]
if "position_ids" in names: feed["position_ids"] = np.arange(S)[None]
for n in names:
    if n.startswith("past_key_values"): feed[n] = np.zeros((1, 4, 0, 64), np.float32)
out = {k: s.run(["logits"], feed)[0] for k, s in ss.items()}
print("shapes", {k: v.shape for k, v in out.items()}, "last-row max abs diff", float(np.abs(out["all_positions"][:, -1] - out["last_only"][:, -1]).max()))
ts = {k: [] for k in ss}
for i in range(3):
    for k in (("all_positions", "last_only") if i % 2 == 0 else ("last_only", "all_positions")):
        t = time.perf_counter(); ss[k].run(["logits"], feed); ts[k].append((time.perf_counter() - t) * 1e3)
for k, v in ts.items(): print(k, "median ms", round(statistics.median(v)), "runs", [round(x) for x in v])
print("ratio", statistics.median(ts["all_positions"]) / statistics.median(ts["last_only"]))
