"""Validation of a VideoLLaMA3 export against transformers (the llava_next checks' two phases:
`reference_cases` with PyTorch, the reference freed, then `compare` with ONNX Runtime).

* vision: vision.onnx vs transformers' own `get_video_features` (frames packed, `cu_seqlens`
  attention, `pixel_unshuffle` + bilinear interpolate, projector) on random pixels at (frames, grid)
  shapes other than the export dummy's (2 frames of 4 x 6): 1 x 2x2, 3 x 6x8, 7 x 10x4; bounds
  `registry.rel_tol("vision", ...)`.
* llm: `validate.llm_case` / `check_llm` unchanged (prefills of 1, 7, 50 random embeddings + one
  decode step vs the text model + lm_head; int4 against the dequantized weights).
* chain: a synthetic clip through transformers' processor (sampling, resize, normalise, compression
  mask, chat template, "Time t.ts:" expansion); its pixel values through vision.onnx, the kept tokens
  spliced at the video-token positions of the processor's input_ids, then the decoder's prefill; vs
  transformers' first-step logits on the same inputs. This checks the graphs, the patch / token
  order and the splice contract of docs/videollama3.md together.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..errors import ValidationError
from ..parity import errors
from .validate import (_summary, decoder_steps, int4_settings, llm_case, llm_step, run_checks, session,
                       verdict)
from .videollama3_vision import PATCH_DIM, position_ids

VISION_SHAPES = ((1, 2, 2), (3, 6, 8), (7, 10, 4))  # (frames, grid h, grid w)
CHAIN_QUESTION = "What is happening in the video?"


def chain_frames(seed: int = 0, n: int = 30, width: int = 160, height: int = 120) -> tuple[np.ndarray, float]:
    """A 3 s synthetic clip (moving shapes) at 10 fps, decoded: uint8 [n, H, W, 3]."""
    from ..synthetic import render_scene

    return np.stack([render_scene(i, width, height, seed=seed) for i in range(n)]), 10.0


def reference_cases(ref, manifest: dict, root, seed: int = 0) -> dict:
    from ..reference.videollama3 import process
    from .int4 import check_weights, int4_weights

    gen = torch.Generator().manual_seed(seed)
    max_frames = manifest["model"]["max_frames"]
    vision = []
    for t, gh, gw in VISION_SHAPES:
        t = min(t, max_frames)
        x = torch.randn(t, gh * gw, PATCH_DIM, generator=gen)
        got = ref.video_features(x.reshape(-1, PATCH_DIM), (t, gh, gw)).reshape(t, gh * gw // 4, -1)
        vision.append({"name": f"{t}x{gh}x{gw}", "pixel_values": x.numpy(), "position_ids": position_ids(gh, gw).numpy(),
                       "expected": got.float().numpy()})
    frames, fps = chain_frames(seed)
    inputs, _, _ = process(ref.processor, frames, fps, CHAIN_QUESTION)
    int4 = int4_settings(root, manifest)
    with int4_weights(ref, int4["block_size"]) if int4 else contextlib.nullcontext():
        chain = {"pixel_values": inputs["pixel_values_videos"].numpy(), "grid_thw": inputs["video_grid_thw"][0].tolist(),
                 "mask": inputs["video_compression_mask"].numpy(), "ids": inputs["input_ids"][0].tolist(),
                 "expected": ref.first_step_logits(dict(inputs)).numpy()}
        cases = {"vision": vision, "llm": llm_case(ref, seed), "chain": chain}
    if int4:
        cases["int4_weights"] = check_weights(ref, int4["model"])
    return cases


def check_vision(path, cases: list[dict], precision: str, device: str = "cpu") -> dict:
    sess = session(path, device)
    report = {c["name"]: errors(sess.run(None, {"pixel_values": c["pixel_values"], "position_ids": c["position_ids"]})[0],
                                c["expected"]) for c in cases}
    return _summary("vision", report, precision, device)


def check_chain(sess, root, manifest: dict, case: dict, device: str = "cpu") -> dict:
    comps = manifest["components"]
    t, gh, gw = case["grid_thw"]
    pixels = case["pixel_values"].reshape(t, gh * gw, PATCH_DIM)
    features = session(root / comps["vision"]["path"], device).run(
        None, {"pixel_values": pixels, "position_ids": position_ids(gh, gw).numpy()})[0]
    kept = features.reshape(-1, features.shape[-1])[case["mask"]]
    table = np.load(root / comps["embeddings"]["path"])
    ids = np.asarray(case["ids"])
    slots = np.flatnonzero(ids == manifest["prompt"]["video_token_id"])
    if len(slots) != len(kept):
        raise ValidationError(f"chain: {len(slots)} video tokens in the prompt, {len(kept)} kept visual tokens")
    embeds = table[ids].copy()
    embeds[slots] = kept.astype(table.dtype)
    got, expected = llm_step(sess, comps["llm"], embeds[None])[0][0, -1], case["expected"]
    result = _summary("chain", {"first_step_logits": errors(got, expected)}, manifest["precision"], device)
    result.update(num_frames=int(t), grid=[int(gh), int(gw)], visual_tokens_total=int(case["mask"].size),
                  visual_tokens_kept=int(case["mask"].sum()), top1_onnx=int(got.argmax()),
                  top1_reference=int(expected.argmax()), top1_agree=bool(got.argmax() == expected.argmax()))
    return result


def compare(root, manifest: dict, cases: dict, device: str = "cpu", on_step=None) -> dict:
    comps = manifest["components"]
    report = {"metric": "rel = max|onnx - ref| / max|ref|; cosine of mean-centred outputs",
              "vision_shapes": [c["name"] for c in cases["vision"]]}
    run_checks(report, [
        ("vision", lambda: check_vision(root / comps["vision"]["path"], cases["vision"], comps["vision"]["precision"], device)),
        *decoder_steps(root, manifest, cases, device, check_chain)], on_step)
    checks = ["vision", "llm", "chain"]
    if "int4_weights" in cases:
        report["int4_weights"] = {k: v for k, v in cases["int4_weights"].items() if k != "mismatches"} | {
            "mismatches": cases["int4_weights"]["mismatches"][:20], "enforced": manifest.get("device", "cpu") == "cpu"}
        if report["int4_weights"]["enforced"]:
            checks.append("int4_weights")
    return verdict(report, checks)
