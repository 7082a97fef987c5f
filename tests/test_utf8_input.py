"""A question or option whose bytes are not UTF-8: one line and exit code 2, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_build_prompt_refuses_undecodable_text():
    from sfedge.prompts import build_prompt

    bad = b"caf\xe9?".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    with pytest.raises(ValueError, match="question is not valid UTF-8") as e:
        build_prompt(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="option is not valid UTF-8"):
        build_prompt("Which?", ["ok", bad])


def test_ask_with_non_utf8_bytes_exits_2_with_one_line(engines_fp32, clip_path):
    """The real thing: argv bytes that are not UTF-8, through the installed CLI's entry point."""
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = [sys.executable, "-m", "sfedge.cli", "ask", str(engines_fp32), str(clip_path)]
    for argv, what in ((base + [b"Qu\xe9 pasa?"], "question"),
                       (base + ["Which?", "--options", b"red|gr\xffen"], "--options value")):
        proc = subprocess.run(argv, capture_output=True, env=env, timeout=120)
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(err) == 1 and err[0].startswith(f"sfedge ask: error: the {what} is not valid UTF-8"), err
