"""Start `sfedge serve` as a subprocess on a free loopback port and wait until it is healthy
(the load script and the tests use it; standard library only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> int | None:
    """GET /health's status, None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


class ServerProcess:
    """`python -m sfedge serve ENGINES --port P ARGS...`; its output goes to `log`."""

    def __init__(self, engines, *args: str, log: Path, env: dict | None = None, timeout: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        self.seen: list[int | None] = []  # /health statuses while starting
        cmd = [sys.executable, "-m", "sfedge", "serve", str(engines), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            status = health(self.url)
            if status is not None:
                self.seen.append(status)
            if status == 200:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server was not healthy within {timeout} s:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
