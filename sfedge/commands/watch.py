"""`sfedge watch ENGINES --source SRC`: answer questions about a live camera, stream or video file."""

from __future__ import annotations

import sys

from ..errors import SfedgeError
from ._common import add_json_flag, existing_path, print_json

HELP = "watch a camera, stream or video file: each frame encoded once, questions answered from a window"


def add_arguments(p) -> None:
    p.add_argument("engines", metavar="ENGINES", help="engines directory written by `sfedge export`")
    p.add_argument("--source", required=True, metavar="SRC",
                   help="camera index (0, 1, ...: V4L2/USB via OpenCV), stream URL (rtsp://, http://, file://, ...) "
                        "or video file")
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per source second (default 2)")
    p.add_argument("--window", type=int, default=50, help="frames a question is answered over (default 50)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--question", default=None, help="a question asked every --every seconds")
    q.add_argument("--questions-file", default=None, metavar="F.jsonl",
                   help='questions at source times: lines {"t": seconds, "question": ..., "options": [...]}')
    p.add_argument("--every", type=float, default=None, metavar="SECONDS", help="with --question: its period")
    p.add_argument("--skip-threshold", type=float, default=None, metavar="X",
                   help="reuse the last encoded frame's features when every 14x14 patch changed by less than X "
                        "(mean absolute difference, 0-255, on the resized frames; default 4, measured in "
                        "docs/BENCHMARKS.md 'Frame skipping'; 0: encode every frame)")
    rt = p.add_mutually_exclusive_group()
    rt.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                    help="play a video file at its real rate, dropping frames vision cannot keep up with (default)")
    rt.add_argument("--no-realtime", dest="realtime", action="store_false",
                    help="read a video file as fast as possible, dropping nothing (tests, benchmarks)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="most tokens per answer (default 128)")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="ONNX Runtime execution provider (default cpu)")
    p.add_argument("--prefix-cache-mb", type=float, default=0.0,
                   help="host memory for KV prefixes of earlier windows (default 0: questions at one instant "
                        "still share the window's prefill; a sliding window rarely comes back)")
    add_json_flag(p)
    p.epilog = ("Without --question/--questions-file, questions are read from stdin, one a line (text, or "
                '{"question": ..., "options": [...]}). With --json: one line per answer, then {"summary": ...}.')


def run(args) -> int:
    from ..runtime.frame_diff import DEFAULT_SKIP_THRESHOLD
    from ..runtime.pipeline import Pipeline
    from ..runtime.sources import open_source
    from ..runtime.watch import Schedule, Watcher, load_questions, watch
    from ..spec import GenerationSpec

    existing_path(args.engines, "engines directory")
    if (args.question is None) != (args.every is None):
        raise SfedgeError("--question and --every go together")
    if args.every is not None and not args.every > 0:
        raise SfedgeError(f"--every must be > 0, got {args.every}")
    skip = DEFAULT_SKIP_THRESHOLD if args.skip_threshold is None else args.skip_threshold
    if not 0 <= skip <= 255:
        raise SfedgeError(f"--skip-threshold must be within 0-255, got {skip}")
    if args.fps <= 0:
        raise SfedgeError(f"--fps must be > 0, got {args.fps}")
    try:
        gen = GenerationSpec(max_new_tokens=args.max_new_tokens)
    except ValueError as e:
        raise SfedgeError(f"--{str(e).replace('_', '-')}") from None
    if args.questions_file:
        schedule = Schedule(load_questions(args.questions_file))
    elif args.question is not None:
        schedule = Schedule(every=args.every, question=args.question)
    else:
        schedule = Schedule()
    pipe = Pipeline(args.engines, provider=args.provider, prefix_cache_mb=args.prefix_cache_mb)
    watcher = Watcher(pipe, window=args.window, skip_threshold=skip or None, gen=gen)
    source = open_source(args.source)  # one line and exit 2 if it cannot be opened
    stdin = sys.stdin if schedule.every is None and not schedule.pending else None

    def on_answer(record, result):
        if args.json:
            print_json(record)
        elif "error" in record:
            print(f"error: {record['error']}", flush=True)
        else:
            sys.stdout.write(f"  ({record['window_frames']} frames, ttft {record['ttft_ms']:.0f} ms)\n")
            sys.stdout.flush()

    def on_token_for(q):
        if args.json:
            return None
        sys.stdout.write(f"[t={q.t if q.t is not None else 0:.2f}s] {q.question}\n  ")
        return _printer()

    result = watch(watcher, source, schedule, fps=args.fps, realtime=args.realtime, stdin=stdin,
                   on_answer=on_answer, on_token_for=on_token_for)
    if args.json:
        print_json(result.summary())
    else:
        s = result.summary()["summary"]
        print(", ".join(f"{k} {v}" for k, v in s.items()))
    if result.error is not None:  # SourceLost: exit 1 after the summary; anything else is a bug
        raise result.error
    return 0


def _printer():
    started = False

    def write(piece: str) -> None:
        nonlocal started
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()

    return write
