"""`sfedge serve --ray`'s settings without a Ray cluster: the CLI's one-line errors, and the Ray Serve
config file (docs/ray-serve.yaml) building the same application as the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
serve = pytest.importorskip("ray.serve")  # the [cluster] extra
yaml = pytest.importorskip("yaml")

from sfedge.cli import main
from sfedge.cluster.config import INGRESS, from_args
from sfedge.errors import SfedgeError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, message", [
    (["--replicas", "2"], "--replicas needs --ray"),
    (["--ray", "--autoscale", "3:1"], "--autoscale must be MIN:MAX with 1 <= MIN <= MAX, got '3:1'"),
    (["--ray", "--replicas", "0"], "replicas must be >= 1, got 0"),
    (["--ray", "--gpus-per-replica", "1"], "gpus-per-replica > 0 needs --provider cuda or tensorrt"),
    (["--ray", "--provider", "cuda"], "--provider cuda needs --gpus-per-replica"),
    (["--ray", "--replicas", "3", "--ray-cpus", "2"], "3 replica(s) need 3 CPUs and the Ray cluster has 2"),
])
def test_cli_refuses_bad_cluster_flags_in_one_line(engines_fp32, capsys, monkeypatch, flags, message):
    def started(*args, **kwargs):
        raise AssertionError("Ray was started: the flags were not refused first")

    monkeypatch.setattr("ray.init", started)
    assert main(["serve", str(engines_fp32), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_config_file_deploys_the_same_app(engines_fp32, tmp_path):
    text = (ROOT / "docs" / "ray-serve.yaml").read_text()
    doc = yaml.safe_load(text.replace("/shared/engines/vicuna-7b-int4", str(engines_fp32)))
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(doc)  # Ray Serve's own schema for `serve deploy`
    app = doc["applications"][0]
    assert app["import_path"] == "sfedge.cluster.app:app_builder"
    config = from_args({**app["args"], "allowed_dirs": [str(tmp_path)]})
    assert config.autoscale == (1, 8) and config.gpus_per_replica == 1 and config.serve.provider == "cuda"
    engine = config.engine_options()
    assert engine["max_ongoing_requests"] == 1 and engine["max_queued_requests"] == config.serve.max_queue
    assert engine["ray_actor_options"] == {"num_cpus": 0, "num_gpus": 1.0}
    assert engine["autoscaling_config"]["max_replicas"] == 8 and "num_replicas" not in engine
    from sfedge.cluster.app import app_builder

    built = app_builder({**app["args"], "allowed_dirs": [str(tmp_path)]})
    assert isinstance(built, serve.Application)
    assert built._bound_deployment.name == INGRESS  # the same two deployments as `sfedge serve --ray`


def test_config_args_are_checked(engines_fp32):
    with pytest.raises(SfedgeError, match="unknown sfedge cluster args: replica"):
        from_args({"engines": str(engines_fp32), "replica": 2})
    with pytest.raises(SfedgeError, match="the args need 'engines'"):
        from_args({"replicas": 2})


def test_a_replica_refuses_engines_that_differ_from_the_apps(engines_fp32, tmp_path):
    """Each replica checks its node's manifest.json against the one the app was built with, before loading."""
    from sfedge.cluster.engine import Engine

    config = from_args({"engines": str(engines_fp32)})
    assert len(config.manifest_sha256) == 64
    config.manifest_sha256 = "0" * 64  # as if another node held an older export at the same path
    with pytest.raises(SfedgeError, match="differ from the ones the application was built with"):
        Engine(config)
    config.serve.engines = tmp_path / "absent"
    with pytest.raises(SfedgeError, match="this node cannot read the engines"):
        Engine(config)
