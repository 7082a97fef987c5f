"""Model checkpoints sfedge can make or find: the tiny random LLaVA-NeXT and local directories."""

from .tiny import make_tiny, resolve_model

__all__ = ["make_tiny", "resolve_model"]
