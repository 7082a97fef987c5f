"""Parity of engines with the PyTorch reference: the error metrics, the per-precision tolerances and
the pass/fail rule that export validation (`sfedge.export.validate`), `sfedge verify` and the
tests share.

Metrics (both as float64): `rel_error` = max|engine - reference| / max|reference|; `errors` adds
max_abs and the cosine of the mean-centred outputs (and reports a misshapen output as rel = inf
instead of raising). Tolerances: `sfedge.export.registry.REL_TOL` per component and precision;
`logits_tolerance` (first-step logits of the whole chain, verify) is its "chain" row.

Greedy tokens may differ only where the reference itself nearly ties: at the first differing step
the reference's top-2 logit gap is measured by running the reference LM on the prompt plus the
reference's own tokens before that step (`top2_gap`). Verdicts: "match", "near-tie", "mismatch".
At fp32 "near-tie" means a gap below NEAR_TIE; at a lower precision the engine's logits may be off
by up to the tolerance x max|logits|, so a pair closer than twice that may swap.

torch is imported lazily: the runtime-side metrics need numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .export.registry import rel_tol

NEAR_TIE = 1e-3
FP32_LOGITS_TOLERANCE = rel_tol("chain", "fp32")


def logits_tolerance(precision: str, device: str = "cpu") -> float:
    """The first-step logits bound of the whole chain (export validation's "chain" row)."""
    tol = rel_tol("chain", precision, device)
    if tol is None:
        raise ValueError(f"no logits tolerance for precision {precision!r}")
    return tol


def rel_error(engine: np.ndarray, reference: np.ndarray) -> float:
    """max|engine - reference| / max|reference| (both as float64); inf when not finite."""
    engine, reference = np.asarray(engine, np.float64), np.asarray(reference, np.float64)
    if engine.shape != reference.shape:
        raise ValueError(f"shape {engine.shape} vs reference {reference.shape}")
    err = float(np.abs(engine - reference).max() / max(np.abs(reference).max(), 1e-30))
    return err if np.isfinite(err) else float("inf")


def errors(out: np.ndarray, ref: np.ndarray) -> dict:
    """max_abs, rel (= max_abs / max|ref|) and cosine of the mean-centred outputs; a misshapen
    output is reported (rel inf), not raised."""
    if np.shape(out) != np.shape(ref):
        return {"max_abs": float("inf"), "rel": float("inf"), "cosine": 0.0,
                "shape": list(np.shape(out)), "expected_shape": list(np.shape(ref))}
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if not np.isfinite(out).all():
        return {"max_abs": float("inf"), "rel": float("inf"), "cosine": 0.0, "non_finite": int((~np.isfinite(out)).sum())}
    max_abs = float(np.max(np.abs(out - ref)))
    a, b = out.ravel() - out.mean(), ref.ravel() - ref.mean()
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
    return {"max_abs": max_abs, "rel": max_abs / max(float(np.max(np.abs(ref))), 1e-30), "cosine": cosine}


def table_errors(out: np.ndarray, ref: np.ndarray, rows: int = 4096) -> dict:
    """`errors` over row blocks of two [V, D] tables: a float64 copy of a whole 128k x 3072 table
    is 3 GB, and `errors` makes several."""
    if out.shape != ref.shape:
        return errors(out, ref)  # the misshapen-output report; nothing is converted
    n = out.size
    mean_out = sum(float(np.sum(out[i:i + rows], dtype=np.float64)) for i in range(0, len(ref), rows)) / n
    mean_ref = sum(float(np.sum(ref[i:i + rows], dtype=np.float64)) for i in range(0, len(ref), rows)) / n
    max_abs = max_ref = dot = norm_out = norm_ref = 0.0
    for i in range(0, len(ref), rows):
        a, b = np.array(out[i:i + rows], np.float64), np.array(ref[i:i + rows], np.float64)  # copies
        max_abs, max_ref = max(max_abs, float(np.max(np.abs(a - b)))), max(max_ref, float(np.max(np.abs(b))))
        a -= mean_out
        b -= mean_ref
        dot, norm_out, norm_ref = dot + float(np.vdot(a, b)), norm_out + float(np.vdot(a, a)), norm_ref + float(np.vdot(b, b))
    cosine = dot / max(np.sqrt(norm_out * norm_ref), 1e-300)
    return {"max_abs": max_abs, "rel": max_abs / max(max_ref, 1e-30), "cosine": cosine}


def top2_gap(logits: np.ndarray) -> float:
    """Largest minus second-largest logit."""
    top = np.partition(np.asarray(logits, np.float64), -2)[-2:]
    return float(top[1] - top[0])


def reference_visual_tokens(reference, pipeline, video):
    """(the resized frames uint8 [T,336,336,3] the vision engine takes, the reference's features
    [T,576,D] and visual tokens [N,D]) for a video. The reference gets the host's normalised
    pixels (`normalise` of the same resized frames = SPEC 2's `preprocess`)."""
    import torch

    from .runtime.preprocess import normalise, resize_frames
    from .runtime.video import load_video

    clip = load_video(video, pipeline.spec.sampling.num_frames)
    resized = resize_frames(clip.frames, pipeline.spec.preprocess)
    features = reference.vision_features(torch.from_numpy(normalise(resized, pipeline.spec.preprocess))).float()
    return resized, features, reference.pool(features).float()


def stage_errors(pipeline, frames, ref_features, ref_visual) -> dict:
    """Vision and SlowFast engines each on the reference's own input (the vision engine on the
    resized uint8 frames the reference's pixels were normalised from): their relative errors."""
    (features,) = pipeline.vision.infer({next(iter(pipeline.vision.inputs)): frames}).values()
    name = next(iter(pipeline.slowfast.inputs))
    (visual,) = pipeline.slowfast.infer({name: ref_features.numpy().astype(pipeline.slowfast.inputs[name].dtype)}).values()
    return {"num_frames": len(frames), "num_visual_tokens": int(ref_visual.shape[0]),
            "vision_rel_err": rel_error(features, ref_features.numpy()),
            "slowfast_rel_err": rel_error(visual.reshape(ref_visual.shape), ref_visual.numpy())}


def reference_logits_at(reference, prompt_embeds, prefix: list[int]) -> np.ndarray:
    """The reference's logits for the token after `prefix` (its own earlier tokens): the reference
    LM run without a cache on the prompt embeddings followed by the prefix's token embeddings."""
    import torch

    table = reference.model.get_input_embeddings()
    with torch.inference_mode():
        tail = table(torch.tensor(prefix, dtype=torch.long)).to(prompt_embeds.dtype)[None]
        return reference.first_step_logits(torch.cat([prompt_embeds, tail], dim=1)).numpy()


def token_agreement(engine_tokens, ref_tokens) -> dict:
    """How far two greedy token sequences agree: `equal_prefix` leading tokens of `compared`
    (the shorter length), `first_diff_step` (None when one is a prefix of the other and both have
    the same length)."""
    n = min(len(engine_tokens), len(ref_tokens))
    k = next((i for i in range(n) if engine_tokens[i] != ref_tokens[i]), n)
    same = k == n and len(engine_tokens) == len(ref_tokens)
    return {"compared": n, "equal_prefix": k, "first_diff_step": None if same else k}


def token_parity(pipeline, reference, video, question: str, options, ref_visual, max_new_tokens: int = 16) -> dict:
    """The whole chain on both sides (the reference from `ref_visual`, the engines from the video):
    prompt ids, first-step logits error, greedy tokens and the reference's top-2 gap where they
    first differ (the verdict is `verdict`'s, per precision)."""
    from .spec import GenerationSpec

    gen = GenerationSpec(max_new_tokens=max_new_tokens)
    ids = reference.prompt_ids(question, options)
    ref_embeds = reference.inputs_embeds(ids, ref_visual)
    ref_logits = reference.first_step_logits(ref_embeds).numpy()
    ref_tokens = reference.generate(ref_embeds, gen)
    result = pipeline.ask(video, question, options, gen, record_logits=True)
    engine_logits = np.asarray(result.first_logits)
    report = {
        "video": str(video), "question": question, "options": list(options) if options else None,
        "prompt_ids_match": pipeline.prompt_ids(question, options) == list(ids),
        "first_logits_finite": bool(np.isfinite(engine_logits).all()),
        "first_logits_rel_err": rel_error(engine_logits, ref_logits),
        "ref_logits_range": float(np.abs(ref_logits).max()),
        "ref_tokens": ref_tokens, "engine_tokens": result.token_ids,
        "tokens_match": ref_tokens == result.token_ids,
        "ref_answer": reference.decode(ref_tokens), "engine_answer": result.answer, "choice": result.choice,
        "first_diff_step": token_agreement(result.token_ids, ref_tokens)["first_diff_step"], "top2_gap": None,
    }
    if not report["tokens_match"]:
        step = report["first_diff_step"]
        report["top2_gap"] = top2_gap(reference_logits_at(reference, ref_embeds, ref_tokens[:step]))
    report["verdict"] = verdict(report, "fp32")
    return report


def decode_parity(root, manifest: dict, reference, prompt_embeds, ref_tokens: list[int], device: str = "cpu") -> dict:
    """Teacher-forced decoding: the exported decoder (an ONNX Runtime session of its own) prefilled
    with the reference's prompt embeddings, then fed the reference's own greedy tokens one at a
    time through its KV cache; each step's logits against the reference LM's at the same position
    (one uncached forward pass). Catches what only decode steps show (KV cache, mask, positions)
    even where greedy tokens diverge early. Returns the worst step's rel error."""
    import torch

    from .export.validate import llm_step, session

    root = Path(root)
    comps = manifest["components"]
    llm = comps["llm"]
    tokens = list(ref_tokens[:-1])
    lm = reference.model.model.language_model
    with torch.inference_mode():
        tail = reference.model.get_input_embeddings()(torch.tensor(tokens, dtype=torch.long)).to(prompt_embeds.dtype)[None]
        x = torch.cat([prompt_embeds, tail], dim=1)
        hidden = lm(inputs_embeds=x, use_cache=False).last_hidden_state[0, prompt_embeds.shape[1] - 1:]
        expected = reference.model.lm_head(hidden).float().cpu().numpy()
    sess = session(root / llm["path"], device)
    table = np.load(root / comps["embeddings"]["path"], mmap_mode="r")
    logits, past = llm_step(sess, llm, prompt_embeds.float().cpu().numpy())
    got = [logits[0, -1]]
    for t in tokens:
        logits, past = llm_step(sess, llm, np.asarray(table[[t]], np.float32)[None], past)
        got.append(logits[0, -1])
    steps = [rel_error(g, e) for g, e in zip(got, expected)]
    return {"decode_steps": len(steps), "decode_logits_rel_err": max(steps),
            "decode_worst_step": int(np.argmax(steps)), "decode_precision": llm["precision"]}


def compare(pipeline, reference, video, question: str, options=None, max_new_tokens: int = 16,
            engines_root=None, device: str = "cpu") -> dict:
    """Per-stage errors and token parity on one (video, question); with `engines_root`, also
    teacher-forced decode parity (`decode_parity`) of the engines' decoder."""
    frames, ref_features, ref_visual = reference_visual_tokens(reference, pipeline, video)
    report = {**stage_errors(pipeline, frames, ref_features, ref_visual),
              **token_parity(pipeline, reference, video, question, options, ref_visual, max_new_tokens)}
    if engines_root is not None and report["ref_tokens"]:
        embeds = reference.inputs_embeds(reference.prompt_ids(question, options), ref_visual)
        report.update(decode_parity(engines_root, pipeline.manifest, reference, embeds, report["ref_tokens"], device))
    return report


def near_tie_gap(report: dict, precision: str, device: str = "cpu") -> float:
    """The top-2 gap below which a differing greedy token is a near-tie at `precision`: NEAR_TIE at
    fp32; at lower precisions twice the logits tolerance times the reference's logit range."""
    if precision == "fp32":
        return NEAR_TIE
    return max(NEAR_TIE, 2 * logits_tolerance(precision, device) * report["ref_logits_range"])


def verdict(report: dict, precision: str, device: str = "cpu") -> str:
    if report["tokens_match"]:
        return "match"
    return "near-tie" if report["top2_gap"] < near_tie_gap(report, precision, device) else "mismatch"


def failures(report: dict, precision: str, device: str = "cpu") -> list[str]:
    """Why a `compare` report fails at `precision` (empty: it passes). Every precision fails on
    differing prompt ids, non-finite logits, first-step logits past logits_tolerance(precision),
    teacher-forced decode-step logits past it (when measured), or greedy tokens that differ where
    the reference does not nearly tie. `device`: "cuda" for
    the CUDA / TensorRT providers (their bounds)."""
    tol = logits_tolerance(precision, device)
    out = []
    if not report["prompt_ids_match"]:
        out.append("prompt ids differ from the reference's")
    if not report.get("first_logits_finite", True):
        out.append("first-step logits are not finite")
    if not report["first_logits_rel_err"] < tol:
        out.append(f"first-step logits rel err {report['first_logits_rel_err']:.3g} >= {tol:g} ({precision})")
    if "decode_logits_rel_err" in report:  # the decoder alone: export validation's "llm" bound
        decode_tol = rel_tol("llm", report["decode_precision"], device)
        if not report["decode_logits_rel_err"] < decode_tol:
            out.append(f"decode-step logits rel err {report['decode_logits_rel_err']:.3g} >= {decode_tol:g} at step "
                       f"{report['decode_worst_step']} ({report['decode_precision']} decoder, teacher-forced)")
    if verdict(report, precision, device) == "mismatch":
        out.append(f"greedy tokens differ at step {report['first_diff_step']} where the reference's top-2 gap "
                   f"is {report['top2_gap']:.3g} (>= {near_tie_gap(report, precision, device):.3g})")
    return out


def passed(report: dict, precision: str, device: str = "cpu") -> bool:
    return not failures(report, precision, device)


def check_engines(pipeline, reference, engines_root, video, question: str, options=None,
                  max_new_tokens: int = 16, device: str = "cpu") -> dict:
    """What `sfedge verify` and `sfedge demo` decide on: `compare` (int4 engines against the
    reference running their own dequantized weights), the int4 weights bit for bit (enforced for
    CPU engines, as export validation does), the failures at the engines' precision and the verdict.
    The report gains precision, verdict, passed, failures and int4_weights."""
    from contextlib import nullcontext

    from .export.int4 import check_weights, int4_weights
    from .export.validate import int4_settings

    precision = pipeline.manifest.get("precision", "fp32")
    int4 = int4_settings(Path(engines_root), pipeline.manifest)
    weights = check_weights(reference, int4["model"]) if int4 else None
    enforced = pipeline.manifest.get("device", "cpu") == "cpu"  # as in export validation (validate.compare)
    with int4_weights(reference, int4["block_size"]) if int4 else nullcontext():
        report = compare(pipeline, reference, video, question, options, max_new_tokens,
                         engines_root=Path(engines_root), device=device)
    problems = failures(report, precision, device) + (
        [weights["failure"]] if weights and not weights["passed"] and enforced else [])
    report.update(precision=precision, verdict=verdict(report, precision, device), passed=not problems,
                  failures=problems, int4_weights=weights and {k: v for k, v in weights.items() if k != "mismatches"})
    return report
