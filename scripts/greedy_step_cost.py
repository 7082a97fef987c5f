"""The greedy decode loop's second session (greedy_step.onnx: ArgMax + Gather) per token, measured side by
side with the LLM step alone on one Decoder (sfedge/bench/greedy_step.py), for each engines directory
given; one JSON object per line, then a summary object on the last line.

    python scripts/greedy_step_cost.py ENGINES [ENGINES ...] [--provider cpu] [--cuda-graph off|on|both]
        [--tokens 32] [--rounds 5] [--prompt 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform


def main() -> None:
    from sfedge.bench.greedy_step import measure_engines

    ap = argparse.ArgumentParser()
    ap.add_argument("engines", nargs="+")
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--cuda-graph", choices=("off", "on", "both"), default="off",
                    help="capture the decode step and the greedy step in CUDA graphs (cuda provider)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=64)
    args = ap.parse_args()
    results = []
    for eng in args.engines:
        for graph in {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graph]:
            r = measure_engines(eng, args.provider, cuda_graph=graph, tokens=args.tokens, rounds=args.rounds,
                                prompt_positions=args.prompt)
            print(json.dumps(r), flush=True)
            results.append(r)
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "results": results}))


if __name__ == "__main__":
    main()
