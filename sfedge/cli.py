"""`sfedge` command line: parse flags, call one library function per command.

Each command lives in sfedge/commands/<name>.py with `HELP`, `add_arguments(parser)` and
`run(args) -> int`; heavy imports (torch, onnxruntime) happen inside `run`, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import SfedgeError

COMMANDS = ("demo", "ask", "watch", "serve", "export", "build", "verify", "bench", "plan", "make-tiny", "make-clip")


def _module(name: str):
    modname = f"sfedge.commands.{name.replace('-', '_')}"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        raise ImportError(f"sfedge command module {modname} is missing") from e


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): `sfedge ask: error: ...`, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sfedge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sfedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name in COMMANDS:
        mod = _module(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SfedgeError as e:
        print(f"sfedge {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"sfedge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
