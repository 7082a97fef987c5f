"""Plan vs measured: a command's peak RSS from the kernel (ru_maxrss: the exact high-water mark, no
polling), compared with the plan's budget for `--target cpu`.

A child's ru_maxrss also counts the address space it was forked from (Linux records the old
mm's high-water mark at exec), so a child spawned straight from a big process (e.g. one that has
just exported a model) reports that process's RSS. The command therefore runs under a small
intermediate Python that reports its children's ru_maxrss (RUSAGE_CHILDREN)."""

from __future__ import annotations

import subprocess
import sys

_INTERMEDIATE = ("import resource, subprocess, sys; "
                 "rc = subprocess.call(sys.argv[1:], stderr=subprocess.DEVNULL); "
                 "sys.stderr.write(f'\\n{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} {rc}\\n')")


def child_peak_rss_bytes(argv: list[str], env: dict | None = None) -> tuple[int, int, str]:
    """(peak RSS in bytes, exit status, stdout) of `argv` run to completion (Linux: ru_maxrss in KiB)."""
    p = subprocess.run([sys.executable, "-c", _INTERMEDIATE, *argv], capture_output=True, text=True, env=env)
    maxrss_kib, rc = p.stderr.split()[-2:]
    return int(maxrss_kib) * 1024, int(rc), p.stdout


def compare(plan: dict, measured_bytes: int) -> dict:
    """The plan's device total (= the process's RSS on cpu) against a measured peak."""
    planned = plan["device_bytes"]
    return {"planned_bytes": planned, "measured_bytes": measured_bytes,
            "ratio": measured_bytes / planned, "error": abs(measured_bytes - planned) / planned}
