"""The model families sfedge exports and runs, and how one is found (see base.py for what a family
declares). Export detects the family from the checkpoint's `model_type` and records its name in the
manifest ("family"); the runtime reads it back from there. A manifest without "family" was written
before families existed: it is SlowFast-LLaVA's (llava_next).

Adding a family: a module declaring a `Family`, and one entry in FAMILIES.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SfedgeError
from .base import Family, PromptContext, VisualBlock
from .llava_next import LLAVA_NEXT
from .video_llama_3 import VIDEO_LLAMA_3

FAMILIES: dict[str, Family] = {f.name: f for f in (LLAVA_NEXT, VIDEO_LLAMA_3)}
DEFAULT = LLAVA_NEXT.name  # what a manifest without "family" holds

__all__ = ["FAMILIES", "Family", "PromptContext", "VisualBlock", "check_same_family", "family_for_checkpoint",
           "family_for_model_type",
           "family_of_manifest", "get_family"]


def get_family(name: str) -> Family:
    """The family called `name`; SfedgeError naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):  # TypeError: a manifest whose "family" is not a string
        raise SfedgeError(f"unknown model family {name!r}; this sfedge knows {', '.join(FAMILIES)}") from None


def family_for_model_type(model_type: str | None) -> Family:
    """The family that accepts a checkpoint config's `model_type`; SfedgeError (one line, naming the
    supported model types) for any other."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{t} ({f.name})" for f in FAMILIES.values() for t in f.model_types)
    raise SfedgeError(f"model_type {model_type!r} is not supported; supported: {supported}")


def family_for_checkpoint(ckpt: str | Path) -> Family:
    """The family of a checkpoint directory, from its config.json's `model_type`."""
    path = Path(ckpt) / "config.json"
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise SfedgeError(f"cannot read the checkpoint's config {path}: {e}") from None
    return family_for_model_type(model_type)


def family_of_manifest(manifest: dict) -> Family:
    """The family an engines directory was exported for (manifest "family"; absent: llava_next)."""
    return get_family(manifest.get("family", DEFAULT))


def check_same_family(checkpoint: str | Path, family: Family) -> None:
    """SfedgeError (one line) unless the reference checkpoint (a directory or a tiny model's name)
    is of the engines' family: verify and bench compare engines only with their own kind of model."""
    from ..models.tiny import resolve_model

    theirs = family_for_checkpoint(resolve_model(checkpoint))
    if theirs is not family:
        raise SfedgeError(f"the checkpoint {checkpoint} is a {theirs.name} model but the engines are {family.name}: "
                          f"pass the checkpoint the engines were exported from (--model)")
