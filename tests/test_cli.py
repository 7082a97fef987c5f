"""The CLI's contract: every command exists, `--help` is instant, bad input is one line + exit 2."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from sfedge.cli import COMMANDS, build_parser


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_a_module(name):
    mod = importlib.import_module(f"sfedge.commands.{name.replace('-', '_')}")
    assert isinstance(mod.HELP, str) and mod.HELP
    assert callable(mod.add_arguments) and callable(mod.run)


def test_help_lists_every_command():
    text = build_parser().format_help()
    for name in COMMANDS:
        assert name in text


def test_help_imports_no_torch():
    code = "import sys; from sfedge.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "argv",
    [
        ["ask", "/nonexistent/engines", "/nonexistent/video.mp4", "what?"],
        ["export", "/nonexistent/checkpoint", "/tmp/sfedge-never-written"],
        ["verify", "/nonexistent/engines", "--model", "tiny"],
        ["bench", "/nonexistent/engines", "--no-reference"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv):
    out = subprocess.run([sys.executable, "-m", "sfedge", *argv], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
