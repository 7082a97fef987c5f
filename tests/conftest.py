"""Shared fixtures: the tiny model, synthetic clips and tiny engines, each made once per session.

Engines for the runtime tests are exported with validate=False: export validation is the
exporter's own tests' business; the runtime tests check the engines against the reference.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("SFEDGE_CACHE", "")  # set per session below


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's ~/.cache/sfedge."""
    path = tmp_path_factory.mktemp("sfedge-cache")
    os.environ["SFEDGE_CACHE"] = str(path)
    yield path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from sfedge.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, llm="llama")


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory):
    from sfedge.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-mistral", seed=1, llm="mistral")


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory):
    from sfedge.synthetic import make_clip

    return make_clip(tmp_path_factory.mktemp("clips") / "shapes.mp4", num_frames=60, seed=0)


def export_tiny(tmp_path_factory, ckpt, name: str, precision: str):
    """Tiny engines exported on CPU without validation (see the module docstring)."""
    from sfedge.export import export_model

    out = tmp_path_factory.mktemp("engines") / name
    export_model(ckpt, out, precision=precision, device="cpu", validate=False, progress=False)
    return out


@pytest.fixture(scope="session")
def engines_fp32(tmp_path_factory, tiny_dir):
    return export_tiny(tmp_path_factory, tiny_dir, "tiny-llama-fp32", "fp32")


@pytest.fixture(scope="session")
def engines_mistral(tmp_path_factory, tiny_mistral_dir):
    return export_tiny(tmp_path_factory, tiny_mistral_dir, "tiny-mistral-fp32", "fp32")


@pytest.fixture(scope="session")
def pipeline_fp32(engines_fp32):
    from sfedge.runtime.pipeline import Pipeline

    return Pipeline(engines_fp32)


@pytest.fixture(scope="session")
def reference_llama(tiny_dir, pipeline_fp32):
    from sfedge.reference.model import SlowFastLlava

    return SlowFastLlava.from_pretrained(tiny_dir, spec=pipeline_fp32.spec)


@pytest.fixture(scope="session")
def short_clips(tmp_path_factory):
    """name -> path: video files with fewer than 10 frames, another codec, and image directories."""
    from sfedge.synthetic import has_encoder, make_clip, make_image_dir

    root = tmp_path_factory.mktemp("runtime-clips")
    clips = {
        "mp4-3": make_clip(root / "three.mp4", 3, seed=1),
        "mp4-7": make_clip(root / "seven.mp4", 7, seed=2),
        "mp4-12": make_clip(root / "twelve.mp4", 12, seed=3),
        "dir-5": make_image_dir(root / "dir5", 5, seed=4),
        "dir-20": make_image_dir(root / "dir20", 20, seed=5),
    }
    if has_encoder("libvpx-vp9"):
        clips["webm-9"] = make_clip(root / "nine.webm", 9, seed=6)
    return clips
