"""sfedge: SlowFast-LLaVA video LLM -> ONNX / TensorRT engines and a lean runtime."""

__version__ = "0.1.0"

from .torchvision_compat import install as _install_torchvision_compat

_install_torchvision_compat()  # before anything imports transformers (see torchvision_compat.py)
