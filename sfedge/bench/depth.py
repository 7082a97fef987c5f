"""Per-layer figures from benches of one geometry at two (or more) truncated depths, and the
full-depth figures derived from them, labelled as derived with their formula.

Only the LLM's stages grow with its depth L: prefill and decode per token are modelled as
t(L) = fixed + L * per_layer, with per_layer = (t(L2) - t(L1)) / (L2 - L1) from the smallest and the
largest depth measured side by side (medians). Derived at N layers, from the deeper depth L2:
prefill(N) = prefill(L2) + (N - L2) * per_layer(prefill), likewise decode per token; TTFT(N) = TTFT(L2)
+ (N - L2) * per_layer(prefill); end to end(N) = e2e(L2) + (N - L2) * (per_layer(prefill) + (new_tokens
- 1) * per_layer(decode)). The stages that do not depend on L (decode_video, preprocess, vision,
slowfast) enter as measured at L2. Nothing here measures: it reads bench reports (sfedge.bench.runner).
"""

from __future__ import annotations

LLM_STAGES = ("prefill", "decode_ms_per_token")
SHOWN = ("decode_video", "preprocess", "vision", "slowfast", "prefill", "ttft", "decode_ms_per_token", "e2e")
FORMULA = ("per_layer = (t(L2) - t(L1)) / (L2 - L1) for prefill and decode per token; X(N) = X(L2) + (N - L2) * "
           "per_layer for prefill, decode per token and TTFT (with prefill's); e2e(N) = e2e(L2) + (N - L2) * "
           "(per_layer(prefill) + (new_tokens - 1) * per_layer(decode)) (medians)")


def _median(side: dict | None, stage: str) -> float | None:
    return (((side or {}).get("stages_ms") or {}).get(stage) or {}).get("median")


def per_layer(reports: dict[int, dict], side: str, full_layers: int) -> dict:
    """`reports`: depth -> bench report (one precision). Per-layer ms and the derived figures at
    `full_layers` for `side` ("engine" or "reference")."""
    depths = sorted(d for d, r in reports.items() if r.get(side))
    out = {"depths": depths, "full_layers": full_layers, "measured": {}, "per_layer_ms": {},
           "derived_full_ms": {}, "formula": FORMULA, "label": f"derived for {full_layers} layers, not measured"}
    for d in depths:
        out["measured"][d] = {k: _median(reports[d][side], k) for k in SHOWN}
    if len(depths) < 2:
        out["note"] = "one depth only: no per-layer figure (needs two depths)"
        return out
    lo, hi = depths[0], depths[-1]
    m_lo, m_hi = out["measured"][lo], out["measured"][hi]
    if any(m_lo[k] is None or m_hi[k] is None for k in LLM_STAGES + ("ttft", "e2e")):
        out["note"] = "a stage is missing from a report"
        return out
    p = {k: (m_hi[k] - m_lo[k]) / (hi - lo) for k in LLM_STAGES}
    extra = full_layers - hi
    new_tokens = reports[hi].get("new_tokens") or 1
    out["per_layer_ms"] = p
    out["derived_full_ms"] = {
        "prefill": m_hi["prefill"] + extra * p["prefill"],
        "decode_ms_per_token": m_hi["decode_ms_per_token"] + extra * p["decode_ms_per_token"],
        "ttft": m_hi["ttft"] + extra * p["prefill"],
        "e2e": m_hi["e2e"] + extra * (p["prefill"] + (new_tokens - 1) * p["decode_ms_per_token"]),
    }
    pt = out["derived_full_ms"]["decode_ms_per_token"]
    if pt > 0:
        out["derived_full_ms"]["tokens_per_s"] = 1e3 / pt
    return out


def format_summary(summary: dict) -> str:
    """A short text table of `summary` (scripts/gpu_plan.py's summary.json)."""
    f = lambda x, s=".1f": "-" if x is None else format(x, s)  # noqa: E731
    lines = []
    c = summary.get("ceilings") or {}
    lines.append(f"device {c.get('device', '?')}: {f(c.get('bandwidth_GBps'), '.0f')} GB/s, "
                 f"{f(c.get('matmul_TFLOPs'))} TFLOP/s (measured, {c.get('how', '')})")
    for name, b in summary.get("benches", {}).items():
        e, r = b.get("engine") or {}, b.get("reference") or {}
        lines.append(f"{name}: frames {b.get('frames')}, prefill tokens {b.get('prefill_tokens')}, new tokens "
                     f"{b.get('new_tokens')}, provider {b.get('provider')}")
        lines.append(f"  {'stage (median ms)':22}{'engines':>12}{'reference':>12}{'speedup':>9}{'eng/floor':>11}")
        for k in SHOWN:
            em, rm = _median(e, k), _median(r, k)
            fl = (e.get("floor_fraction") or {}).get(k)
            sp = rm / em if em and rm else None
            lines.append(f"  {k:22}{f(em):>12}{f(rm):>12}{f(sp, '.2f'):>9}{f(fl, '.0%'):>11}")
        lines.append(f"  tokens/s {f(e.get('tokens_per_s'))} / {f(r.get('tokens_per_s'))}; peak GPU MB "
                     f"{f(e.get('peak_gpu_mb'), '.0f')} / {f(r.get('peak_gpu_mb'), '.0f')}")
    for g in summary.get("greedy_cost_ms") or []:  # scripts/gpu_plan_steps.py greedy_cost
        lines.append(f"greedy step {g['engines'].rsplit('/', 1)[-1]} V {g['vocab']} D {g['hidden']} cuda graph "
                     f"{g['cuda_graph']}: step {f(g['loop_step_ms'], '.4f')} = LLM {f(g['loop_llm_ms'], '.4f')} "
                     f"+ greedy run {f(g['loop_greedy_ms'], '.4f')} + token read {f(g['loop_read_ms'], '.4f')} ms; LLM step "
                     f"alone {f(g['llm_only_ms'], '.4f')} ms (medians)")
    fl = summary.get("floors_full_fp16_ms")
    if fl:
        lines.append(f"{fl['label']}: " + ", ".join(f"{k} {v:.1f}" for k, v in fl.items() if k != "label"))
    for name, d in summary.get("per_layer", {}).items():
        if not d.get("per_layer_ms"):
            lines.append(f"{name}: {d.get('note', 'no per-layer figure')}")
            continue
        pl = ", ".join(f"{k} {v:.3f}" for k, v in d["per_layer_ms"].items())
        dv = ", ".join(f"{k} {v:.1f}" for k, v in d["derived_full_ms"].items())
        lines.append(f"{name}: per layer (ms, measured at depths {d['depths']}): {pl}")
        lines.append(f"  DERIVED for {d['full_layers']} layers, not measured ({d['formula']}): {dv}")
    return "\n".join(lines)
