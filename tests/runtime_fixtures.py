"""Session fixtures for the runtime tests: tiny engines exported once, one reference model each.

Test modules star-import them (`from runtime_fixtures import *`: pytest finds fixtures among a
module's names, and a fixture depending on another needs both there). pytest keeps an imported
session fixture's value per importing module, so the expensive values are memoised here
(`_ONCE`) and made once per test session. Engines are exported with
validate=False: export validation is the exporter's own tests' business, the runtime tests
check the engines against the reference themselves.
"""

from __future__ import annotations

import pytest

__all__ = ["engines_fp32", "engines_mistral", "pipeline_fp32", "reference_llama", "short_clips"]


_ONCE: dict = {}


def _once(key, make):
    if key not in _ONCE:
        _ONCE[key] = make()
    return _ONCE[key]


def _export(tmp_path_factory, ckpt, name: str, precision: str):
    """Tiny engines exported once per session (cpu, validate=False)."""
    from sfedge.export import export_model

    def make():
        out = tmp_path_factory.mktemp("engines") / name
        export_model(ckpt, out, precision=precision, device="cpu", validate=False, progress=False)
        return out
    return _once(("engines", name), make)


@pytest.fixture(scope="session")
def engines_fp32(tmp_path_factory, tiny_dir):
    return _export(tmp_path_factory, tiny_dir, "tiny-llama-fp32", "fp32")


@pytest.fixture(scope="session")
def engines_mistral(tmp_path_factory, tiny_mistral_dir):
    return _export(tmp_path_factory, tiny_mistral_dir, "tiny-mistral-fp32", "fp32")


@pytest.fixture(scope="session")
def pipeline_fp32(engines_fp32):
    from sfedge.runtime.pipeline import Pipeline

    return _once("pipeline", lambda: Pipeline(engines_fp32))


@pytest.fixture(scope="session")
def reference_llama(tiny_dir, pipeline_fp32):
    from sfedge.reference.model import SlowFastLlava

    return _once("reference", lambda: SlowFastLlava.from_pretrained(tiny_dir, spec=pipeline_fp32.spec))


@pytest.fixture(scope="session")
def short_clips(tmp_path_factory):
    """name -> path: video files with fewer than 10 frames, another codec, and image directories."""
    return _once("clips", lambda: _make_clips(tmp_path_factory.mktemp("runtime-clips")))


def _make_clips(root):
    from sfedge.synthetic import has_encoder, make_clip, make_image_dir

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
