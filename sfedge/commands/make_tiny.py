"""`sfedge make-tiny OUT`: write the tiny random LLaVA-NeXT checkpoint to a directory."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import SfedgeError
from ._common import add_json_flag, print_json

HELP = "write a tiny random-weight checkpoint (LLaVA-NeXT by default, or VideoLLaMA3) for tests and demos"
FAMILIES = ("llava_next", "videollama3")


def add_arguments(p) -> None:
    p.add_argument("out", metavar="OUT", help="output directory (must be empty or absent unless --force)")
    p.add_argument("--seed", type=int, default=0, help="weight seed; same seed, same bytes (default 0)")
    p.add_argument("--family", choices=FAMILIES, default="llava_next",
                   help="model family: llava_next (SlowFast-LLaVA, default) or videollama3 (transformers' VideoLLaMA3)")
    p.add_argument("--llm", choices=("llama", "mistral"), default="llama",
                   help="text model architecture (llava_next only; VideoLLaMA3's is Qwen2)")
    p.add_argument("--force", action="store_true", help="write into OUT even if it is not empty")
    add_json_flag(p)


def run(args) -> int:
    from ..models.tiny import make_tiny
    from ..models.tiny_videollama3 import make_tiny_videollama3

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise SfedgeError(f"{out} exists and is not empty (use --force to overwrite)")
    if out.exists() and not out.is_dir():
        raise SfedgeError(f"{out} is a file, not a directory")
    start = time.perf_counter()
    if args.family == "videollama3":
        path, llm = make_tiny_videollama3(out, seed=args.seed), "qwen2"
    else:
        path, llm = make_tiny(out, seed=args.seed, llm=args.llm), args.llm
    seconds = time.perf_counter() - start
    if args.json:
        print_json({"path": path, "family": args.family, "seed": args.seed, "llm": llm, "seconds": round(seconds, 2)})
    else:
        print(f"tiny {args.family} ({llm}) checkpoint (seed {args.seed}) written to {path} in {seconds:.1f} s")
    return 0
