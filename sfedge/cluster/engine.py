"""One engine replica of the Ray Serve deployment: a Pipeline on its own thread (serve/worker.py's
Worker), answering one request at a time as a stream of events.

`generate(request)` is a streaming method: it yields ("replica", id) first, then the Worker's events
("piece", text) ... ("done", AskResult) or ("error", exception) or ("cancelled", None). Ray Serve does the
queueing (max_ongoing_requests=1, max_queued_requests on the caller's side); the Worker's own queue
never holds more than the request being cancelled and the next one.

Affinity: the request's multiplexed model id is the video's key (backend.py). The replica "loads" it
through `@serve.multiplexed` (a no-op that records it), which tells Ray Serve's router that this
replica holds that video's prefix, so that follow-ups about the video come back here. Its LRU size
(`max_prefixes`) is the number of videos a replica is expected to keep in its prefix cache.

Engines: every replica loads the engines directory named in the config (a path every node can read)
only after checking that its manifest.json is byte for byte the one the application was built with
(sha256), and Pipeline() verifies every file against that manifest before it loads anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ray import serve
from ray.serve import metrics as ray_metrics

from ..errors import SfedgeError
from ..serve.metrics import Metrics
from ..serve.worker import Job, Task, Worker
from .config import ClusterConfig, manifest_digest

log = logging.getLogger("sfedge.cluster")
TERMINAL = ("done", "error", "cancelled")


class Engine:
    def __init__(self, config: ClusterConfig):
        from ..runtime.pipeline import Pipeline

        self.config = config
        engines = config.serve.engines
        try:
            found = manifest_digest(engines)
        except OSError as e:
            raise SfedgeError(f"this node cannot read the engines at {engines}: {e}") from None
        if config.manifest_sha256 and found != config.manifest_sha256:
            raise SfedgeError(f"the engines at {engines} on this node differ from the ones the application was "
                              f"built with (manifest.json sha256 {found[:12]} != {config.manifest_sha256[:12]}): "
                              "copy the same engines to every node")
        self.replica = serve.get_replica_context().replica_id.unique_id
        threads = 0 if config.gpu else config.threads_per_replica
        fatal: list[str] = []
        self.worker = Worker(lambda: Pipeline(engines, provider=config.serve.provider, threads=threads),
                             max_queue=2, metrics=Metrics(), on_fatal=fatal.append)
        self.worker.start()
        while not self.worker.ready.wait(0.1):  # Ray marks the replica running once __init__ returns
            if fatal or not self.worker.thread.is_alive():
                raise SfedgeError(fatal[0] if fatal else "the engine worker stopped while loading")
        self.tmp = Path(tempfile.mkdtemp(prefix="sfedge-replica-"))
        keep = config.max_prefixes

        async def hold(key: str) -> str:  # the "model" is the video's key: holding it costs nothing here
            return key

        self._hold = serve.multiplexed(max_num_models_per_replica=keep)(hold)
        # Ray's own metrics (each node's metrics export port, tagged with application, deployment, replica)
        self._answers = ray_metrics.Counter("sfedge_engine_answers", description="answers by outcome (done, "
                                            "error, cancelled)", tag_keys=("outcome",))
        self._hits = ray_metrics.Counter("sfedge_engine_prefix_cache_hits",
                                         description="prompts that reused a cached prefix")
        self._reused = ray_metrics.Counter("sfedge_engine_prefix_reused_tokens",
                                           description="prompt positions taken from the prefix cache")
        log.info("replica %s ready (pid %d, %d ONNX Runtime threads)", self.replica, os.getpid(), threads)

    async def generate(self, request: dict):
        key = serve.get_multiplexed_model_id()
        if key:
            await self._hold(key)  # tells the router this replica now holds the video's prefix
        yield ("replica", self.replica)
        video, temporary = self._video(request)
        task = Task(video, request["question"], request["options"], request["gen"], request["stop"],
                    (lambda: video.unlink(missing_ok=True)) if temporary else (lambda: None), temporary)
        job = Job(task, asyncio.get_running_loop())
        try:
            self.worker.submit(job)
        except Exception:
            task.release()
            raise
        try:
            while True:
                event = await job.events.get()
                if event[0] in TERMINAL:
                    self._count(*event)
                yield event
                if event[0] in TERMINAL:
                    return
        finally:  # the caller went away (cancelled) or the answer ended: a no-op once the job is done
            self.worker.withdraw(job, "disconnect")

    def _count(self, kind: str, value) -> None:
        self._answers.inc(tags={"outcome": kind})
        if kind == "done" and value.reused_prompt_tokens:
            self._hits.inc()
            self._reused.inc(value.reused_prompt_tokens)

    def _video(self, request: dict) -> tuple[Path, bool]:
        if "data" not in request:
            return Path(request["video"]), False
        fd, name = tempfile.mkstemp(suffix=request["suffix"], dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(request["data"])
        except BaseException:  # e.g. a full disk: no partial upload left behind
            os.unlink(name)
            raise
        return Path(name), True

    def check_health(self) -> None:
        """Ray Serve calls this every health_check_period_s; raising makes it replace the replica."""
        if not self.worker.thread.is_alive():
            raise RuntimeError("the engine worker thread is gone")

    def __del__(self):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop(timeout=5)
        if getattr(self, "tmp", None) is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)  # uploads of answers cut short by the stop
