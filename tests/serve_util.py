"""The real `sfedge serve` in a subprocess (sfedge.serve.launch), with what the tests look at."""

from __future__ import annotations

from pathlib import Path

import httpx

from sfedge.serve.launch import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


class Server(ServerProcess):
    def __init__(self, engines, *args: str, tmp: Path, env: dict | None = None, timeout: float = 120):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(engines, *args, log=self.tmp.parent / "server.log", timeout=timeout,
                         env={"TMPDIR": str(self.tmp), "PYTHONPATH": str(ROOT), **(env or {})})

    def temp_files(self) -> list[Path]:
        """Everything under the server's private temporary directories."""
        return [p for d in self.tmp.glob("sfedge-serve-*") for p in d.iterdir()]

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        key = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0
