"""Export validation: every graph against the PyTorch reference, then the whole chain once.

Errors are reported as `max_abs` = max |onnx - torch|, `rel` = max_abs / max |torch| (relative
to the reference's range, so near-zero entries do not blow it up) and `cosine` (of the mean-centred
outputs). Bounds and their justification: `registry.rel_tol` / `registry.min_cosine` (per device). Inputs are
random, at frame counts other than the export dummies' (vision 2, slowfast 3): 1, 7 and 50,
capped at max_frames. The chain runs a synthetic clip through vision.onnx -> slowfast.onnx ->
splice.onnx (bit for bit the host concatenation) -> llm prefill and compares first-step logits with
`SlowFastLlava.first_step_logits`. Vision is compared with a float64 evaluation of the
reference (see `fp64_vision_reference`); slowfast, llm and chain with PyTorch fp32.

Two phases keep RAM at one model: `reference_cases` computes every input and expected output with
PyTorch, the caller frees the reference, then `compare` runs the ONNX graphs. Any check past its
bound raises `ValidationError` (one line naming every failing check, the full report as `.report`)
after all checks ran.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ValidationError
from ..parity import errors, table_errors  # noqa: F401  (the metrics; re-exported for callers)
from ..spec import IMAGE_SIZE, TOKENS_PER_FRAME
from .registry import min_cosine, rel_tol

FRAME_COUNTS = (1, 7, 50)
LLM_SEQ_LENS = (1, 7, 50)
# Frames per reference vision call: the tower's hidden states for 50 CLIP-L frames are 5.9 GB in
# float64 and 3 GB in fp32; 8 frames keep them under 1 GB (frames are independent).
VISION_CHUNK = 8
_NP = {"float32": np.float32, "float16": np.float16}


def frame_counts(max_frames: int) -> list[int]:
    """1, 7, 50 capped at max_frames (deduplicated)."""
    return sorted({min(t, max_frames) for t in FRAME_COUNTS})


def session(path: Path, device: str = "cpu"):
    """An ORT session for validation. device "cuda": the CUDA EP where onnxruntime-gpu has it (CUDA
    libraries loaded first), else ORT falls back to the CPU: engines built for a Jetson on an
    x86 host without a GPU are validated by the CPU kernels."""
    import onnxruntime as ort

    from ..runtime.engines import cuda_provider_options, session_options

    if device == "cuda":
        from ..runtime.cuda_libraries import preload

        preload()
    # CUDA without TF32: the fp32 tolerances assume IEEE fp32
    providers = ([("CUDAExecutionProvider", cuda_provider_options()), "CPUExecutionProvider"] if device == "cuda"
                 else ["CPUExecutionProvider"])
    on_gpu = device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    return ort.InferenceSession(str(path), sess_options=session_options("cuda" if on_gpu else "cpu"),
                                providers=providers)


def _summary(name: str, cases: dict, precision: str, device: str = "cpu") -> dict:
    """Worst case over `cases` against the component's bounds for `precision`; `failure` says why."""
    tol, min_cos = rel_tol(name, precision, device), min_cosine(name, precision, device)
    rel = max(e["rel"] for e in cases.values())
    cosine = min(e["cosine"] for e in cases.values())
    failure = None
    if not np.isfinite(rel):
        failure = f"{name}: non-finite or misshapen output ({precision})"
    elif tol is not None and not rel < tol:
        failure = f"{name} rel {rel:.3g} >= {tol:g} ({precision})"
    elif min_cos is not None and not cosine >= min_cos:
        failure = f"{name} cosine {cosine:.3g} < {min_cos:g} ({precision})"
    return {"precision": precision, "rel_tol": tol, "min_cosine": min_cos, "cases": cases,
            "max_abs": max(e["max_abs"] for e in cases.values()), "rel": rel, "cosine": cosine,
            "passed": failure is None, "failure": failure}


def _input_dtype(sess, name: str):
    return next(np.float16 if "float16" in i.type else np.float32 for i in sess.get_inputs() if i.name == name)


def fp64_vision_reference(ref):
    """The faithful vision path (full CLIP tower, hidden_states[vision_feature_layer] without CLS,
    projector) on a float64 copy of the weights: the exact answer both fp32 implementations round.
    On the tiny model PyTorch's own fp32 result is 1.3e-5 (rel) away from it while the ONNX graph is
    4e-6 away, so an fp32-vs-fp32 comparison would mostly measure PyTorch's rounding."""
    inner = ref.model.model
    tower = copy.deepcopy(inner.vision_tower).double()
    projector = copy.deepcopy(inner.multi_modal_projector).double()
    layer = ref.model.config.vision_feature_layer

    @torch.inference_mode()
    def features(pixels: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, len(pixels), VISION_CHUNK):
            x = pixels[start:start + VISION_CHUNK].to(device=ref.device, dtype=torch.float64)
            hidden = tower(x, output_hidden_states=True).hidden_states[layer][:, 1:]
            out.append(projector(hidden).cpu().numpy())
            del hidden
        return np.concatenate(out)

    return features


def _reference_logits(ref, embeds: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(embeds).to(device=ref.device, dtype=ref.dtype)
        hidden = ref.model.model.language_model(inputs_embeds=x, use_cache=False).last_hidden_state
        return ref.model.lm_head(hidden).float().cpu().numpy()


CHAIN_QUESTION = "What is happening in the video?"


def reference_cases(ref, max_frames: int, question: str = CHAIN_QUESTION, seed: int = 0, int4: dict | None = None) -> dict:
    """Phase 1, PyTorch only: every input the checks feed and every expected output, as numpy.
    Computing them all first lets the caller free the reference before any ONNX session is made,
    so peak RAM is one model (the reference or the decoder), not both.

    `int4` ({"model": the decoder's model.onnx, "block_size": n}) for an int4 decoder: its packed
    weights are checked bit for bit against `int4.quantize_blocks` of the checkpoint (half a), and
    the decoder's and the chain's expected logits come from the reference running those
    dequantized weights (half b), so the int4 tolerance bounds arithmetic alone."""
    from .int4 import check_weights, int4_weights

    from ..runtime.preprocess import normalise, resize_frames
    from ..runtime.video import load_video
    from ..synthetic import has_encoder, make_clip, make_image_dir

    gen = torch.Generator().manual_seed(seed)
    exact = fp64_vision_reference(ref)
    hidden = ref.model.config.text_config.hidden_size
    vision, slowfast = [], []
    for t in frame_counts(max_frames):
        frames = torch.randint(0, 256, (t, IMAGE_SIZE, IMAGE_SIZE, 3), generator=gen, dtype=torch.uint8).numpy()
        x = torch.from_numpy(normalise(frames, ref.spec.preprocess))  # SPEC 2 on the host: what the graph must equal
        vision.append({"name": str(t), "input": frames, "expected": exact(x),
                       "torch_fp32": ref.vision_features(x, VISION_CHUNK).float().cpu().numpy()})
        f = torch.randn(t, TOKENS_PER_FRAME, hidden, generator=gen)
        slowfast.append({"name": str(t), "input": f.numpy(), "expected": ref.pool(f.to(ref.dtype)).float().cpu().numpy()})
    del exact

    num_frames = min(ref.spec.sampling.num_frames, max_frames)
    with tempfile.TemporaryDirectory() as tmp:
        # the frames of a real video file; without PyAV's encoder (the GPU benchmark machine has no
        # PyAV) the same rendered frames as an image directory
        src = (make_clip(Path(tmp) / "clip.mp4", num_frames=60, seed=seed) if has_encoder("libx264")
               or has_encoder("mpeg4") else make_image_dir(Path(tmp) / "frames", 60, seed=seed))
        clip = load_video(src, num_frames)
    frames = resize_frames(clip.frames, ref.spec.preprocess)
    ids = ref.prompt_ids(question)
    visual = ref.pool(ref.vision_features(torch.from_numpy(normalise(frames, ref.spec.preprocess)), VISION_CHUNK))
    with int4_weights(ref, int4["block_size"]) if int4 else contextlib.nullcontext():
        chain = {"frames": frames, "ids": ids, "image_pos": ids.index(ref.image_token_id),
                 "expected": ref.first_step_logits(ref.inputs_embeds(ids, visual)).cpu().numpy()}
        cases = {"vision": vision, "slowfast": slowfast, "llm": llm_case(ref, seed), "chain": chain}
    if int4:
        cases["int4_weights"] = check_weights(ref, Path(int4["model"]))
    return cases


def llm_case(ref, seed: int = 0) -> dict:
    """The decoder check's inputs and expected logits: the checkpoint's embedding table, prefills of
    LLM_SEQ_LENS random tokens (as embeddings), and one decode step after the longest."""
    rng = np.random.default_rng(seed)
    # as stored (the checkpoint's dtype under lazy_upcast): no fp32 copy of a [V, D] table; numpy
    # has no bfloat16, so a bf16 table is widened (exactly)
    weight = ref.model.model.language_model.get_input_embeddings().weight.detach()
    table = (weight.float() if weight.dtype == torch.bfloat16 else weight).cpu().numpy()
    prefill = [table[rng.integers(0, len(table), s)][None].astype(np.float32) for s in LLM_SEQ_LENS]
    step = table[rng.integers(0, len(table), 1)][None].astype(np.float32)
    return {"table": table, "prefill": [(e, _reference_logits(ref, e)) for e in prefill], "step": step,
            "step_expected": _reference_logits(ref, np.concatenate([prefill[-1], step], 1))[:, -1]}


def check_vision(path: Path, cases: list[dict], precision: str, device: str = "cpu") -> dict:
    """vision.onnx on uint8 frames vs the float64 reference on the host-normalised pixels (the full
    tower, so this also checks the truncation and the in-graph normalisation); the error vs PyTorch's
    fp32 `vision_features` is reported beside it as rel_vs_torch_fp32."""
    sess = session(path, device)
    (name,) = [i.name for i in sess.get_inputs()]
    report = {}
    for case in cases:
        got = sess.run(None, {name: case["input"]})[0]
        report[case["name"]] = dict(errors(got, case["expected"]), rel_vs_torch_fp32=errors(got, case["torch_fp32"])["rel"])
    return _summary("vision", report, precision, device)


def check_slowfast(path: Path, cases: list[dict], precision: str, device: str = "cpu") -> dict:
    """slowfast.onnx vs `SlowFastPool` on random fp32 features (cast to the graph's dtype)."""
    sess = session(path, device)
    dtype = _input_dtype(sess, "features")
    report = {c["name"]: errors(sess.run(None, {"features": c["input"].astype(dtype)})[0], c["expected"]) for c in cases}
    return _summary("slowfast", report, precision, device)


def llm_step(sess, llm: dict, embeds: np.ndarray, past: dict | None = None) -> tuple[np.ndarray, dict]:
    """One decoder call on [1,S,D] inputs_embeds after `past` (None: empty cache). Returns
    (logits as float32 — [1,1,V], the last position, from sfedge's graphs; [1,S,V] from an
    unmodified builder graph —, {past input name: present array} for the next call)."""
    kv = llm["kv_cache"]
    dtype = _NP[kv["dtype"]]
    past_len = 0 if past is None else next(iter(past.values())).shape[2]
    total = past_len + embeds.shape[1]
    feed = {"inputs_embeds": embeds.astype(dtype), "attention_mask": np.ones((1, total), np.int64)}
    if llm["position_ids"]:
        feed["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None]
    names = [(kv[f"past_{w}"] % i, kv[f"present_{w}"] % i) for i in range(kv["num_layers"]) for w in ("key", "value")]
    empty = np.zeros((1, kv["num_kv_heads"], 0, kv["head_dim"]), dtype)
    feed.update({p: empty if past is None else past[p] for p, _ in names})
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    return outputs["logits"].astype(np.float32), {p: outputs[q] for p, q in names}


def check_llm(sess, root: Path, llm: dict, case: dict, precision: str, device: str = "cpu") -> dict:
    """The decoder (session `sess`) prefilled at several lengths, then one decode step through the
    KV cache, vs the HF language model + lm_head on the same embeddings; embeddings.npy vs the
    checkpoint's table."""
    table = np.load(root / "embeddings.npy", mmap_mode="r")
    report = {"embeddings": table_errors(table, case["table"])}
    for embeds, expected in case["prefill"]:
        logits, past = llm_step(sess, llm, embeds)
        report[f"prefill_{embeds.shape[1]}"] = errors(logits, expected[:, -logits.shape[1]:])
    logits, _ = llm_step(sess, llm, case["step"], past)
    report[f"decode_after_{case['prefill'][-1][0].shape[1]}"] = errors(logits[:, -1], case["step_expected"])
    return _summary("llm", report, precision, device)


def check_chain(sess, root: Path, manifest: dict, case: dict, device: str = "cpu") -> dict:
    """First-step logits on the synthetic clip: vision.onnx -> slowfast.onnx -> splice.onnx ->
    decoder prefill (session `sess`) vs `SlowFastLlava.first_step_logits`."""
    comps = manifest["components"]
    vision = session(root / comps["vision"]["path"], device)
    features = vision.run(None, {vision.get_inputs()[0].name: case["frames"]})[0]
    visual = session(root / comps["slowfast"]["path"], device).run(None, {"features": features})[0]
    table = np.load(root / comps["embeddings"]["path"])
    embeds = splice_embeds(root / comps["splice"]["path"], case["ids"], case["image_pos"], table, visual, device)
    got, expected = llm_step(sess, comps["llm"], embeds)[0][0, -1], case["expected"]
    result = _summary("chain", {"first_step_logits": errors(got, expected)}, manifest["precision"], device)
    result.update(num_frames=len(case["frames"]), num_visual_tokens=int(visual.shape[0]),
                  top1_onnx=int(got.argmax()), top1_reference=int(expected.argmax()),
                  top1_agree=bool(got.argmax() == expected.argmax()))
    return result


def splice_embeds(path: Path, ids: list[int], pos: int, table: np.ndarray, visual: np.ndarray,
                  device: str = "cpu") -> np.ndarray:
    """The prompt embeddings [1, L, D] from the exported splice graph (as the runtime makes them),
    checked to equal the host concatenation bit for bit; ValueError (the chain's failure) otherwise."""
    from ..families import VisualBlock
    from ..runtime.splice import SplicePlan, segments_from_marked

    plan = SplicePlan.build(segments_from_marked(ids, ids[pos], [VisualBlock(b"", len(visual))]))
    _, rows, positions = plan.tail(0)
    got = session(path, device).run(None, {"ids": plan.ids, "table": table, "visual": visual, "rows": rows,
                                           "positions": positions})[0]
    want = np.concatenate([table[ids[:pos]], visual.astype(table.dtype), table[ids[pos + 1:]]])[None]
    if not np.array_equal(got, want):
        raise _GraphFailed(f"splice.onnx differs from the concatenation of the table rows and the visual "
                           f"tokens (max |diff| {float(np.max(np.abs(got.astype(np.float64) - want))):.3g})")
    return got


def compare(root: Path, manifest: dict, cases: dict, device: str = "cpu", on_step=None) -> dict:
    """Phase 2, ONNX only: run every check; return the report, or raise ValidationError.
    `on_step(name)` is called before each check (progress display)."""
    root = Path(root)
    comps = manifest["components"]
    report = {"metric": "rel = max|onnx - ref| / max|ref|; cosine of mean-centred outputs",
              "frame_counts": frame_counts(manifest["model"]["max_frames"])}
    run_checks(report, [
        ("vision", lambda: check_vision(root / comps["vision"]["path"], cases["vision"], comps["vision"]["precision"], device)),
        ("slowfast", lambda: check_slowfast(root / comps["slowfast"]["path"], cases["slowfast"],
                                            comps["slowfast"]["precision"], device)),
        *decoder_steps(root, manifest, cases, device, check_chain)], on_step)
    checks = ("vision", "slowfast", "llm", "chain")
    if "int4_weights" in cases:
        report["int4_weights"] = {k: v for k, v in cases["int4_weights"].items() if k != "mismatches"} | {
            "mismatches": cases["int4_weights"]["mismatches"][:20]}
        # enforced for the CPU int4 decoder (ours: DefaultWeightOnlyQuantizer on fp32 weights, the
        # rule tests/test_int4_check.py pins down); the CUDA decoder is the builder's own fp16 path,
        # never compared on a GPU: its result is reported, not enforced, until it has been
        report["int4_weights"]["enforced"] = manifest.get("device", "cpu") == "cpu"
        if report["int4_weights"]["enforced"]:
            checks += ("int4_weights",)
    return verdict(report, checks)


def decoder_steps(root: Path, manifest: dict, cases: dict, device: str, check_chain) -> list:
    """The ("llm", ...) and ("chain", ...) checks every family runs: the decoder's logits, then the
    family's whole chain (`check_chain(session, root, manifest, case, device)`) on the same session."""
    comps, decoder = manifest["components"], {}

    def llm() -> dict:
        decoder["session"] = session(root / comps["llm"]["path"], device)
        return check_llm(decoder["session"], root, comps["llm"], cases["llm"], comps["llm"]["precision"], device)

    def chain() -> dict:
        if "session" not in decoder:
            raise _GraphFailed("the decoder did not load")
        return check_chain(decoder["session"], root, manifest, cases["chain"], device)

    return [("llm", llm), ("chain", chain)]


def run_checks(report: dict, steps, on_step=None) -> None:
    """Run each (name, check) in order into report[name]; `on_step(name)` first (progress). A graph
    that ONNX Runtime cannot load or run fails its own check, named, instead of ending the export
    with a traceback; any other error propagates."""
    for name, check in steps:
        if on_step:
            on_step(name)
        try:
            report[name] = check()
        except Exception as e:
            if not isinstance(e, _GraphFailed) and not type(e).__module__.startswith("onnxruntime"):
                raise
            message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            report[name] = {"rel": float("inf"), "cosine": 0.0, "passed": False,
                            "failure": f"{name}: the graph failed to run ({message})"}


def verdict(report: dict, checks) -> dict:
    """Mark the report passed, or raise ValidationError naming every failed check (report attached)."""
    failed = [report[n]["failure"] for n in checks if not report[n]["passed"]]
    report["passed"] = not failed
    if failed:
        error = ValidationError("export failed validation: " + "; ".join(failed))
        error.report = report
        raise error
    return report


class _GraphFailed(Exception):
    """A check that could not run because an earlier graph failed."""


def int4_settings(root: Path, manifest: dict) -> dict | None:
    """`reference_cases`' int4 argument for an exported directory (None unless its LLM is int4)."""
    llm = manifest["components"]["llm"]
    if llm["precision"] != "int4":
        return None
    return {"model": Path(root) / llm["path"], "block_size": manifest["quantization"]["block_size"]}


def validate_export(root: Path, manifest: dict, ref, device: str = "cpu", on_step=None) -> dict:
    """Both phases with a reference the caller keeps (tests, re-validation of an existing export)."""
    cases = reference_cases(ref, manifest["model"]["max_frames"], int4=int4_settings(root, manifest))
    return compare(root, manifest, cases, device, on_step)
