"""Run a command and report the peak memory of its whole process tree (the export runs
onnxruntime-genai's builder as a subprocess, so the parent's own peak RSS under-counts).

    python scripts/experiments/peak_rss.py [--trace FILE] -- sfedge export --preset sf-llava-jetson OUT --precision int4

Two figures, summed over the tree every 0.2 s: RSS (what `top` shows: includes file pages mapped
from the checkpoint's safetensors, which the kernel can drop and re-read), and anonymous RSS
(RssAnon in /proc/PID/status: memory the processes allocated, which has to fit in RAM).
--trace FILE writes "seconds rss_gb anon_gb" lines; the command's progress output tells which
stage each part of the curve belongs to.
"""
import subprocess
import sys
import time

import psutil


def anon_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    head = sys.argv[:sys.argv.index("--")] if "--" in sys.argv else []
    trace = open(head[head.index("--trace") + 1], "w") if "--trace" in head else None
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    root, peak, peak_anon = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            tree = [p for p in (root, *root.children(recursive=True)) if p.is_running()]
            rss = sum(p.memory_info().rss for p in tree)
            anon = sum(anon_bytes(p.pid) for p in tree)
            peak, peak_anon = max(peak, rss), max(peak_anon, anon)
            if trace:
                print(f"{time.perf_counter() - start:.1f} {rss / 1e9:.3f} {anon / 1e9:.3f}", file=trace, flush=True)
        except (psutil.Error, OSError):
            pass
        time.sleep(0.2)
    print(f"peak tree RSS {peak / 1e9:.2f} GB, anonymous {peak_anon / 1e9:.2f} GB, "
          f"{time.perf_counter() - start:.1f} s, exit {proc.returncode}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
