"""Time the export's tokenizer guard and the runtime's canary re-check on a checkpoint.

    python scripts/tokenizer_guard_cost.py CKPT_DIR [--repeat 5]

CKPT_DIR: a llava-hf checkpoint (or one made by sfedge.models.sentencepiece_ckpt). Prints the
median seconds of `guard` (both tokenizers over every canary chunk) and the median milliseconds
of `check_canary` (what opening the engines adds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("ckpt", type=Path)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    from sfedge.export.tokenizer_guard import guard
    from sfedge.prompts import detect_family
    from sfedge.runtime.tokenizer import TextTokenizer, check_canary

    tok = TextTokenizer(args.ckpt)
    family = detect_family(tok.vocab())
    times, block = [], None
    for _ in range(args.repeat):
        t = time.perf_counter()
        block = guard(args.ckpt, args.ckpt, family)
        times.append(time.perf_counter() - t)
    checks = []
    for _ in range(args.repeat * 4):
        t = time.perf_counter()
        check_canary(tok, {"tokenizer_guard": block})
        checks.append(time.perf_counter() - t)
    print(f"{len(block['canaries'])} canary chunks ({family}): guard median {statistics.median(times):.3f} s, "
          f"check_canary median {statistics.median(checks) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
