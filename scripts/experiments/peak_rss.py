"""Run a command and report the peak resident memory of its whole process tree (the export runs
onnxruntime-genai's builder as a subprocess, so the parent's own peak RSS under-counts).

    python scripts/experiments/peak_rss.py -- sfedge export --preset sf-llava-jetson OUT --precision int4
"""
import subprocess
import sys
import time

import psutil


def main() -> int:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    print(f"peak tree RSS {peak / 1e9:.2f} GB, {time.perf_counter() - start:.1f} s, exit {proc.returncode}",
          file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
