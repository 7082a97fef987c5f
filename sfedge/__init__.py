"""sfedge: SlowFast-LLaVA video LLM -> ONNX / TensorRT engines and a lean runtime."""

__version__ = "0.1.0"
