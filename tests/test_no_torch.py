"""The runtime imports neither torch nor transformers: statically (no such import under
sfedge/runtime/) and at run time (a fresh interpreter answers a question on real engines)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path


import sfedge.runtime

FORBIDDEN = ("torch", "transformers")


def test_no_forbidden_import_in_runtime_sources():
    for path in Path(sfedge.runtime.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_pipeline_runs_without_torch_or_transformers(engines_fp32, clip_path):
    code = f"""
import json, sys
from sfedge.runtime.pipeline import Pipeline
from sfedge.spec import GenerationSpec
pipe = Pipeline({str(engines_fp32)!r})
r = pipe.ask({str(clip_path)!r}, "What is moving?", ["red", "blue"], GenerationSpec(max_new_tokens=4))
print(json.dumps({{"tokens": r.token_ids, "loaded": [m for m in {FORBIDDEN!r} if m in sys.modules]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tokens"] and result["loaded"] == []


def test_ask_command_runs_without_torch_or_transformers(engines_fp32, clip_path):
    code = f"""
import sys
from sfedge.cli import main
rc = main(["ask", {str(engines_fp32)!r}, {str(clip_path)!r}, "What?", "--max-new-tokens", "3", "--json"])
print([m for m in {FORBIDDEN!r} if m in sys.modules], rc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[] 0"
