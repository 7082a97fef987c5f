"""The tiny model's figures quoted in the README: make-tiny, a reference answer, and
`sfedge export tiny` at fp32 / fp16 / int4 (validated) with its time and file sizes.

    .venv/bin/python scripts/tiny_figures.py [--out DIR] [--json]

Each step runs as its own `sfedge` process (imports included, as a user sees it) in a fresh
cache directory; a markdown table is printed last, the raw figures go to DIR/tiny-figures.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SFEDGE = [sys.executable, "-m", "sfedge"]
ANSWER = """
import json, sys, time
t0 = time.perf_counter()
from sfedge.reference.model import SlowFastLlava
ref = SlowFastLlava.from_pretrained(sys.argv[1])
t1 = time.perf_counter()
a = ref.answer(sys.argv[2], "What is moving in the video?")
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "answer_s": t2 - t1, "frames": len(a.frame_indices),
                  "visual_tokens": a.num_visual_tokens, "new_tokens": len(a.token_ids)}))
"""


def timed(argv: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - start, done.stdout


def sizes(root: Path) -> dict[str, int]:
    """Bytes per top-level entry of an engines directory (directories summed)."""
    out = {}
    for entry in sorted(root.iterdir()):
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        out[entry.name] = sum(p.stat().st_size for p in files)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".cache/tiny-figures"))
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on the last line")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tiny-figures-", dir=args.out))
    env = dict(os.environ, SFEDGE_CACHE=str(work / "cache"))
    figures: dict = {"machine": os.uname().nodename, "cpus": os.cpu_count(),
                     "load_avg_start": os.getloadavg()[0]}

    ckpt = work / "tiny"
    figures["make_tiny_s"], _ = timed([*SFEDGE, "make-tiny", str(ckpt)], env)
    clip = work / "clip.mp4"
    timed([*SFEDGE, "make-clip", str(clip), "--frames", "60"], env)
    _, out = timed([sys.executable, "-c", ANSWER, str(ckpt), str(clip)], env)
    figures["reference"] = json.loads(out.strip().splitlines()[-1])

    figures["export"] = {}
    for precision in ("fp32", "fp16", "int4"):
        dst = work / f"engines-{precision}"
        wall, out = timed([*SFEDGE, "export", str(ckpt), str(dst), "--precision", precision, "--json"], env)
        manifest = json.loads((dst / "manifest.json").read_text())
        size = sizes(dst)
        figures["export"][precision] = {
            "wall_s": wall, "export_seconds": manifest["export_seconds"],
            "validation_passed": manifest["validation"]["passed"], "bytes": size, "total_bytes": sum(size.values())}
    figures["load_avg_end"] = os.getloadavg()[0]
    (args.out / "tiny-figures.json").write_text(json.dumps(figures, indent=2))

    r = figures["reference"]
    print(f"make-tiny: {figures['make_tiny_s']:.1f} s; reference load {r['load_s']:.1f} s + answer "
          f"{r['answer_s']:.1f} s ({r['frames']} frames, {r['visual_tokens']} visual tokens, "
          f"{r['new_tokens']} new tokens); load average {figures['load_avg_start']:.2f} -> {figures['load_avg_end']:.2f}")
    print("| precision | export + validation (wall) | validated | vision | slowfast | llm/ | embeddings | total |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, e in figures["export"].items():
        b = e["bytes"]
        kb = lambda *names: f"{sum(v for k, v in b.items() if k.startswith(names)) / 1024:.0f} KB"  # noqa: E731
        print(f"| {precision} | {e['wall_s']:.1f} s | {e['validation_passed']} | {kb('vision')} | {kb('slowfast')} "
              f"| {kb('llm')} | {kb('embeddings')} | {e['total_bytes'] / 1e6:.2f} MB |")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
