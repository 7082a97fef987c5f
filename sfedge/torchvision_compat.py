"""Let torchvision import beside a torch whose build its compiled operators do not match.

PyPI's torchvision wheels are CUDA builds pinned to one torch release. Beside the CPU build of that
release (what scripts/setup.sh installs on a machine without a GPU) its C extension does not load,
and `import torchvision` then fails in `torchvision/_meta_registrations.py` with "operator
torchvision::nms does not exist": it registers fake (meta) kernels for operators that were never
registered. transformers imports torchvision whenever it is installed (image_utils), so that one
failure breaks every transformers model import, LLaVA-NeXT's included.

sfedge needs only torchvision's tensor transforms (transformers' VideoLLaMA3 video processor resizes
with `torchvision.transforms.v2.functional`), none of its compiled operators. `install()` puts a
finder on `sys.meta_path` that, the moment torchvision itself is imported, makes
`torch.library.register_fake` skip a `torchvision::` operator that does not exist (and only such an
operator: with a working torchvision nothing changes), then restores it. It imports nothing until
torchvision is imported, so the torch-free runtime stays torch-free.
"""

from __future__ import annotations

import importlib.abc
import sys

_NAMESPACE = "torchvision::"


class _Finder(importlib.abc.MetaPathFinder):
    """Stays on sys.meta_path: transformers probes torchvision with find_spec before importing it,
    and every spec handed out must carry the wrapped loader."""

    searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision" or self.searching:
            return None
        import importlib.machinery

        self.searching = True
        try:  # the real finders locate the package
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        finally:
            self.searching = False
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        import torch.library

        original = torch.library.register_fake

        def register_fake(op, func=None, /, *args, **kwargs):
            if not (isinstance(op, str) and op.startswith(_NAMESPACE)):
                return original(op, func, *args, **kwargs)

            def register(fn):
                try:
                    return original(op, fn, *args, **kwargs)
                except RuntimeError as e:  # the operator is not registered: its C extension did not load
                    if "does not exist" not in str(e):
                        raise
                    return fn

            return register(func) if func is not None else register

        torch.library.register_fake = register_fake
        try:
            self.inner.exec_module(module)
        finally:
            torch.library.register_fake = original


def install() -> None:
    """Idempotent; a no-op once torchvision is imported."""
    if "torchvision" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
