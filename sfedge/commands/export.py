"""`sfedge export MODEL OUT`: checkpoint -> ONNX graphs + manifest, validated against PyTorch."""

from __future__ import annotations

from ..spec import SLOW_MODES, SlowFastSpec
from ._common import add_json_flag, print_json

HELP = "export a llava-hf LLaVA-NeXT checkpoint (or 'tiny') to ONNX graphs + manifest, validated against PyTorch"


def add_arguments(p) -> None:
    d = SlowFastSpec()
    from ..models.presets import PRESETS
    from ..models.presets_videollama3 import VL3_PRESETS

    p.add_argument("model", nargs="?", help="local checkpoint directory (llava-hf LLaVA-NeXT or transformers "
                                            "VideoLLaMA3), or 'tiny' / 'tiny-mistral' / 'tiny-videollama3'")
    p.add_argument("out", help="output directory (refused if it exists, unless --force)")
    p.add_argument("--preset", choices=sorted([*PRESETS, *VL3_PRESETS]),
                   help="instead of MODEL: a real architecture with random weights, made locally once "
                        "(cached) for benchmarks")
    p.add_argument("--precision", choices=("fp32", "fp16", "int4"), default="fp32",
                   help="fp32; fp16 (vision + slowfast fp16, LLM fp16 on cuda / fp32 on cpu); "
                        "int4 (LLM MatMulNBits int4, block 32) (default: fp32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="execution provider the graphs are built for (default: cpu)")
    p.add_argument("--max-frames", type=int, default=64, help="largest T the graphs accept (default: 64)")
    p.add_argument("--slow-frames", type=int, default=d.slow_frames, help=f"slow pathway frames S (default: {d.slow_frames})")
    p.add_argument("--fast-grid", type=int, default=d.fast_grid, help=f"fast pathway grid G (default: {d.fast_grid})")
    p.add_argument("--slow-mode", choices=SLOW_MODES, default=d.slow_mode, help=f"slow pooling (default: {d.slow_mode})")
    p.add_argument("--max-context", type=int, default=None, metavar="N",
                   help="positions the LLM's KV cache and attention buffers are allocated for (default: 4096, "
                        "SPEC 1's context, or the checkpoint's max_position_embeddings if smaller; never above it)")
    p.add_argument("--allow-tokenizer-mismatch", action="store_true",
                   help="export even where tokenizer.json gives other ids than the checkpoint's own tokenizer "
                        "(every difference is recorded in the manifest)")
    p.add_argument("--vision-int8", action="store_true",
                   help="CPU engines: replace the fp32 vision graph, after validation, by ONNX Runtime's dynamic int8 "
                        "quantization (int8 weights and activations in its MatMuls); its features vs the fp32 "
                        "graph's are recorded in the manifest (components.vision.quantization)")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip the parity checks against PyTorch")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (only once the new export validated)")
    add_json_flag(p)


def run(args) -> int:
    from ..errors import SfedgeError, ValidationError
    from ..export import export_model

    if (args.model is None) == (args.preset is None):
        raise SfedgeError("give either MODEL or --preset NAME")
    model = args.model
    if args.preset:
        from ..models.presets import preset_checkpoint

        model = preset_checkpoint(args.preset)
    try:
        slowfast = SlowFastSpec(slow_frames=args.slow_frames, slow_mode=args.slow_mode, fast_grid=args.fast_grid)
    except ValueError as e:
        raise SfedgeError(str(e)) from None
    try:
        manifest = export_model(model, args.out, precision=args.precision, device=args.device,
                                max_frames=args.max_frames, slowfast=slowfast, validate=args.validate,
                                force=args.force, progress=True, max_context=args.max_context,
                                allow_tokenizer_mismatch=args.allow_tokenizer_mismatch, vision_int8=args.vision_int8)
    except ValidationError as e:
        if args.json:
            print_json({"ok": False, "error": str(e), "validation": getattr(e, "report", None)})
        raise
    guard = manifest.get("tokenizer_guard")  # llava_next's SentencePiece check; VideoLLaMA3 ships tokenizer.json
    if args.json:
        print_json({"ok": True, "out": args.out, "precision": manifest["precision"],
                    "max_context": manifest["context"]["max_context"],
                    "family": manifest.get("family", "llava_next"),
                    "tokenizer_guard": {k: guard[k] for k in ("passed", "allowed_mismatches")} if guard else None,
                    "export_seconds": manifest["export_seconds"], "validation": manifest["validation"],
                    "vision_quantization": manifest["components"]["vision"].get("quantization")})
    else:
        v = manifest["validation"]
        status = "not validated" if v is None else "validated: " + ", ".join(
            f"{k} rel {v[k]['rel']:.2e} cos {v[k]['cosine']:.4f}" for k in ("vision", "slowfast", "llm", "chain") if k in v)
        print(f"exported {args.preset or args.model} -> {args.out} ({manifest['precision']}, {manifest['device']}, "
              f"context {manifest['context']['max_context']}) in {manifest['export_seconds']:.1f} s; {status}")
        if q := manifest["components"]["vision"].get("quantization"):
            e = q["vs_fp32"]
            print(f"vision int8 (dynamic): features vs the fp32 graph max abs {e['max_abs']:.3g}, cosine {e['cosine']:.4f}")
        if guard and (n := guard["allowed_mismatches"]):
            print(f"warning: {n} tokenizer canary chunk(s) differ from the checkpoint's tokenizer "
                  f"(--allow-tokenizer-mismatch; listed in the manifest's tokenizer_guard)")
    return 0
