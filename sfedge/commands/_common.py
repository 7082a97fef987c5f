"""Small helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import SfedgeError


def add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")


def print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=_default) + "\n")
    sys.stdout.flush()


def _default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def existing_path(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise SfedgeError(f"{what} not found: {path}")
    return p
