"""Shared fixtures: the tiny model, synthetic clips and tiny engines, each made once per session."""

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
