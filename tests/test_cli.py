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


@pytest.mark.slow
def test_export_preset_writes_engines(tmp_path):
    import json

    out = tmp_path / "engines"
    proc = subprocess.run([sys.executable, "-m", "sfedge", "export", "--preset", "sf-llava-test", str(out),
                           "--no-validate", "--max-frames", "4", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is True
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["checkpoint"].endswith("presets/sf-llava-test")
    assert manifest["model"]["hidden_size"] == 128


def test_export_needs_model_or_preset_not_both():
    for argv in (["export", "/tmp/sfedge-out"], ["export", "tiny", "/tmp/sfedge-out", "--preset", "sf-llava-test"]):
        out = subprocess.run([sys.executable, "-m", "sfedge", *argv], capture_output=True, text=True)
        assert out.returncode == 2 and "either MODEL or --preset" in out.stderr
