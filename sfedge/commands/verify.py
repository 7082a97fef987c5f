"""`sfedge verify ENGINES --model CKPT`: the PyTorch reference and the engines on one clip and question.

Per stage, each engine gets the reference's own input, so an error is that stage's alone:
vision (pixels -> features), slowfast (features -> visual tokens); then the whole chain:
first-step logits (engines from the video vs the reference from the video) and greedy tokens.

Relative error = max|engine - reference| / max|reference|.

Greedy tokens may differ only where the reference itself nearly ties: at the first differing
step the reference's top-2 logit gap is measured by running the reference LM on the prompt plus
the reference's own tokens before that step (`top2_gap`). Verdicts: "match", "near-tie" (gap below
NEAR_TIE), "mismatch".
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ._common import add_json_flag, existing_path, print_json, utf8_text

HELP = "compare exported engines with the PyTorch reference on a synthetic clip (per-stage errors, token parity)"
NEAR_TIE = 1e-3
FP32_LOGITS_TOLERANCE = 1e-4
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


def rel_error(engine: np.ndarray, reference: np.ndarray) -> float:
    """max|engine - reference| / max|reference| (both as float64)."""
    engine, reference = np.asarray(engine, np.float64), np.asarray(reference, np.float64)
    if engine.shape != reference.shape:
        raise ValueError(f"shape {engine.shape} vs reference {reference.shape}")
    return float(np.abs(engine - reference).max() / max(np.abs(reference).max(), 1e-30))


def top2_gap(logits: np.ndarray) -> float:
    """Largest minus second-largest logit."""
    top = np.partition(np.asarray(logits, np.float64), -2)[-2:]
    return float(top[1] - top[0])


def reference_visual_tokens(reference, pipeline, video):
    """(pixels [T,3,336,336], the reference's features [T,576,D] and visual tokens [N,D]) for a video."""
    import torch

    from ..runtime.preprocess import preprocess
    from ..runtime.video import load_video

    clip = load_video(video, pipeline.spec.sampling.num_frames)
    pixels = preprocess(clip.frames, pipeline.spec.preprocess)
    features = reference.vision_features(torch.from_numpy(pixels)).float()
    return pixels, features, reference.pool(features).float()


def stage_errors(pipeline, pixels, ref_features, ref_visual) -> dict:
    """Vision and SlowFast engines each on the reference's own input: their relative errors."""
    (features,) = pipeline.vision.infer({next(iter(pipeline.vision.inputs)): pixels}).values()
    name = next(iter(pipeline.slowfast.inputs))
    (visual,) = pipeline.slowfast.infer({name: ref_features.numpy().astype(pipeline.slowfast.inputs[name].dtype)}).values()
    return {"num_frames": len(pixels), "num_visual_tokens": int(ref_visual.shape[0]),
            "vision_rel_err": rel_error(features, ref_features.numpy()),
            "slowfast_rel_err": rel_error(visual.reshape(ref_visual.shape), ref_visual.numpy())}


def token_parity(pipeline, reference, video, question: str, options, ref_visual, max_new_tokens: int = 16) -> dict:
    """The whole chain on both sides (the reference from `ref_visual`, the engines from the video):
    prompt ids, first-step logits error, greedy tokens and the verdict."""
    from ..spec import GenerationSpec

    gen = GenerationSpec(max_new_tokens=max_new_tokens)
    ids = reference.prompt_ids(question, options)
    ref_embeds = reference.inputs_embeds(ids, ref_visual)
    ref_logits = reference.first_step_logits(ref_embeds).numpy()
    ref_tokens = reference.generate(ref_embeds, gen)
    result = pipeline.ask(video, question, options, gen, record_logits=True)
    report = {
        "video": str(video), "question": question, "options": list(options) if options else None,
        "prompt_ids_match": pipeline.prompt_ids(question, options) == list(ids),
        "first_logits_rel_err": rel_error(result.first_logits, ref_logits),
        "ref_tokens": ref_tokens, "engine_tokens": result.token_ids,
        "tokens_match": ref_tokens == result.token_ids,
        "ref_answer": reference.decode(ref_tokens), "engine_answer": result.answer, "choice": result.choice,
        "first_diff_step": None, "top2_gap": None,
    }
    if not report["tokens_match"]:
        step = next((i for i, (a, b) in enumerate(zip(ref_tokens, result.token_ids)) if a != b),
                    min(len(ref_tokens), len(result.token_ids)))
        report["first_diff_step"] = step
        report["top2_gap"] = top2_gap(_reference_logits_at(reference, ref_embeds, ref_tokens[:step]))
    report["verdict"] = ("match" if report["tokens_match"] else
                         "near-tie" if report["top2_gap"] < NEAR_TIE else "mismatch")
    return report


def compare(pipeline, reference, video, question: str, options=None, max_new_tokens: int = 16) -> dict:
    """Per-stage errors and token parity on one (video, question)."""
    pixels, ref_features, ref_visual = reference_visual_tokens(reference, pipeline, video)
    return {**stage_errors(pipeline, pixels, ref_features, ref_visual),
            **token_parity(pipeline, reference, video, question, options, ref_visual, max_new_tokens)}


def _reference_logits_at(reference, prompt_embeds, prefix: list[int]) -> np.ndarray:
    """The reference's logits for the token after `prefix` (its own earlier tokens): the reference
    LM run without a cache on the prompt embeddings followed by the prefix's token embeddings."""
    import torch

    table = reference.model.get_input_embeddings()
    with torch.inference_mode():
        tail = table(torch.tensor(prefix, dtype=torch.long)).to(prompt_embeds.dtype)[None]
        return reference.first_step_logits(torch.cat([prompt_embeds, tail], dim=1)).numpy()


def passed(report: dict, precision: str) -> bool:
    """fp32 engines must match (near-ties allowed) with first-step logits within 1e-4; other
    precisions only report their errors."""
    if precision != "fp32":
        return True
    return report["verdict"] != "mismatch" and report["first_logits_rel_err"] < FP32_LOGITS_TOLERANCE


def format_report(report: dict) -> str:
    """A few human lines: per-stage errors and the verdict."""
    lines = [f"frames {report['num_frames']}, visual tokens {report['num_visual_tokens']}",
             f"vision features   rel err {report['vision_rel_err']:.3e}",
             f"slowfast tokens   rel err {report['slowfast_rel_err']:.3e}",
             f"prompt ids        {'match' if report['prompt_ids_match'] else 'DIFFER'}",
             f"first-step logits rel err {report['first_logits_rel_err']:.3e}",
             f"greedy tokens     {report['verdict']} ({len(report['engine_tokens'])} engine, "
             f"{len(report['ref_tokens'])} reference)"]
    if report["first_diff_step"] is not None:
        lines.append(f"  first difference at step {report['first_diff_step']}, reference top-2 gap {report['top2_gap']:.3e}")
    return "\n".join(lines)


def run(args) -> int:
    from ..manifest import load_manifest
    from ..reference.model import SlowFastLlava
    from ..runtime.pipeline import Pipeline, parse_options
    from ..synthetic import make_clip

    existing_path(args.engines, "engines directory")
    load_manifest(args.engines, trust_stamps=False)  # an integrity check re-hashes every file
    pipe = Pipeline(args.engines, provider=args.provider)
    reference = SlowFastLlava.from_pretrained(args.model, spec=pipe.spec, lazy_upcast=True)
    utf8_text(args.question, "question")
    options = parse_options(utf8_text(args.options, "--options value")) if args.options is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        video = existing_path(args.video, "video") if args.video else make_clip(Path(tmp) / "clip.mp4", 60, seed=0)
        report = compare(pipe, reference, video, args.question, options, args.max_new_tokens)
    precision = pipe.manifest.get("precision", "fp32")
    report.update(precision=precision, passed=passed(report, precision))
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
        print(f"verdict: {'PASS' if report['passed'] else 'FAIL'} ({precision})")
    return 0 if report["passed"] else 1
