"""One worker thread owns the Pipeline (which is not thread-safe); requests wait in a bounded FIFO.

The event loop submits a `Job` and reads its events from an asyncio queue: ("piece", text) as the
answer is generated, then ("done", AskResult) or ("error", exception) or ("cancelled", None). A job
is cancelled by setting its flag (client gone, timeout, shutdown): a waiting job is taken out of the
queue; a running one is stopped after the token being made (the worker checks the flag after every
piece and closes the pipeline's generator, which leaves the decoder consistent).

`SFEDGE_SERVE_PIECE_DELAY_S` (tests only): sleep this long after each piece, so that tests can
catch a generation mid-way (disconnects, timeouts, the queue limit) on a model that is otherwise
too fast to catch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SfedgeError
from ..spec import GenerationSpec
from .metrics import Metrics

log = logging.getLogger("sfedge.serve")


@dataclass
class Task:
    """What to answer: the arguments of `Pipeline.stream`, and a callback run once the video is no longer needed."""

    video: Path
    question: str
    options: list[str] | None
    gen: GenerationSpec
    stop: list[str]
    release: Callable[[], None] = lambda: None
    temporary: bool = False  # the video is the server's own copy of an upload (not a path the client named)
    stream: bool = False  # the client reads the answer as it is made (a backend must not restart it)


@dataclass
class Job:
    task: Task
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = "disconnect"
    submitted: float = field(default_factory=time.perf_counter)
    pieces: int = 0  # pieces taken from the generator (tokens, give or take a partial character)
    headers: dict[str, str] = field(default_factory=dict)  # sent with the response (a backend's replica id)

    def cancel(self, reason: str = "disconnect") -> None:
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()

    def emit(self, kind: str, value=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class QueueFull(Exception):
    def __init__(self, retry_after: int, waiting: int | None = None):
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after, self.waiting = retry_after, waiting


class Unavailable(Exception):
    """Not ready yet, or shutting down."""


class Worker:
    def __init__(self, load: Callable[[], object], max_queue: int, metrics: Metrics,
                 on_fatal: Callable[[str], None] = lambda message: None):
        self._load, self.max_queue, self.metrics, self._on_fatal = load, max_queue, metrics, on_fatal
        self.pipe = None
        self.ready = threading.Event()
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self.running: Job | None = None
        self._mean_s = 1.0  # moving average of a job's run time, for Retry-After
        self.delay = float(os.environ.get("SFEDGE_SERVE_PIECE_DELAY_S", "0") or 0)
        self.thread = threading.Thread(target=self._main, name="sfedge-serve-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> None:
        """Queue a job (FIFO); QueueFull beyond max_queue waiting, Unavailable when not serving."""
        with self._cv:
            if self._stopping or not self.ready.is_set():
                raise Unavailable("the server is shutting down" if self._stopping else "the engines are loading")
            if len(self._queue) >= self.max_queue:
                ahead = len(self._queue) + (self.running is not None)
                raise QueueFull(max(1, round(self._mean_s * ahead)))
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cv.notify()

    def health(self) -> dict:
        """What /health adds to {"status": "ok"} (nothing here; a cluster backend lists its replicas)."""
        return {}

    def withdraw(self, job: Job, reason: str) -> None:
        """Cancel a job: out of the queue if it waits there (its video released), else stopped by the worker."""
        job.cancel(reason)
        with self._cv:
            try:
                self._queue.remove(job)
            except ValueError:
                return
            self.metrics.queue_depth.set(len(self._queue))
        self.metrics.cancelled.labels(reason).inc()
        job.task.release()
        job.emit("cancelled")

    def stop(self, timeout: float = 30.0) -> None:
        """Take no more jobs, cancel the waiting ones, stop the running one after its current token."""
        with self._cv:
            self._stopping = True
            waiting = list(self._queue)
            self._queue.clear()
            self.metrics.queue_depth.set(0)
            if self.running is not None:
                self.running.cancel("shutdown")
            self._cv.notify_all()
        for job in waiting:
            job.cancel("shutdown")
            job.task.release()
            job.emit("error", Unavailable("the server is shutting down"))
        if self.thread.is_alive():
            self.thread.join(timeout)

    # --- the worker thread -------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self.pipe = self._load()
            self._warm_up()
        except SfedgeError as e:
            self._on_fatal(str(e))
            return
        except Exception as e:  # noqa: BLE001 - reported, then the server exits
            log.exception("loading the engines failed")
            self._on_fatal(f"loading the engines failed: {type(e).__name__}: {e}")
            return
        self.ready.set()
        self.metrics.ready.set(1)
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self.running = job
                self.metrics.queue_depth.set(len(self._queue))
            try:
                self._run(job)
            finally:
                with self._cv:
                    self.running = None

    def _warm_up(self) -> None:
        """One short answer over blank frames: every engine runs once before the first request."""
        pipe = self.pipe
        n = min(pipe.spec.sampling.num_frames, pipe.max_frames or pipe.spec.sampling.num_frames)
        size = pipe.spec.preprocess.size
        frames = [np.zeros((size, size, 3), np.uint8)] * n
        t = time.perf_counter()
        pipe.ask_frames(frames, "warm up", gen=GenerationSpec(max_new_tokens=2))
        log.info("warmed up in %.1f s", time.perf_counter() - t)

    def _run(self, job: Job) -> None:
        m, task = self.metrics, job.task
        started = time.perf_counter()
        final: tuple = ("error", RuntimeError("the worker stopped without an answer"))
        try:
            if job.cancelled.is_set():
                m.cancelled.labels(job.reason).inc()
                final = ("cancelled",)
                return
            m.queue_wait.observe(started - job.submitted)
            m.running.set(1)
            stream = self.pipe.stream(task.video, task.question, task.options, task.gen, stop=task.stop,
                                      cancelled=job.cancelled.is_set)  # asked after every token
            while True:
                try:
                    piece = next(stream)
                except StopIteration as done:
                    if done.value.stop_reason == "cancelled":
                        m.tokens.inc(len(done.value.token_ids))
                        m.cancelled.labels(job.reason).inc()
                        final = ("cancelled",)
                        return
                    m.observe_result(done.value)
                    final = ("done", done.value)
                    return
                job.pieces += 1
                job.emit("piece", piece)
                if self.delay:
                    time.sleep(self.delay)
                if job.cancelled.is_set():
                    stream.close()  # stops generating now; the decoder stays consistent
                    m.tokens.inc(job.pieces)
                    m.cancelled.labels(job.reason).inc()
                    final = ("cancelled",)
                    return
        except SfedgeError as e:  # named "the video", not by the server's file name for it
            final = ("error", SfedgeError(str(e).replace(str(task.video), "the video")))
        except Exception as e:  # noqa: BLE001 - one request fails, the server stays up
            log.exception("answering failed")
            final = ("error", e)
        finally:  # the upload is gone before the client hears the answer is complete
            m.running.set(0)
            try:
                task.release()
            finally:
                job.emit(*final)
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - started)
