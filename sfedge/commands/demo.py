"""`sfedge demo`: the main job on the tiny default, end to end.

Makes (or reuses from the cache directory) the tiny checkpoint and its engines and a synthetic
clip, asks a question with the lean runtime (answer streamed), prints per-stage timings, then
checks the engines against the PyTorch reference (sfedge verify) and prints the verdict.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_json_flag, print_json, utf8_text
from .ask import StreamPrinter, add_generation_arguments, cuda_graph, generation_spec

HELP = "tiny model end to end: engines (cached), a synthetic clip, a streamed answer, timings, parity verdict"
DEFAULT_QUESTION = "What is moving in the video?"


def add_arguments(p) -> None:
    p.add_argument("--question", default=DEFAULT_QUESTION, help=f'default: "{DEFAULT_QUESTION}"')
    p.add_argument("--llm", choices=("llama", "mistral"), default="llama", help="tiny model's LLM (default llama)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int4"), default="fp32", help="engines precision (default fp32)")
    add_generation_arguments(p)
    p.set_defaults(max_new_tokens=32)
    add_json_flag(p)


def cached_engines(llm: str, precision: str, device: str) -> Path:
    """The tiny model's engines under the cache directory, exported once (export_model builds
    beside the target and renames into place, so an interrupted export is never reused); engines
    an older sfedge cached (another manifest schema) are exported again."""
    import json

    from ..cache import cache_dir
    from ..manifest import MANIFEST_NAME, SCHEMA_VERSION
    from ..models.tiny import resolve_model

    target = cache_dir() / "engines" / f"tiny-{llm}-{precision}-{device}"
    try:
        if json.loads((target / MANIFEST_NAME).read_text()).get("schema_version") == SCHEMA_VERSION:
            return target
    except (OSError, ValueError, AttributeError):  # none yet, or unreadable: export
        pass
    from ..export import export_model

    export_model(resolve_model(f"tiny-{llm}"), target, precision=precision, device=device, force=True)
    return target


def cached_clip() -> Path:
    """A 60-frame synthetic clip under the cache directory."""
    from ..cache import cache_dir
    from ..synthetic import make_clip

    path = cache_dir() / "demo" / "shapes-60.mp4"
    if not path.is_file():
        tmp = path.with_name(".tmp-" + path.name)
        make_clip(tmp, 60, seed=0)
        tmp.rename(path)
    return path


def run(args) -> int:
    from ..models.tiny import resolve_model
    from ..runtime.engines import check_provider, device_of
    from ..runtime.pipeline import STAGES, Pipeline, parse_options
    from ..parity import check_engines
    from .verify import format_report

    check_provider(args.provider)
    gen = generation_spec(args)
    utf8_text(args.question, "question")
    options = parse_options(utf8_text(args.options, "--options value")) if args.options is not None else None
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    say(f"engines: preparing tiny-{args.llm} {args.precision} (cached after the first run) ...")
    engines = cached_engines(args.llm, args.precision, device_of(args.provider))
    clip = cached_clip()
    say(f"engines: {engines}\nclip:    {clip}\nquestion: {args.question}" + (f"\noptions: {options}" if options else ""))
    pipe = Pipeline(engines, provider=args.provider, cuda_graph=cuda_graph(args))
    if not args.json:
        sys.stdout.write("answer:  ")
    result = pipe.ask(clip, args.question, options, gen, on_token=None if args.json else StreamPrinter())
    say("" if args.json else "\n" + format_timings(result, STAGES))
    reference = pipe.family.reference(resolve_model(f"tiny-{args.llm}"), spec=pipe.spec)
    report = check_engines(pipe, reference, engines, clip, args.question, options, min(gen.max_new_tokens, 32),
                           device=device_of(args.provider))
    ok = report["passed"]
    if args.json:
        print_json({"result": result.to_dict(), "parity": report, "passed": ok, "engines": engines})
    else:
        print("parity vs PyTorch reference:\n" + format_report(report))
        print(f"verdict: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def format_timings(result, stages) -> str:
    """'timings (ms): decode_video 12.1 | ... ' plus tokens and tokens/s."""
    parts = " | ".join(f"{k} {result.timings_ms[k]:.1f}" for k in stages)
    return (f"timings (ms): {parts}\n{len(result.token_ids)} tokens, {result.tokens_per_s:.1f} tokens/s, "
            f"{len(result.frame_indices)} of {result.num_frames_total} frames, {result.num_visual_tokens} visual tokens")
