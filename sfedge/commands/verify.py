"""`sfedge verify ENGINES --model CKPT`: the PyTorch reference and the engines on one clip and question.

Per stage, each engine gets the reference's own input, so an error is that stage's alone:
vision (pixels -> features), slowfast (features -> visual tokens); then the whole chain:
first-step logits (engines from the video vs the reference from the video) and greedy tokens.
The metrics, tolerances and the pass/fail rule are `sfedge.parity`'s (shared with export
validation). Exit 1 at every precision when prompt ids differ, logits are not finite, the
first-step logits are past the precision's tolerance, or greedy tokens differ where the reference
does not nearly tie. int4 engines are compared with the reference running the int4 weights
(`sfedge.export.int4.int4_weights`: the checkpoint's weights quantized and dequantized in numpy),
after their packed weights were checked bit for bit against that quantization.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ._common import add_json_flag, existing_path, print_json, utf8_text

HELP = "compare exported engines with the PyTorch reference on a synthetic clip (per-stage errors, token parity)"
DEFAULT_QUESTION = "What happens in the video?"


def add_arguments(p) -> None:
    p.add_argument("engines", metavar="ENGINES", help="engines directory written by `sfedge export`")
    p.add_argument("--model", required=True, metavar="CKPT", help='the checkpoint the engines came from ("tiny" or a path)')
    p.add_argument("--video", default=None, help="a video or image directory (default: a synthetic clip)")
    p.add_argument("--question", default=DEFAULT_QUESTION, help=f'default: "{DEFAULT_QUESTION}"')
    p.add_argument("--options", default=None, help='multiple choice: "A|B|C"')
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens compared (default 16)")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    add_json_flag(p)


def format_report(report: dict) -> str:
    """A few human lines: per-stage errors and the verdict (the stages the engines' family has)."""
    lines = [f"frames {report['num_frames']}, visual tokens {report['num_visual_tokens']}"
             + (f" ({report['visual_tokens_pruned']} pruned)" if "visual_tokens_pruned" in report else "")]
    if "pixel_values_max_abs" in report:
        lines += [f"pixel values      max abs diff {report['pixel_values_max_abs']:.3e} (numpy vs the processor)",
                  f"compression mask  {'match' if report['mask_match'] else 'DIFFERS'}"]
    lines.append(f"vision features   rel err {report['vision_rel_err']:.3e}")
    if "slowfast_rel_err" in report:
        lines.append(f"slowfast tokens   rel err {report['slowfast_rel_err']:.3e}")
    lines += [f"prompt ids        {'match' if report['prompt_ids_match'] else 'DIFFER'}",
              f"first-step logits rel err {report['first_logits_rel_err']:.3e}",
              *([f"decode-step logits rel err {report['decode_logits_rel_err']:.3e} (teacher-forced, "
                 f"{report['decode_steps']} steps)"] if "decode_logits_rel_err" in report else []),
              f"greedy tokens     {report['verdict']} ({len(report['engine_tokens'])} engine, "
              f"{len(report['ref_tokens'])} reference)"]
    if report["first_diff_step"] is not None:
        lines.append(f"  first difference at step {report['first_diff_step']}, reference top-2 gap {report['top2_gap']:.3e}")
    return "\n".join(lines)


def run(args) -> int:
    from ..families import check_same_family, family_of_manifest
    from ..manifest import load_manifest
    from ..runtime.pipeline import parse_options
    from ..synthetic import make_clip

    existing_path(args.engines, "engines directory")
    manifest = load_manifest(args.engines, trust_stamps=False)  # an integrity check re-hashes every file
    family = family_of_manifest(manifest)
    check_same_family(args.model, family)
    utf8_text(args.question, "question")
    options = parse_options(utf8_text(args.options, "--options value")) if args.options is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        video = existing_path(args.video, "video") if args.video else make_clip(Path(tmp) / "clip.mp4", 60, seed=0)
        report = family.verify(args.engines, args.model, video, args.question, options,
                                   args.max_new_tokens, args.provider)
    weights = report.get("int4_weights")
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
        if weights:
            print(f"int4 weights      {'bit-identical' if weights['passed'] else 'DIFFER'} ({weights['checked']} MatMulNBits)")
        for problem in report["failures"]:
            print(f"FAIL: {problem}")
        print(f"verdict: {'PASS' if report['passed'] else 'FAIL'} ({report['precision']})")
    return 0 if report["passed"] else 1
