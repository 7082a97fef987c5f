"""`sfedge plan`: will a model fit a Jetson or GPU, and how fast can it be."""

from __future__ import annotations

HELP = "memory budget and latency floors of a preset, checkpoint or engines on a Jetson / GPU (--target list)"


def add_arguments(p) -> None:
    from ..plan.model import preset_names

    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(preset_names()), help="a preset's geometry (sfedge/models/presets.py, "
                     "presets_videollama3.py)")
    src.add_argument("--model", metavar="CKPT", help="a llava-hf or VideoLLaMA3 checkpoint directory (its config.json)")
    src.add_argument("--engines", metavar="DIR", help="exported engines (real file sizes, their settings)")
    p.add_argument("--target", required=True, metavar="NAME", help="a device from the table, 'cpu' (this host, "
                   "measured) or 'list' to print the table")
    p.add_argument("--precision", choices=("fp32", "fp16", "int4"), help="default fp16 (engines: theirs)")
    p.add_argument("--frames", type=int, help="frames T (default 50; VideoLLaMA3: the processor's max_frames, 180)")
    p.add_argument("--pruned", type=float, metavar="F", help="VideoLLaMA3: ASSUME the compression mask removes this "
                   "fraction of each later frame's tokens (default 0: the whole video budget; the real fraction "
                   "depends on the video, `sfedge ask --json` reports it)")
    p.add_argument("--slow-frames", type=int, help="slow pathway frames S (default 10, or the engines')")
    p.add_argument("--fast-grid", type=int, help="fast pathway grid G (default 4, or the engines')")
    p.add_argument("--max-context", type=int, metavar="N", help="LLM context (default min(4096, the model's))")
    p.add_argument("--kv-dtype", choices=("float32", "float16", "int8"), help="KV cache dtype (default: the "
                   "LLM's I/O dtype, what export builds; int8 is a what-if)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens to generate (default 128)")
    p.add_argument("--efficiency", type=float, help="fraction of the floors to expect (default 0.5)")
    p.add_argument("--os-reserve-gib", type=float, help="override the OS share of a Jetson's memory")
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")


def run(args) -> int:
    import json

    from ..errors import SfedgeError
    from ..plan.devices import TARGETS, get_target, measure_host, table_text
    from ..plan.report import load_model, make_plan, render, settings_for

    if args.target == "list":
        targets = [*TARGETS.values(), measure_host()]
        print(table_text(targets))
        if args.json:
            print(json.dumps({"targets": [t.to_dict() for t in targets]}))
        return 0
    if not (args.preset or args.model or args.engines):
        raise SfedgeError("give one of --preset NAME, --model CKPT or --engines DIR")
    target = get_target(args.target, os_reserve_gib=args.os_reserve_gib)
    device = "cpu" if target.kind == "cpu" else "cuda"
    info, make_model = load_model(preset=args.preset, checkpoint=args.model, engines=args.engines,
                                  precision=args.precision, device=device)
    s = settings_for(info, frames=args.frames, slow_frames=args.slow_frames, fast_grid=args.fast_grid,
                     max_context=args.max_context, kv_dtype_=args.kv_dtype, max_new_tokens=args.max_new_tokens,
                     efficiency=args.efficiency, pruned=args.pruned)
    plan = make_plan(info, target, s, make_model)
    print(render(plan))
    if args.json:
        print(json.dumps(plan, default=float))
    return 0
