"""VideoLLaMA3 engines against transformers on one video and question: what `sfedge verify` reports
and decides for the video_llama_3 family (the rules are sfedge.parity's: prompt ids equal, first-step
logits within the precision's chain tolerance, greedy tokens equal unless the reference nearly ties).

Per stage, each side gets the same input, so an error is that stage's alone: the runtime's numpy
preprocessing vs the processor (pixel values, compression mask, sampled frames), the vision engine
on the processor's own pixel values vs `get_video_features`; then the chain: prompt ids, first-step
logits, greedy tokens (the runtime from the decoded frames, the reference via `generate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .parity import failures, rel_error, token_agreement, top2_gap, verdict


def decoded(video: str | Path) -> tuple[np.ndarray, float]:
    """All frames of a video file at its frame rate, or of an image directory at 1 frame per second."""
    from .reference.videollama3 import decode_all
    from .runtime.video import load_video
    from .runtime.videollama3_preprocess import IMAGE_DIR_FPS

    if Path(video).is_dir():
        clip = load_video(video, sampler=lambda total: list(range(total)))
        return np.stack(clip.frames), IMAGE_DIR_FPS
    return decode_all(video)


def compare(pipe, reference, video, question: str, max_new_tokens: int = 16, prune: bool = True) -> dict:
    """Stage errors and token parity of a VideoLlama3Pipeline against a VideoLlama3Reference."""
    import torch

    from .runtime.videollama3_preprocess import VideoInputs, sample_indices
    from .runtime.videollama3_prompt import build
    from .spec import GenerationSpec

    frames, fps = decoded(video)
    overrides = {} if prune else {"use_token_compression": False}
    want = reference.answer_frames(frames, fps, question, max_new_tokens, **overrides)
    inputs = want.inputs
    indices = sample_indices(len(frames), fps, pipe.processor)
    ours = pipe.preprocess([frames[i] for i in indices], indices, fps, prune)
    t, gh, gw = ours.grid
    ref_pixels = inputs["pixel_values_videos"].float().numpy()
    same_grid = list(ours.grid) == list(want.grid_thw)
    ref_mask = inputs["video_compression_mask"].numpy()
    # the vision engine on the processor's own pixels, against transformers' vision path
    theirs = VideoInputs(ref_pixels.reshape(want.grid_thw[0], -1, ref_pixels.shape[-1]),
                         ours.position_ids if same_grid else None, ref_mask.reshape(want.grid_thw[0], -1),
                         tuple(want.grid_thw), want.frame_indices, want.timestamps)
    engine_features = pipe.encoder.features(theirs) if same_grid else None
    ref_features = reference.video_features(inputs["pixel_values_videos"], want.grid_thw).float().numpy()
    result = pipe.ask_frames(frames, fps, question, gen=GenerationSpec(max_new_tokens=max_new_tokens),
                             record_logits=True, prune=prune)
    ref_logits = reference.first_step_logits(inputs).numpy()
    engine_logits = np.asarray(result.first_logits)
    prompt = build(pipe.prompt, pipe.tokenizer, question, ours.timestamps, ours.kept_per_frame).ids
    report = {
        "video": str(video), "question": question, "num_frames": len(indices),
        "num_visual_tokens": result.visual_tokens_kept, "visual_tokens_kept": result.visual_tokens_kept,
        "visual_tokens_pruned": result.visual_tokens_pruned, "pruning": prune,
        "frames_match": indices == want.frame_indices,
        "pixel_values_max_abs": float(np.abs(ours.pixel_values.reshape(ref_pixels.shape) - ref_pixels).max())
        if same_grid else float("inf"),
        "mask_match": same_grid and bool(np.array_equal(ours.keep.reshape(-1), ref_mask)),
        "vision_rel_err": rel_error(engine_features.reshape(ref_features.shape), ref_features)
        if same_grid else float("inf"),
        "prompt_ids_match": prompt == want.prompt_ids,
        "first_logits_finite": bool(np.isfinite(engine_logits).all()),
        "first_logits_rel_err": rel_error(engine_logits, ref_logits),
        "ref_logits_range": float(np.abs(ref_logits).max()),
        "ref_tokens": want.token_ids, "engine_tokens": result.token_ids,
        "tokens_match": want.token_ids == result.token_ids,
        "ref_answer": want.answer, "engine_answer": result.answer,
        "first_diff_step": token_agreement(result.token_ids, want.token_ids)["first_diff_step"], "top2_gap": None,
    }
    if not report["tokens_match"]:
        step = report["first_diff_step"]
        extended = dict(inputs)
        prefix = torch.tensor([want.token_ids[:step]], dtype=inputs["input_ids"].dtype)
        extended["input_ids"] = torch.cat([inputs["input_ids"], prefix], dim=1)
        extended.pop("attention_mask", None)
        report["top2_gap"] = top2_gap(reference.first_step_logits(extended).numpy())
    return report


def check_engines(pipe, reference, video, question: str, max_new_tokens: int = 16, device: str = "cpu",
                  prune: bool = True) -> dict:
    """`compare` plus the failures at the engines' precision and the verdict (report gains precision,
    verdict, passed, failures, int4_weights). As for SlowFast-LLaVA (sfedge.parity.check_engines),
    int4 engines are compared with the reference running their own dequantized weights, after their
    packed weights were checked bit for bit (enforced for CPU engines). Preprocessing must match
    exactly at every precision (it is numpy on both sides of the engines)."""
    from contextlib import nullcontext

    from .export.int4 import check_weights, int4_weights
    from .export.validate import int4_settings

    int4 = int4_settings(Path(pipe.root), pipe.manifest)
    weights = check_weights(reference, int4["model"]) if int4 else None
    with int4_weights(reference, int4["block_size"]) if int4 else nullcontext():
        report = compare(pipe, reference, video, question, max_new_tokens, prune)
    precision = pipe.manifest.get("precision", "fp32")
    problems = failures(report, precision, device) + (
        [weights["failure"]] if weights and not weights["passed"] and pipe.manifest.get("device", "cpu") == "cpu" else [])
    if not report["frames_match"]:
        problems.insert(0, "sampled frames differ from the processor's")
    if report["pixel_values_max_abs"] != 0.0:
        problems.insert(0, f"pixel values differ from the processor's (max abs {report['pixel_values_max_abs']:.3g})")
    if not report["mask_match"]:
        problems.insert(0, "the compression mask differs from the processor's")
    report.update(precision=precision, verdict=verdict(report, precision, device), passed=not problems,
                  failures=problems, int4_weights=weights and {k: v for k, v in weights.items() if k != "mismatches"})
    return report


def verify(engines, model, video, question: str, options, max_new_tokens: int, provider: str) -> dict:
    """`sfedge verify` for VideoLLaMA3 engines (Family.verify)."""
    from .errors import SfedgeError
    from .models.tiny import resolve_model
    from .reference.videollama3 import VideoLlama3Reference
    from .runtime.videollama3_pipeline import VideoLlama3Pipeline

    if options:
        raise SfedgeError("VideoLLaMA3 takes an open question: --options is SlowFast-LLaVA's multiple-choice prompt")
    pipe = VideoLlama3Pipeline(engines, provider=provider)
    reference = VideoLlama3Reference(resolve_model(model))
    return check_engines(pipe, reference, video, question, max_new_tokens, "cpu" if provider == "cpu" else "cuda")


def _static_dir(path: Path, n: int, w: int, h: int) -> Path:
    from PIL import Image

    from .synthetic import render_scene

    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(render_scene(0, w, h, seed=3, scene="static")).save(path / f"f{i:03d}.png")
    return path


def parity_clips(tmp: Path) -> dict[str, Path]:
    """The 10 clips of the parity check (tests/test_videollama3_parity.py, scripts/videollama3_parity.py):
    moving (nothing pruned), static (most pruned), sizes off the 28-pixel grid, 200 s at 1 fps (capped
    at 180 frames), tall, image directories (read at 1 frame per second), 30 fps."""
    from .synthetic import make_clip, make_image_dir

    return {
        "moving": make_clip(tmp / "moving.mp4", num_frames=48, width=160, height=120, fps=24, seed=0),
        "moving-odd": make_clip(tmp / "odd.mp4", num_frames=30, width=202, height=118, fps=10, seed=1),
        "moving-object": make_clip(tmp / "obj.mp4", num_frames=72, width=150, height=96, fps=12, scene="moving-object"),
        "static": make_clip(tmp / "static.mp4", num_frames=96, width=160, height=120, fps=24, scene="static", crf=0),
        "static-noisy": make_clip(tmp / "noisy.mp4", num_frames=60, width=96, height=72, fps=10, scene="static",
                                  noise=2.0),
        "long-200s": make_clip(tmp / "long.mp4", num_frames=200, width=48, height=34, fps=1, seed=2),
        "tall": make_clip(tmp / "tall.mp4", num_frames=20, width=58, height=200, fps=5, seed=4),
        "dir-moving": make_image_dir(tmp / "dir-moving", num_frames=9, width=100, height=70, seed=5),
        "dir-static": _static_dir(tmp / "dir-static", 6, 90, 62),
        "fps30": make_clip(tmp / "fps30.mp4", num_frames=150, width=128, height=72, fps=30, seed=6),
    }
