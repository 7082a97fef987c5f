"""Variants of an exported decoder for scripts/cpu_ab.py (issue 18): the same weights (hard-linked
model.onnx.data), one graph setting changed in a copy of llm/model.onnx.

    python scripts/llm_variant.py ENGINES/llm OUT_DIR acc0|acc1|acc2|acc4|kv16

accN: every MatMulNBits' accuracy_level = N (0: fp32 compute; 4: int8 activations, the export's
CPU default). kv16: past_key_values.* / present.* declared float16 (GroupQueryAttention's T_CACHE;
activations stay fp32). OUT_DIR must be on the same filesystem as ENGINES (hard link: ONNX Runtime
refuses external data outside the model's directory).
"""

import os
import sys
from pathlib import Path

import onnx

src, dst, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
dst.mkdir(parents=True, exist_ok=True)
m = onnx.load(str(src / "model.onnx"), load_external_data=False)
if kind.startswith("acc"):
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            for a in n.attribute:
                if a.name == "accuracy_level":
                    a.i = int(kind[3:])
elif kind == "kv16":
    for io in list(m.graph.input) + list(m.graph.output):
        if io.name.startswith(("past_key_values.", "present.")):
            io.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
else:
    sys.exit(f"unknown variant {kind!r}")
onnx.save(m, str(dst / "model.onnx"))
for f in ("model.onnx.data", "genai_config.json"):
    if not (dst / f).exists():
        os.link(src / f, dst / f)
