"""`sfedge serve ENGINES`: an OpenAI-compatible HTTP server for questions about videos."""

from __future__ import annotations

from pathlib import Path

from ..errors import SfedgeError
from ._common import existing_path

HELP = "serve the engines over HTTP with OpenAI's chat completions API (video_url / input_video parts)"


def add_arguments(p) -> None:
    p.add_argument("engines", metavar="ENGINES", help="engines directory written by `sfedge export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allowed-dir", action="append", default=[], metavar="DIR",
                   help="file:// video URLs may name files under DIR (repeatable; default: none, file:// refused)")
    p.add_argument("--max-queue", type=int, default=8, metavar="N",
                   help="requests that may wait for the engines (default 8); more get 429 with Retry-After")
    p.add_argument("--max-upload-mb", type=float, default=64.0, metavar="N",
                   help="largest video sent in a request, decoded (default 64)")
    p.add_argument("--request-timeout", type=float, default=300.0, metavar="S",
                   help="seconds from arrival to the last byte (default 300): 504 before the first byte, "
                        "an error event mid-stream")
    p.add_argument("--api-key", default=None, metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients send (default: the manifest's checkpoint name)")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="ONNX Runtime execution provider (default cpu)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    g = p.add_argument_group("scale-out on Ray Serve (the [cluster] extra)")
    g.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: this app as the ingress, engine replicas behind it")
    n = g.add_mutually_exclusive_group()
    n.add_argument("--replicas", type=int, default=None, metavar="N", help="engine replicas (default 1)")
    n.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                   help="let Ray Serve's autoscaler keep MIN..MAX engine replicas (1 ongoing request each)")
    g.add_argument("--gpus-per-replica", type=float, default=0.0, metavar="G",
                   help="num_gpus of each replica (with --provider cuda/tensorrt; default 0: CPU replicas)")
    g.add_argument("--threads-per-replica", type=int, default=1, metavar="T",
                   help="CPU replicas: ONNX Runtime threads and Ray CPUs of each replica (default 1)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster ('auto' or HEAD:6379) instead of starting one on this machine")
    g.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                   help="CPUs of the Ray cluster started here (default: all of this machine's)")


def run(args) -> int:
    from ..manifest import load_manifest

    try:
        from ..serve.app import ServeConfig
        from ..serve.server import serve
    except ModuleNotFoundError as e:
        raise SfedgeError(f"sfedge serve needs the [serve] extra ({e.name} is missing): "
                          "pip install 'sfedge[serve]'") from None

    engines = existing_path(args.engines, "engines directory")
    manifest = load_manifest(engines, verify_files=False)  # a missing or malformed manifest fails here, at once
    for d in args.allowed_dir:
        if not Path(d).is_dir():
            raise SfedgeError(f"--allowed-dir is not a directory: {d}")
    if args.max_queue < 1:
        raise SfedgeError(f"--max-queue must be >= 1, got {args.max_queue}")
    if not args.max_upload_mb > 0:
        raise SfedgeError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if not args.request_timeout > 0:
        raise SfedgeError(f"--request-timeout must be > 0, got {args.request_timeout}")
    if not 0 <= args.port < 65536:
        raise SfedgeError(f"--port must be in 0..65535, got {args.port}")
    ray_only = [f for f, v in (("--replicas", args.replicas), ("--autoscale", args.autoscale),
                               ("--gpus-per-replica", args.gpus_per_replica or None),
                               ("--ray-address", args.ray_address), ("--ray-cpus", args.ray_cpus)) if v is not None]
    if ray_only and not args.ray:
        raise SfedgeError(f"{ray_only[0]} needs --ray")
    config = ServeConfig(engines=engines, model_name=args.model_name or model_id(manifest), provider=args.provider,
                         allowed_dirs=[Path(d) for d in args.allowed_dir], max_queue=args.max_queue,
                         max_upload_mb=args.max_upload_mb, request_timeout=args.request_timeout, api_key=args.api_key)
    if args.ray:
        return _serve_on_ray(config, args)
    return serve(config, args.host, args.port, log_level=args.log_level)


def _serve_on_ray(config, args) -> int:
    try:
        from ..cluster.config import ClusterConfig, check, manifest_digest, parse_autoscale
        from ..cluster.run import serve_on_ray
    except ModuleNotFoundError as e:
        raise SfedgeError(f"sfedge serve --ray needs the [cluster] extra ({e.name} is missing): "
                          "pip install 'sfedge[cluster]'") from None
    config.engines = config.engines.resolve()  # the replicas' working directory is not ours
    config.allowed_dirs = [d.resolve() for d in config.allowed_dirs]
    cluster = ClusterConfig(serve=config, replicas=1 if args.replicas is None else args.replicas,
                            autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
                            gpus_per_replica=args.gpus_per_replica, threads_per_replica=args.threads_per_replica,
                            manifest_sha256=manifest_digest(config.engines))
    check(cluster)
    return serve_on_ray(cluster, args.host, args.port, ray_address=args.ray_address, num_cpus=args.ray_cpus,
                        log_level=args.log_level)


def model_id(manifest: dict) -> str:
    """The manifest's source checkpoint: a Hub id as it is, a local checkpoint by its directory's name."""
    name = str(manifest.get("source", {}).get("name") or "sfedge")
    return Path(name).name if name.startswith(("/", ".", "~")) or "\\" in name else name
