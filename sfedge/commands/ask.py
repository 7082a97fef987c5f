"""`sfedge ask ENGINES VIDEO QUESTION`: answer a question about a video with the lean runtime."""

from __future__ import annotations

import sys

from ..errors import SfedgeError
from ._common import add_json_flag, existing_path, print_json, utf8_text

HELP = "answer a question about a video (file or image directory) with exported engines"


def add_arguments(p) -> None:
    p.add_argument("engines", metavar="ENGINES", help="engines directory written by `sfedge export`")
    p.add_argument("video", metavar="VIDEO", help="video file, or a directory of image files (sorted by name)")
    p.add_argument("question", metavar="QUESTION", help="the question")
    add_generation_arguments(p)
    p.add_argument("--no-prune", action="store_true",
                   help="VideoLLaMA3 engines: keep every visual token (no DiffFP pruning of unchanged patches)")
    add_json_flag(p)


def add_generation_arguments(p) -> None:
    """Flags shared with `sfedge demo`: options, decoding and provider."""
    p.add_argument("--options", default=None, help='multiple choice: "A|B|C" (2 to 26 options, "|"-separated)')
    p.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="ONNX Runtime execution provider (default cpu)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="with --provider cuda: capture the decode step in a CUDA graph (not yet run on a GPU)")


def generation_spec(args):
    """GenerationSpec from the flags; SfedgeError on values out of range."""
    from ..spec import GenerationSpec

    try:
        return GenerationSpec(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    except ValueError as e:
        raise SfedgeError(f"--{str(e).replace('_', '-')}") from None


def cuda_graph(args) -> bool:
    """--cuda-graph, refused (one line) without --provider cuda."""
    if args.cuda_graph and args.provider != "cuda":
        raise SfedgeError("--cuda-graph needs --provider cuda")
    return args.cuda_graph


class StreamPrinter:
    """Prints text pieces to stdout as they come, without the answer's leading whitespace."""

    def __init__(self):
        self.started = False

    def __call__(self, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()


def run(args) -> int:
    from ..runtime.pipeline import open_pipeline, parse_options

    existing_path(args.engines, "engines directory")
    existing_path(args.video, "video")
    utf8_text(args.question, "question")
    options = parse_options(utf8_text(args.options, "--options value")) if args.options is not None else None
    gen = generation_spec(args)
    pipe = open_pipeline(args.engines, provider=args.provider, cuda_graph=cuda_graph(args),
                         **({"prune": False} if args.no_prune else {}))
    result = pipe.ask(args.video, args.question, options, gen, on_token=None if args.json else StreamPrinter())
    if args.json:
        print_json(result.to_dict())
        return 0
    sys.stdout.write("\n")
    if result.choice is not None:
        print(f"choice: {result.choice}")
    return 0
