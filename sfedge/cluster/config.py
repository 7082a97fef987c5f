"""What a Ray Serve deployment of `sfedge serve` needs: the server's own settings (ServeConfig) plus
how many engine replicas, on what, with which limits. Plain data, so that a Ray Serve config file's
`args` (a dict) and the CLI's flags build the same thing (`from_args`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import SfedgeError
from ..manifest import MANIFEST_NAME, load_manifest
from ..serve.app import ServeConfig

APP_NAME = "sfedge"
ENGINE = "SfedgeEngine"  # the deployment that holds the engines (one Pipeline per replica)
INGRESS = "SfedgeIngress"  # the deployment that runs the FastAPI app of `sfedge serve`


@dataclass
class ClusterConfig:
    serve: ServeConfig
    replicas: int = 1  # fixed replica count, unless autoscale is set
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, Ray Serve's autoscaler decides
    gpus_per_replica: float = 0.0  # num_gpus of each engine replica (0: a CPU replica)
    threads_per_replica: int = 1  # CPU replicas: ONNX Runtime's intra-op threads = the replica's num_cpus
    max_prefixes: int = 8  # videos a replica is asked to keep warm (its multiplexed "models")
    health_check_period_s: float = 5.0
    ingress_replicas: int = 1
    manifest_sha256: str = ""  # of the engines' manifest.json when the app was built; every replica checks it

    @property
    def gpu(self) -> bool:
        return self.gpus_per_replica > 0

    def engine_options(self) -> dict:
        """`@serve.deployment` options of the engine deployment: where each limit lives (README, Ray Serve)."""
        opts = {
            # one generation at a time per replica (a Pipeline is not thread-safe): Ray's router holds the rest
            "max_ongoing_requests": 1,
            # requests each ingress replica's handle holds while every replica is busy; beyond: 429
            "max_queued_requests": self.serve.max_queue,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": max(10.0, 2 * self.health_check_period_s),
            "graceful_shutdown_timeout_s": self.serve.grace,
            "ray_actor_options": {"num_cpus": 0 if self.gpu else self.threads_per_replica,
                                  "num_gpus": self.gpus_per_replica},
        }
        if self.autoscale:
            lo, hi = self.autoscale
            opts["autoscaling_config"] = {"min_replicas": lo, "initial_replicas": lo, "max_replicas": hi,
                                          "target_ongoing_requests": 1}
        else:
            opts["num_replicas"] = self.replicas
        return opts

    def ingress_options(self) -> dict:
        # async I/O only (validation, uploads, streaming): no CPU reserved, many requests at once
        return {"num_replicas": self.ingress_replicas, "max_ongoing_requests": 1000,
                "graceful_shutdown_timeout_s": self.serve.grace, "ray_actor_options": {"num_cpus": 0}}

    def to_args(self) -> dict:
        """The `args` of a Ray Serve config file that rebuild this config (`from_args`)."""
        s = self.serve
        return {"engines": str(s.engines), "model_name": s.model_name, "provider": s.provider,
                "allowed_dirs": [str(d) for d in s.allowed_dirs], "max_queue": s.max_queue,
                "max_upload_mb": s.max_upload_mb, "request_timeout": s.request_timeout, "api_key": s.api_key,
                "replicas": self.replicas, "autoscale": f"{self.autoscale[0]}:{self.autoscale[1]}"
                if self.autoscale else None, "gpus_per_replica": self.gpus_per_replica,
                "threads_per_replica": self.threads_per_replica, "max_prefixes": self.max_prefixes,
                "health_check_period_s": self.health_check_period_s, "ingress_replicas": self.ingress_replicas}


def parse_autoscale(text: str) -> tuple[int, int]:
    lo, sep, hi = str(text).partition(":")
    try:
        pair = int(lo), int(hi)
    except ValueError:
        pair = None
    if not sep or pair is None or not 1 <= pair[0] <= pair[1]:
        raise SfedgeError(f"--autoscale must be MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return pair


def manifest_digest(engines: Path) -> str:
    return hashlib.sha256((Path(engines) / MANIFEST_NAME).read_bytes()).hexdigest()


def from_args(args: dict) -> ClusterConfig:
    """A Ray Serve config file's `args` (or the CLI's) -> ClusterConfig; SfedgeError on a bad value."""
    from ..commands.serve import model_id

    known = set(ClusterConfig.__dataclass_fields__) | set(ServeConfig.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown:
        raise SfedgeError(f"unknown sfedge cluster args: {', '.join(unknown)}")
    if not args.get("engines"):
        raise SfedgeError("the args need 'engines': the engines directory (a path every node can read)")
    engines = Path(args["engines"]).resolve()
    manifest = load_manifest(engines, verify_files=False)  # malformed or missing: fail before Ray deploys
    serve = ServeConfig(engines=engines, model_name=args.get("model_name") or model_id(manifest),
                        provider=args.get("provider", "cpu"),
                        allowed_dirs=[Path(d).resolve() for d in args.get("allowed_dirs") or []],
                        max_queue=int(args.get("max_queue", 8)), max_upload_mb=float(args.get("max_upload_mb", 64)),
                        request_timeout=float(args.get("request_timeout", 300)), api_key=args.get("api_key"))
    auto = args.get("autoscale")
    config = ClusterConfig(serve=serve, replicas=int(args.get("replicas", 1)),
                           autoscale=parse_autoscale(auto) if auto else None,
                           gpus_per_replica=float(args.get("gpus_per_replica", 0)),
                           threads_per_replica=int(args.get("threads_per_replica", 1)),
                           max_prefixes=int(args.get("max_prefixes", 8)),
                           health_check_period_s=float(args.get("health_check_period_s", 5.0)),
                           ingress_replicas=int(args.get("ingress_replicas", 1)),
                           manifest_sha256=manifest_digest(engines))
    check(config)
    return config


def check(config: ClusterConfig) -> None:
    for name, value, low in (("replicas", config.replicas, 1), ("threads_per_replica", config.threads_per_replica, 1),
                             ("max_prefixes", config.max_prefixes, 1), ("max_queue", config.serve.max_queue, 1),
                             ("ingress_replicas", config.ingress_replicas, 1)):
        if value < low:
            raise SfedgeError(f"{name.replace('_', '-')} must be >= {low}, got {value}")
    if config.gpus_per_replica < 0:
        raise SfedgeError(f"gpus-per-replica must be >= 0, got {config.gpus_per_replica}")
    if config.gpu and config.serve.provider == "cpu":
        raise SfedgeError("gpus-per-replica > 0 needs --provider cuda or tensorrt (the cpu provider uses no GPU)")
    if config.serve.provider != "cpu" and not config.gpu:
        raise SfedgeError(f"--provider {config.serve.provider} needs --gpus-per-replica (e.g. 1: a GPU per replica)")

