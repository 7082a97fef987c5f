"""The ingress side: `sfedge serve`'s FastAPI app hands its jobs to this backend instead of a local
Worker; it sends each to an engine replica through a Ray Serve DeploymentHandle and relays the
replica's events back to the job, so the app's routes, errors, streaming and metrics stay the same.

* Affinity: the handle call carries `multiplexed_model_id` = the video's key (sha256 of an upload's
  bytes, or of a shared file's path, size and mtime), so Ray Serve's router sends it to a replica
  that already holds that video (engine.py); `X-Sfedge-Replica` on the response names the replica.
* Limits: the engine deployment's max_queued_requests (= --max-queue) is enforced by the handle:
  beyond it Ray raises BackPressureError, relayed as QueueFull (429 with Retry-After).
* A replica that dies: a request the client has seen nothing of yet (any non-streamed request, a
  stream before its first piece) is sent once more, to another replica; a stream already under way
  ends with an error event (503, code replica_died). Ray Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading

from prometheus_client import Counter
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from ..serve.metrics import Metrics
from ..serve.worker import Job, QueueFull, Unavailable
from .config import ENGINE

log = logging.getLogger("sfedge.cluster")
REPLICA_HEADER = "X-Sfedge-Replica"
ATTEMPTS = 2  # a request the client has seen nothing of is tried on at most two replicas


class RayBackend:
    def __init__(self, handle, metrics: Metrics):
        self.handle, self.metrics = handle, metrics
        self.ready = threading.Event()
        self._tasks: dict[int, asyncio.Task] = {}
        r = metrics.registry
        self.replica_requests = Counter("sfedge_replica_requests", "chat completions by engine replica and outcome "
                                        "(done, error, cancelled, retried)", ["replica", "outcome"], registry=r)
        self.replica_hits = Counter("sfedge_replica_prefix_cache_hits", "prompts that reused a cached prefix, "
                                    "by engine replica", ["replica"], registry=r)
        self.replica_reused = Counter("sfedge_replica_prefix_reused_tokens", "prompt positions taken from the "
                                      "prefix cache, by engine replica", ["replica"], registry=r)

    # --- the Worker interface the app uses -------------------------------------------------------

    def start(self) -> None:
        self.ready.set()  # the handle waits for a replica by itself

    def stop(self, timeout: float = 30.0) -> None:
        for task in list(self._tasks.values()):
            task.get_loop().call_soon_threadsafe(task.cancel)

    def submit(self, job: Job) -> None:
        task = job.loop.create_task(self._drive(job))
        self._tasks[id(job)] = task
        task.add_done_callback(lambda _: self._tasks.pop(id(job), None))

    def withdraw(self, job: Job, reason: str) -> None:
        job.cancel(reason)
        task = self._tasks.get(id(job))
        if task is not None and not task.done():
            task.cancel()  # cancels the handle call: Ray cancels the replica's generator, which withdraws it there

    def health(self) -> dict:
        """The engine replicas by state (Ray Serve's controller); Unavailable when none is running."""
        status = serve.status().applications[serve.get_replica_context().app_name].deployments[ENGINE]
        states = {str(getattr(k, "value", k)): n for k, n in status.replica_states.items()}
        if not states.get("RUNNING"):
            raise Unavailable(f"no engine replica is running ({states or 'none yet'})")
        return {"replicas": states, "deployment_status": str(getattr(status.status, "value", status.status))}

    # --- one job -------------------------------------------------------------------------------------

    async def _drive(self, job: Job) -> None:
        task = job.task
        try:
            request = await asyncio.to_thread(payload, job)
            key = await asyncio.to_thread(video_key, task.video, task.temporary)
        except OSError as e:
            job.emit("error", e)
            return
        finally:
            task.release()  # the replica gets its own copy (uploads) or reads the shared path
        for attempt in range(ATTEMPTS):
            replica, seen = None, False
            call = self.handle.options(stream=True, multiplexed_model_id=key).generate.remote(request)
            ended = False
            try:
                async for kind, value in call:
                    if kind == "replica":
                        replica = job.headers[REPLICA_HEADER] = value
                        continue
                    seen = seen or (kind == "piece" and task.stream)
                    if kind == "done":
                        self.metrics.observe_result(value)
                        if value.reused_prompt_tokens:
                            self.replica_hits.labels(replica).inc()
                            self.replica_reused.labels(replica).inc(value.reused_prompt_tokens)
                    if kind in ("done", "error", "cancelled"):
                        self.replica_requests.labels(replica, kind).inc()
                        ended = True
                    job.emit(kind, value)
                if not ended:  # a stream that stops without its last event must not leave the client waiting
                    job.emit("error", Unavailable(f"the engine replica ({replica}) ended without an answer: retry"))
                return
            except asyncio.CancelledError:
                call.cancel()
                if not job.cancelled.is_set():  # not the client's withdrawal: the ingress is stopping
                    job.emit("error", Unavailable("the server is shutting down"))
                raise
            except BackPressureError as e:
                waiting = e.args[0] if e.args else None  # (num_queued_requests, max_queued_requests, ...)
                job.emit("error", QueueFull(max(1, round(e.retry_after_s or 1)), waiting))
                return
            except RayActorError as e:
                self.replica_requests.labels(replica or "unknown", "retried" if not seen else "error").inc()
                if seen or attempt == ATTEMPTS - 1:
                    log.warning("engine replica %s died while answering: %s", replica, e)
                    job.emit("error", Unavailable(f"the engine replica answering this request ({replica}) died; "
                                                  "Ray Serve replaces it: retry the request"))
                    return
                log.warning("engine replica %s died before the answer reached the client: sent again", replica)
            except RayTaskError as e:  # the replica raised (e.g. its worker was stopping): the cause, once
                job.emit("error", e.cause if isinstance(e.cause, Exception) else e)
                return
            except Exception as e:  # noqa: BLE001 - e.g. Ray Serve's ReplicaUnavailableError: a 503, never a hang
                log.warning("engine call failed: %r", e)
                job.emit("error", Unavailable(f"no engine replica could answer ({type(e).__name__}); retry the request"))
                return


def payload(job: Job) -> dict:
    """What a replica needs: a shared path, or an upload's bytes (through Ray's object store)."""
    t = job.task
    request = {"question": t.question, "options": t.options, "gen": t.gen, "stop": t.stop}
    if t.temporary:
        request["data"], request["suffix"] = t.video.read_bytes(), t.video.suffix
    else:
        request["video"] = str(t.video)
    return request


def video_key(path, temporary: bool) -> str:
    """Which video a request is about, for affinity: an upload by its bytes, a shared file by its path,
    size and modification time (hashing a large file on every request would cost more than it saves)."""
    h = hashlib.sha256()
    if temporary:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]
