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


def utf8_text(text: str | None, what: str) -> str | None:
    """`text` from the command line, refused with one line (exit 2) if its bytes are not UTF-8.
    Python decodes such argv bytes to lone surrogates (surrogateescape); the tokenizer would fail on
    them with a traceback."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        try:
            raw.decode("utf-8")
            detail = ""
        except UnicodeDecodeError as e:
            detail = f" (byte 0x{raw[e.start]:02x} at byte offset {e.start})"
        raise SfedgeError(f"the {what} is not valid UTF-8{detail}: {raw[:60]!r}") from None
    return text
