"""`sfedge build ENGINES`: TensorRT plans for the vision and SlowFast graphs, built on this device.

Plans are specific to the GPU and the TensorRT version, so run this on the target (a Jetson with
JetPack 6 has TensorRT); `sfedge ask --provider tensorrt` then runs the plans natively. The LLM
stays on ONNX Runtime's CUDA execution provider (its contrib ops are not TensorRT-parsable).
"""

from __future__ import annotations

import argparse

from ._common import add_json_flag, existing_path, print_json

HELP = "build TensorRT plans for the vision and SlowFast graphs on this device (the LLM stays on ONNX Runtime)"


def add_arguments(p) -> None:
    from ..export.tensorrt import DEFAULT_WORKSPACE_GB

    p.add_argument("engines", metavar="ENGINES", help="engines directory written by `sfedge export`")
    p.add_argument("--components", default="vision,slowfast", help="comma-separated (default: vision,slowfast)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="FP16 kernels for fp32 graphs (TensorRT 10's FP16 flag; fp16 graphs are built strongly "
                        "typed either way; default: on)")
    p.add_argument("--workspace-gb", type=float, default=DEFAULT_WORKSPACE_GB,
                   help=f"builder workspace limit in GiB (default {DEFAULT_WORKSPACE_GB:g})")
    p.add_argument("--opt-frames", type=int, default=None,
                   help="frame count the profile is tuned for (default: the manifest's sampling num_frames)")
    add_json_flag(p)


def run(args) -> int:
    from ..export.tensorrt import build_plans, parse_components

    existing_path(args.engines, "engines directory")
    info = build_plans(args.engines, parse_components(args.components), fp16=args.fp16,
                       workspace_gb=args.workspace_gb, opt_frames=args.opt_frames, progress=not args.json)
    if args.json:
        print_json(info)
        return 0
    gpu = info["gpu"] or {}
    print(f"TensorRT {info['tensorrt_version']} on {gpu.get('name', 'unknown GPU')} "
          f"(sm {gpu.get('compute_capability', '?')})")
    for name, plan in info["plans"].items():
        print(f"{name:9s} {plan['path']}  {plan['bytes'] / 2**20:.1f} MiB  {plan['build_seconds']:.1f} s  "
              f"{'fp16' if plan['fp16_flag'] or plan['strongly_typed'] else 'fp32'}")
    return 0
