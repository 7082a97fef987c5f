"""Rendering of a bench report: a text table, the machine/versions record, a matplotlib chart."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path

from .runner import STAGES

PACKAGES = ("sfedge", "onnxruntime", "onnxruntime-gpu", "onnxruntime-genai", "torch", "transformers", "numpy",
            "tokenizers", "onnx", "av")


def environment() -> dict:
    """Machine and package versions, for the results file."""
    import psutil

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu, "cpu_cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(), "versions": versions,
    }


def _fmt(stage: dict | None) -> str:
    if not stage:
        return "-"
    return f"{stage['median']:.1f} ({stage['min']:.1f}-{stage['max']:.1f})"


def _num(x, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_table(report: dict) -> str:
    """Per-stage table: engines and reference median (min-max) ms, speedup, fraction of floor."""
    eng, ref = report["engine"], report.get("reference")
    sp = report.get("speedup") or {}
    lines = [
        f"{report['frames']} frames, {report['visual_tokens']} visual + prompt = {report['prefill_tokens']} "
        f"prefill tokens, {report['new_tokens']} new tokens, {report['runs']} runs after {report['warmup']} warmup",
        f"{'stage (ms)':<22}{'engines':>24}{'reference':>24}{'speedup':>9}{'eng/floor':>10}{'ref/floor':>10}",
    ]
    for k in STAGES:
        e = eng["stages_ms"].get(k)
        r = ref["stages_ms"].get(k) if ref else None
        fe = eng["floor_fraction"].get(k)
        fr = ref["floor_fraction"].get(k) if ref else None
        lines.append(f"{k:<22}{_fmt(e):>24}{_fmt(r):>24}{_num(sp.get(k), '.2f', 'x'):>9}"
                     f"{_num(fe, '.0%'):>10}{_num(fr, '.0%'):>10}")
    lines.append(f"{'decode tokens/s':<22}{_num(eng['tokens_per_s'], '.1f'):>24}"
                 f"{_num(ref['tokens_per_s'] if ref else None, '.1f'):>24}")
    lines.append(f"{'peak host RSS (MB)':<22}{_num(eng['peak_rss_mb'], '.0f'):>24}"
                 f"{_num(ref['peak_rss_mb'] if ref else None, '.0f'):>24}")
    if eng.get("peak_gpu_mb") is not None or (ref and ref.get("peak_gpu_mb") is not None):
        lines.append(f"{'peak device mem (MB)':<22}{_num(eng.get('peak_gpu_mb'), '.0f'):>24}"
                     f"{_num(ref.get('peak_gpu_mb') if ref else None, '.0f'):>24}")
    c = report.get("ceilings")
    if c:
        lines.append(f"ceilings ({c['device']}): {c['bandwidth_GBps']:.1f} GB/s, {c['matmul_TFLOPs']:.2f} TFLOP/s "
                     f"[{c['how']}]; floors ms: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in eng["floors_ms"].items()))
    return "\n".join(lines)


def plot(report: dict, png: str | Path) -> Path:
    """Grouped bars per stage (ms, log scale): engines vs reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [("engines", report["engine"])] + ([("reference", report["reference"])] if report.get("reference") else [])
    stages = [k for k in STAGES if k in report["engine"]["stages_ms"]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(sides)
    for j, (label, side) in enumerate(sides):
        xs = [i + (j - (len(sides) - 1) / 2) * width for i in range(len(stages))]
        ax.bar(xs, [side["stages_ms"].get(k, {}).get("median", 0) for k in stages], width, label=label)
    ax.set_xticks(range(len(stages)), stages, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.set_title(f"{Path(report['engines']).name}: {report['precision']} on {report['provider']}, "
                 f"{report['frames']} frames, {report['new_tokens']} new tokens")
    ax.legend()
    fig.tight_layout()
    out = Path(png)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
