"""Where sfedge keeps what it makes for you (tiny model, its engines, demo clips)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$SFEDGE_CACHE, else $XDG_CACHE_HOME/sfedge, else ~/.cache/sfedge (created)."""
    root = os.environ.get("SFEDGE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sfedge"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
