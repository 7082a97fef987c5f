"""Measure export-validation errors per precision on the tiny model(s) (README "Export validation
and its tolerances"): exports fp32 / fp16 / int4 engines (no validation), then runs every check and
prints the worst rel / cosine per component, and the int4 weight check.

    PYTHONPATH=$PWD .venv/bin/python scripts/measure_tolerances.py [WORKDIR] [--seeds 0 1 2] [--llm llama mistral]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", nargs="?")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--llm", nargs="+", default=["llama"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int4"])
    args = ap.parse_args()
    from sfedge.errors import ValidationError
    from sfedge.export import export_model
    from sfedge.export.validate import validate_export
    from sfedge.manifest import load_manifest
    from sfedge.models.tiny import make_tiny
    from sfedge.reference.model import SlowFastLlava

    root = Path(args.workdir or tempfile.mkdtemp(prefix="sfedge-tol-"))
    rows = []
    for llm in args.llm:
        for seed in args.seeds:
            ckpt = root / f"tiny-{llm}-{seed}"
            if not ckpt.exists():
                make_tiny(ckpt, seed=seed, llm=llm)
            for precision in args.precisions:
                out = root / f"e-{llm}-{seed}-{precision}"
                if not out.exists():
                    export_model(ckpt, out, precision=precision, device="cpu", validate=False, progress=False)
                manifest = load_manifest(out, verify_files=False)
                ref = SlowFastLlava.from_pretrained(ckpt, lazy_upcast=True)
                try:
                    report = validate_export(out, manifest, ref)
                except ValidationError as e:
                    report = e.report
                row = {"model": llm, "seed": seed, "precision": precision}
                for comp in ("vision", "slowfast", "llm", "chain"):
                    row[comp] = {"rel": report[comp]["rel"], "cosine": report[comp]["cosine"], "passed": report[comp]["passed"]}
                if "int4_weights" in report:
                    row["int4_weights"] = {k: report["int4_weights"][k] for k in ("checked", "passed")}
                rows.append(row)
                print(json.dumps(row))
    for precision in args.precisions:
        sel = [r for r in rows if r["precision"] == precision]
        worst = {c: max(r[c]["rel"] for r in sel) for c in ("vision", "slowfast", "llm", "chain")}
        print(f"{precision}: worst rel over {len(sel)} models: " + ", ".join(f"{c} {v:.3g}" for c, v in worst.items()))


if __name__ == "__main__":
    main()
