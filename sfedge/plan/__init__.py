"""`sfedge plan`: will a model fit a Jetson or GPU, and how fast can it be (torch-free).

devices.py  the target table (every figure with its source), `cpu` measured on this host
model.py    the model: geometry, dtypes per precision, engine file bytes (real or computed)
budget.py   memory budget line by line, fit and levers, latency floors (bench's roofline formulas)
report.py   `make_plan` (the one entry point) and its text rendering
"""
