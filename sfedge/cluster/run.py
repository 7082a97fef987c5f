"""`sfedge serve ENGINES --ray`: deploy the application on Ray Serve and wait for SIGTERM / SIGINT.

Without `ray_address` a single-node Ray cluster is started in this process (no dashboard, a small
object store, `num_cpus` CPUs); with it, this process joins an existing cluster (`auto`, or the head's
`host:port`) and the replicas go wherever Ray places them. On SIGTERM / SIGINT the application is
deleted (running answers get `grace` seconds) and a cluster this process started is shut down.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading

from ..errors import SfedgeError
from .config import APP_NAME, ClusterConfig

log = logging.getLogger("sfedge.cluster")


def serve_on_ray(config: ClusterConfig, host: str, port: int, *, ray_address: str | None = None,
                 num_cpus: int | None = None, object_store_mb: int = 256, log_level: str = "info") -> int:
    import ray
    from ray import serve

    from .app import build

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    common = {"include_dashboard": False, "log_to_driver": log_level == "debug",
              "logging_level": logging.WARNING if log_level != "debug" else logging.INFO}
    if ray_address:
        ray.init(address=ray_address, **common)
    else:
        if not config.gpu:  # known before starting anything
            check_resources(config, {"CPU": num_cpus or os.cpu_count()})
        try:
            ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=object_store_mb * 2**20,
                     _node_ip_address="127.0.0.1", **common)  # a cluster of this machine alone, on loopback
        except OSError as e:
            if "path length" not in str(e):
                raise
            raise SfedgeError(f"cannot start Ray: its socket paths under {tempfile.gettempdir()} are too long "
                              "(AF_UNIX: 107 bytes): set RAY_TMPDIR to a short directory, e.g. /tmp/ray") from None
    try:
        check_resources(config, ray.cluster_resources())
        log.info("ray cluster at %s", ray.get_runtime_context().gcs_address)
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(build(config), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as e:
            raise SfedgeError(f"the Ray Serve application failed to deploy: {last_line(e)}") from None
        log.info("serving %s on http://%s:%d with %s", config.serve.model_name, host, port,
                 f"{config.autoscale[0]}..{config.autoscale[1]} replicas" if config.autoscale
                 else f"{config.replicas} replica(s)")
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            stop.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        log.info("stopping: running answers get %g s", config.serve.grace)
        serve.delete(APP_NAME)
        if not ray_address:  # Serve on a cluster we joined belongs to others too: only our app goes
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0


def check_resources(config: ClusterConfig, resources: dict) -> None:
    """Replicas that could never be placed would leave the deployment waiting forever: say so now."""
    least = config.autoscale[0] if config.autoscale else config.replicas
    if config.gpu:
        have, need, what = resources.get("GPU", 0), least * config.gpus_per_replica, "GPUs"
    else:
        have, need, what = resources.get("CPU", 0), least * config.threads_per_replica, "CPUs"
    if need > have:
        raise SfedgeError(f"{least} replica(s) need {need:g} {what} and the Ray cluster has {have:g} "
                          f"(--replicas / --autoscale, --{'gpus' if config.gpu else 'threads'}-per-replica)")


def last_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]
    return (errors or lines or [type(e).__name__])[-1]
