"""Plan vs measured: a command's peak RSS from the kernel (`wait4`'s ru_maxrss: the exact
high-water mark, no polling), compared with the plan's budget for `--target cpu`."""

from __future__ import annotations

import os
import subprocess


def child_peak_rss_bytes(argv: list[str], env: dict | None = None) -> tuple[int, int, str]:
    """(peak RSS in bytes, exit status, stdout) of `argv` run to completion (Linux: ru_maxrss in KiB)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    out = p.stdout.read()
    _pid, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    return usage.ru_maxrss * 1024, p.returncode, out


def compare(plan: dict, measured_bytes: int) -> dict:
    """The plan's device total (= the process's RSS on cpu) against a measured peak."""
    planned = plan["device_bytes"]
    return {"planned_bytes": planned, "measured_bytes": measured_bytes,
            "ratio": measured_bytes / planned, "error": abs(measured_bytes - planned) / planned}
