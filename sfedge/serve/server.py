"""Run the app on uvicorn: engines loaded on the worker thread, SIGTERM handled gracefully.

SIGTERM / SIGINT: uvicorn stops accepting connections and lets the requests it has accepted finish
(up to `config.grace` seconds, then cancels them); the lifespan's shutdown then cancels what still
waits and stops a running generation after its current token; the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from ..errors import SfedgeError
from .app import ServeConfig, create_app


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> int:
    from ..runtime.pipeline import Pipeline

    fatal: list[str] = []
    holder: dict = {}

    def on_fatal(message: str) -> None:  # the engines failed to load: stop the server, exit 2
        fatal.append(message)
        if "server" in holder:
            holder["server"].should_exit = True

    app = create_app(config, lambda: Pipeline(config.engines, provider=config.provider), on_fatal)
    uv = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                        timeout_graceful_shutdown=config.grace + 5,
                        access_log=log_level == "debug")
    server = holder["server"] = uvicorn.Server(uv)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    # uvicorn re-raises the signal that stopped it once it is done; a handler of ours makes that a clean exit 0
    terminated = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if fatal:
        raise SfedgeError(fatal[0])
    if not server.started and not terminated.is_set():
        raise SfedgeError(f"cannot serve on {host}:{port} (is the port in use?)")
    return 0
