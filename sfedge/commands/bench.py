"""`sfedge bench ENGINES`: per-stage latency and memory of the engines vs the PyTorch reference."""

from __future__ import annotations

from pathlib import Path

from ..errors import SfedgeError
from ._common import add_json_flag, existing_path, print_json

HELP = "benchmark the engines stage by stage against the PyTorch reference (fixed new-token count)"


def add_arguments(p) -> None:
    p.add_argument("engines", help="engines directory (from `sfedge export`)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--video", help="video file or directory of frames")
    src.add_argument("--frames", type=int, default=50, help="synthetic clip of N frames, cached (default 50)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per answer, EOS ignored (default 128)")
    p.add_argument("--runs", type=int, default=3, help="timed runs (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "tensorrt"), help="engines' provider")
    p.add_argument("--model", help="reference checkpoint (default: the manifest's source checkpoint)")
    p.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--no-roofline", action="store_true", help="skip measuring bandwidth / matmul ceilings")
    p.add_argument("--plot", metavar="PNG", help="write a bar chart of the stages (matplotlib)")
    p.add_argument("--no-prune", action="store_true", help="VideoLLaMA3 engines: keep every visual token "
                   "(engines and reference alike)")
    add_json_flag(p)


def run(args) -> int:
    engines = existing_path(args.engines, "engines directory")
    if args.video:
        existing_path(args.video, "video")
    for flag in ("frames", "new_tokens", "runs"):
        if getattr(args, flag) < 1:
            raise SfedgeError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise SfedgeError("--warmup must be >= 0")

    from ..bench.report import environment, format_table, plot
    from ..bench.runner import BenchConfig, run_bench, synthetic_clip
    from ..manifest import load_manifest

    load_manifest(engines, verify_files=False)  # a clear error before anything slow
    video = Path(args.video) if args.video else synthetic_clip(args.frames)
    cfg = BenchConfig(engines=engines, video=video, new_tokens=args.new_tokens, runs=args.runs, warmup=args.warmup,
                      provider=args.provider, reference=not args.no_reference, model=args.model,
                      roofline=not args.no_roofline, prune=not args.no_prune)
    log = (lambda _m: None) if args.json else print
    try:
        report = run_bench(cfg, log=log)
    except ValueError as e:
        raise SfedgeError(str(e)) from None
    report["environment"] = environment()
    if args.plot:
        report["plot"] = str(plot(report, args.plot))
    print(format_table(report))
    if args.json:
        print_json(report)
    return 0
