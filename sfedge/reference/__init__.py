"""The PyTorch SlowFast-LLaVA (SPEC.md) on transformers LlavaNext: the judge of parity."""
