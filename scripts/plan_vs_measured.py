"""Plan vs measured on this machine: `sfedge ask`'s peak RSS against `sfedge plan --target cpu`.

    python scripts/plan_vs_measured.py [--engines DIR | --preset sf-llava-cpu --precision fp32 --max-frames 8]
        [--video CLIP] [--max-new-tokens 8] [--out RESULT.json]

Without --engines it exports the preset (CPU, no validation) into .cache/plan-vs-measured/ once.
The peak RSS is the kernel's high-water mark of the `sfedge ask` process (ru_maxrss, exact, no
polling; run under a small intermediate process, see sfedge.plan.measured); the plan is `sfedge plan --engines DIR --target cpu` at the frames `ask` samples (the
engines' sampling setting) and the same new-token count. Prints both, the ratio and whether they
agree within --tolerance (default 15%); the last stdout line is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sfedge.plan.devices import get_target  # noqa: E402
from sfedge.plan.measured import child_peak_rss_bytes, compare  # noqa: E402
from sfedge.plan.report import load_model, make_plan, render, settings_for  # noqa: E402


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def engines_for(preset: str, precision: str, max_frames: int) -> Path:
    out = ROOT / ".cache" / "plan-vs-measured" / f"engines-{preset}-{precision}-f{max_frames}"
    if not (out / "manifest.json").is_file():  # in a subprocess: this process stays small
        import subprocess

        t = time.time()
        subprocess.run([sys.executable, "-m", "sfedge", "export", "--preset", preset, str(out), "--precision",
                        precision, "--device", "cpu", "--max-frames", str(max_frames), "--no-validate", "--force"],
                       check=True, env=_env())
        print(f"exported {preset} {precision} -> {out} in {time.time() - t:.0f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines")
    ap.add_argument("--preset", default="sf-llava-cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--max-frames", type=int, default=8)
    ap.add_argument("--video")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--out")
    a = ap.parse_args()
    engines = Path(a.engines) if a.engines else engines_for(a.preset, a.precision, a.max_frames)
    video = a.video
    if video is None:
        from sfedge.synthetic import make_clip

        video = str(make_clip(ROOT / ".cache" / "plan-vs-measured" / "clip.mp4", num_frames=60, seed=0))
    env = _env()
    argv = [sys.executable, "-m", "sfedge", "ask", str(engines), video, "What is moving?",
            "--max-new-tokens", str(a.max_new_tokens)]
    load0 = os.getloadavg()[0]
    t = time.time()
    rss, rc, _out = child_peak_rss_bytes(argv, env)
    secs = time.time() - t
    if rc != 0:
        print(f"sfedge ask failed (exit {rc}): {' '.join(argv)}", file=sys.stderr)
        return 1
    info, _ = load_model(engines=str(engines), device="cpu")
    plan = make_plan(info, get_target("cpu"), settings_for(info, max_new_tokens=a.max_new_tokens))
    print(render(plan))
    c = compare(plan, rss)
    agree = c["error"] <= a.tolerance
    print(f"\nsfedge ask peak RSS {rss / 2**20:.0f} MiB (ru_maxrss, {secs:.0f} s, load {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f}); plan {c['planned_bytes'] / 2**20:.0f} MiB; measured / plan = {c['ratio']:.3f} "
          f"-> {'within' if agree else 'NOT within'} {a.tolerance:.0%}")
    result = {"engines": str(engines), "frames": plan["settings"]["frames"], "prefill_tokens":
              plan["settings"]["prefill_tokens"], "max_new_tokens": a.max_new_tokens, "ask_seconds": round(secs, 1),
              **c, "agree": agree, "lines": [{k: ln[k] for k in ("item", "bytes", "how")} for ln in plan["lines"]]}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0 if agree else 3


if __name__ == "__main__":
    sys.exit(main())
