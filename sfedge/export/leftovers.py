"""Scratch directories of exports that were killed, and their removal.

An export works in `OUT.partial-<pid>-*` (renamed to OUT once validated) and `.sfedge-text-<pid>-*`
(the text model for the builder) beside OUT; a normal end or any exception removes them, a kill
(SIGKILL, power loss) does not. Their names carry the exporting process's id, so the next export
into the same parent removes those whose process is gone, and never another live export's.
Directories without a process id (made before sfedge recorded it) are left alone: their owner
cannot be told. Process ids are per host: exports into one parent from several hosts (a shared
network disk) are not told apart.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_STALE = re.compile(r"^(?:.+\.partial|\.sfedge-text)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def scratch_prefix(kind: str) -> str:
    """mkdtemp prefix carrying this process's id: `OUT.partial-<pid>-`, `.sfedge-text-<pid>-`."""
    return f"{kind}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale(parent: Path) -> list[tuple[Path, int]]:
    """Remove the scratch directories in `parent` whose exporting process is gone; return
    (path, pid) for each removed."""
    removed = []
    if not Path(parent).is_dir():
        return removed
    for path in sorted(Path(parent).iterdir()):
        m = _STALE.match(path.name)
        if not m or not path.is_dir() or path.is_symlink():
            continue
        pid = int(m.group("pid"))
        if pid_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append((path, pid))
    return removed
