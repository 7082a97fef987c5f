"""The Ray Serve application: `sfedge serve`'s FastAPI app (ingress) over N engine replicas.

    SfedgeIngress (FastAPI app of sfedge/serve, num_cpus 0)  --DeploymentHandle-->  SfedgeEngine x N

Build it from the CLI (`sfedge serve ENGINES --ray ...`, sfedge/cluster/run.py) or from a Ray Serve
config file for `serve run` / `serve deploy` (docs/ray-serve.yaml):

    import_path: sfedge.cluster.app:app_builder
    args: {engines: /shared/engines/llava-7b, replicas: 2, ...}
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ..serve.app import create_app
from .backend import RayBackend
from .config import ENGINE, INGRESS, ClusterConfig, from_args
from .engine import Engine


@serve.ingress()  # the app is made on the replica (`__serve_build_asgi_app__`), not pickled from the driver
class Ingress:
    def __init__(self, engine: DeploymentHandle, config: ClusterConfig):
        self.engine, self.config = engine, config

    def __serve_build_asgi_app__(self):
        return create_app(self.config.serve, backend=lambda metrics: RayBackend(self.engine, metrics))


def build(config: ClusterConfig) -> Application:
    engine = serve.deployment(Engine, name=ENGINE, **config.engine_options()).bind(config)
    return serve.deployment(Ingress, name=INGRESS, **config.ingress_options()).bind(engine, config)


def app_builder(args: dict) -> Application:
    """Ray Serve's application builder (`import_path: sfedge.cluster.app:app_builder`): the config
    file's `args` are the CLI's options (config.from_args)."""
    return build(from_args(dict(args)))
