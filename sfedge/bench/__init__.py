"""`sfedge bench`: per-stage latency of the engines vs the PyTorch reference, with roofline floors."""
