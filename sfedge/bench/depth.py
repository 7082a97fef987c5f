"""Per-layer figures from benches of one geometry at two (or more) truncated depths, and the
full-depth figures derived from them, labelled as derived with their formula.

A stage whose time grows with the LLM's depth L (prefill, decode per token, TTFT, end to end) is
modelled as t(L) = fixed + L * per_layer; with depths L1 < L2 measured side by side:
per_layer = (t(L2) - t(L1)) / (L2 - L1), fixed = t(L1) - L1 * per_layer, derived t(N) = fixed +
N * per_layer. Stages that do not depend on L (decode_video, preprocess, vision, slowfast) are
reported as measured. Nothing here measures: it reads bench reports (sfedge.bench.runner).
"""

from __future__ import annotations

DEPTH_STAGES = ("prefill", "ttft", "decode_ms_per_token", "e2e")
FIXED_STAGES = ("decode_video", "preprocess", "vision", "slowfast")
FORMULA = "t(N) = t(L1) + (N - L1) * per_layer, per_layer = (t(L2) - t(L1)) / (L2 - L1) (medians)"


def _median(side: dict | None, stage: str) -> float | None:
    return (((side or {}).get("stages_ms") or {}).get(stage) or {}).get("median")


def per_layer(reports: dict[int, dict], side: str, full_layers: int) -> dict:
    """`reports`: depth -> bench report (one precision). Per-layer ms and the derived figures at
    `full_layers` for `side` ("engine" or "reference"), from the smallest and the largest depth."""
    depths = sorted(d for d, r in reports.items() if r.get(side))
    out = {"depths": depths, "full_layers": full_layers, "measured": {}, "per_layer_ms": {},
           "derived_full_ms": {}, "formula": FORMULA, "label": f"derived for {full_layers} layers, not measured"}
    for d in depths:
        out["measured"][d] = {k: _median(reports[d][side], k) for k in FIXED_STAGES + DEPTH_STAGES}
    if len(depths) < 2:
        out["note"] = "one depth only: no per-layer figure (needs two depths)"
        return out
    lo, hi = depths[0], depths[-1]
    for k in DEPTH_STAGES:
        a, b = out["measured"][lo][k], out["measured"][hi][k]
        if a is None or b is None:
            continue
        p = (b - a) / (hi - lo)
        out["per_layer_ms"][k] = p
        out["derived_full_ms"][k] = a + (full_layers - lo) * p
    pt = out["derived_full_ms"].get("decode_ms_per_token")
    if pt:
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
        for k in FIXED_STAGES + DEPTH_STAGES:
            em, rm = _median(e, k), _median(r, k)
            fl = (e.get("floor_fraction") or {}).get(k)
            sp = rm / em if em and rm else None
            lines.append(f"  {k:22}{f(em):>12}{f(rm):>12}{f(sp, '.2f'):>9}{f(fl, '.0%'):>11}")
        lines.append(f"  tokens/s {f(e.get('tokens_per_s'))} / {f(r.get('tokens_per_s'))}; peak GPU MB "
                     f"{f(e.get('peak_gpu_mb'), '.0f')} / {f(r.get('peak_gpu_mb'), '.0f')}")
    for prec, sides in summary.get("per_layer", {}).items():
        for side, d in sides.items():
            if not d.get("per_layer_ms"):
                lines.append(f"{prec} {side}: {d.get('note', 'no per-layer figure')}")
                continue
            pl = ", ".join(f"{k} {v:.2f}" for k, v in d["per_layer_ms"].items())
            dv = ", ".join(f"{k} {v:.1f}" for k, v in d["derived_full_ms"].items())
            lines.append(f"{prec} {side}: per layer (ms, measured at depths {d['depths']}): {pl}")
            lines.append(f"  DERIVED for {d['full_layers']} layers (not measured; {d['formula']}): {dv}")
    return "\n".join(lines)
