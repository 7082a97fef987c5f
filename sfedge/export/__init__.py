"""`export_model`: a llava-hf LLaVA-NeXT checkpoint -> an engines directory (ONNX + manifest).

OUT holds:

    vision.onnx (+ .data)     frames [T,336,336,3] uint8 -> features [T,576,D] (normalised inside)
    slowfast.onnx (+ .data)   features [T,576,D] -> visual_tokens [S*k + T*G*G, D]
    llm/model.onnx (+ .data)  onnxruntime-genai decoder: inputs_embeds + KV cache -> logits
    llm/genai_config.json     the builder's config (+ its copy of the tokenizer)
    embeddings.npy            token-embedding table [V, D] in the decoder's input dtype
    greedy_step.onnx          ArgMax(logits) + Gather(table): greedy decoding stays on the device
    splice.onnx               Gather(table, ids) + ScatterND(visual tokens): prompt embeddings on the device
    tokenizer/                the checkpoint's tokenizer files
    manifest.json             the contract (sfedge/manifest.py), incl. the validation report

The model family (sfedge/families) is detected from the checkpoint's config `model_type` and
recorded in the manifest ("family"); its declaration supplies the reference and the prompt variant.
First the tokenizer guard (tokenizer_guard.py): the runtime's tokenizer.json against the
checkpoint's own SentencePiece tokenizer on the prompt chunks; a difference fails the export in
seconds. The decoder is built for `max_context` positions (sfedge/context.py).

Order keeps peak RAM near one model: the text checkpoint is streamed shard by shard, the builder
runs in a subprocess while this process holds no weights, and only then is the PyTorch reference
loaded (vision / slowfast export, then every expected output for validation); it is freed before
the ONNX sessions that validation runs are made. The reference computes in fp32 but keeps the
LLM's weights in the checkpoint's dtype (`lazy_upcast`, bit-identical results), so it holds about
the checkpoint's size, not twice it. Everything is built in `OUT.partial-*` beside
OUT and renamed to OUT only after validation passed; on any failure the partial directory is
removed, and with --force an existing OUT is replaced only then. Scratch names carry the process
id: a killed export's leftovers are removed by the next export into the same parent (leftovers.py).
"""

from __future__ import annotations

import datetime
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..errors import SfedgeError
from ..spec import PipelineSpec, SamplingSpec, SlowFastSpec

PRECISIONS = ("fp32", "fp16", "int4")
DEVICES = ("cpu", "cuda")
STAGES = ("tokenizer guard", "text model", "LLM builder", "reference", "vision", "slowfast", "manifest", "reference outputs",
          "validate vision", "validate slowfast", "validate llm", "validate chain")


def vision_precision(precision: str, device: str) -> str:
    """fp32 and fp16 as asked; int4 quantizes the LLM only, its vision is fp16 on cuda, fp32 on cpu."""
    return "fp16" if precision == "fp16" or (precision, device) == ("int4", "cuda") else "fp32"


def export_model(model: str | Path, out: str | Path, precision: str = "fp32", device: str = "cpu",
                 max_frames: int = 64, slowfast: SlowFastSpec = SlowFastSpec(), validate: bool = True,
                 force: bool = False, progress: bool = True, max_context: int | None = None,
                 allow_tokenizer_mismatch: bool = False, vision_int8: bool = False) -> dict:
    """Export `model` ("tiny" or a checkpoint dir) to `out`; return the manifest as written
    (incl. "validation", None with validate=False). `max_context`: positions the decoder's KV cache
    and attention buffers hold (default min(4096, the checkpoint's max_position_embeddings)).
    Raises SfedgeError on bad input (exit 2), ValidationError when a graph disagrees with PyTorch
    beyond its tolerance or the runtime's tokenizer disagrees with the checkpoint's (exit 1; the
    latter unless `allow_tokenizer_mismatch`, which records the differences in the manifest).
    `vision_int8`: after validation, the vision graph is replaced by its int8 dynamic quantization
    (CPU only; `vision_int8.py`), recorded in the manifest's components.vision.quantization."""
    from ..families import family_for_checkpoint
    from ..models.tiny import resolve_model
    from .leftovers import remove_stale, scratch_prefix
    from .llm import text_context

    if precision not in PRECISIONS:
        raise SfedgeError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device not in DEVICES:
        raise SfedgeError(f"device must be one of {DEVICES}, got {device!r}")
    if max_frames < 1:
        raise SfedgeError(f"max_frames must be >= 1, got {max_frames}")
    if vision_int8:
        from .vision_int8 import check_supported

        check_supported(precision, device)
    ckpt = resolve_model(model)
    family = family_for_checkpoint(ckpt)  # an unknown model_type is refused before anything is written
    if family.export is None:
        raise SfedgeError(f"{ckpt}: this sfedge cannot export {family.name} checkpoints")
    out = Path(out)
    if out.exists() and not force:
        raise SfedgeError(f"{out} exists (use --force to replace it)")
    context = text_context(ckpt, max_context)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, pid in remove_stale(out.parent):
        print(f"removed {path} (left by export process {pid}, which is gone)", file=sys.stderr)
    partial = Path(tempfile.mkdtemp(prefix=scratch_prefix(f"{out.name}.partial"), dir=out.parent))
    try:
        manifest = family.export(str(model), ckpt, family, partial, precision, device, max_frames, slowfast, validate,
                                 progress, context, allow_tokenizer_mismatch, vision_int8)
        _default_permissions(partial)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _build(name: str, ckpt: Path, model_family, root: Path, precision: str, device: str, max_frames: int,
           slowfast: SlowFastSpec, validate: bool, progress: bool, context: dict,
           allow_tokenizer_mismatch: bool, vision_int8: bool = False) -> dict:
    import numpy as np
    import torch

    from .. import __version__
    from ..context import kv_cache_bytes
    from ..manifest import write_manifest
    from ..runtime.tokenizer import TextTokenizer
    from . import llm as llm_mod
    from .manifest_build import component_entry, model_block, read_manifest, source_identity, versions
    from .slowfast import export_slowfast
    from .step import export_splice
    from .tokenizer_guard import guard
    from .validate import compare, int4_settings, reference_cases
    from .vision import export_vision, normalisation_record

    started = time.perf_counter()
    bar = _Stages((STAGES if validate else STAGES[:7]) + (("vision int8",) if vision_int8 else ()), progress)
    try:
        bar.step("tokenizer guard")  # first: a tokenizer that disagrees fails the export in seconds
        tokenizer_files = llm_mod.copy_tokenizer(ckpt, root / "tokenizer")
        family = model_family.detect_variant(TextTokenizer(root / "tokenizer").vocab())
        tokenizer_guard = guard(ckpt, root / "tokenizer", family, allow_tokenizer_mismatch)
        if validate:
            _check_chain_fits(root / "tokenizer", family, slowfast, min(SamplingSpec().num_frames, max_frames),
                              context["max_context"])
        bar.step("text model")
        llm, step, emb_dtype = llm_mod.build_decoder(ckpt, root, precision, device, context, on_stage=bar.step)

        bar.step("reference")
        ref_device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        pipeline = PipelineSpec(sampling=SamplingSpec(min(SamplingSpec().num_frames, max_frames)), slowfast=slowfast)
        ref = model_family.reference(ckpt, dtype=torch.float32, device=ref_device, spec=pipeline, lazy_upcast=True)
        vprec = vision_precision(precision, device)
        vdtype = torch.float16 if vprec == "fp16" else torch.float32
        bar.step("vision")
        vision_parts = (ref.model.model.vision_tower, ref.model.model.multi_modal_projector)
        for part in vision_parts:  # torch.onnx traces on the CPU; the LLM stays where it is
            part.cpu()
        _, vspec = export_vision(ref.model, max_frames, root, vdtype, pipeline.preprocess)
        for part in vision_parts:
            part.to(ref_device)
        del vision_parts, part  # no reference may outlive `ref` (freed before validation's sessions)
        bar.step("slowfast")
        hidden = ref.model.config.text_config.hidden_size
        _, sspec = export_slowfast(slowfast, hidden, max_frames, root, vdtype)
        splice = export_splice(root, sspec.outputs[0].dtype, emb_dtype)

        bar.step("manifest")
        table_shape = np.load(root / "embeddings.npy", mmap_mode="r").shape
        manifest = {
            "sfedge_version": __version__,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "precision": precision,
            "device": device,
            "quantization": llm_mod.quantization(precision, device),
            "pipeline": pipeline.to_dict(),
            "family": model_family.name,
            "slowfast_name": slowfast.name(),
            "prompt_family": ref.prompt_family,
            "model": model_block(ref, llm, table_shape, max_frames),
            "context": dict(context, kv_cache=kv_cache_bytes(llm["kv_cache"]["num_layers"], llm["kv_cache"]["num_kv_heads"],
                                                             llm["kv_cache"]["head_dim"], llm["kv_cache"]["max_length"],
                                                             llm["kv_cache"]["dtype"])),
            "tokenizer_guard": tokenizer_guard,
            "components": {
                "vision": component_entry(root, vspec, vprec) | {"normalisation": normalisation_record(pipeline.preprocess)},
                "slowfast": component_entry(root, sspec, vprec),
                "llm": llm,
                "embeddings": {"path": "embeddings.npy", "dtype": emb_dtype, "shape": list(table_shape)},
                "tokenizer": {"path": "tokenizer", "files": sorted(tokenizer_files)},
                "greedy_step": step,
                "splice": splice,
            },
            "source": source_identity(name, ckpt),
            "versions": versions(),
            "validation": None,
        }
        if validate:
            bar.step("reference outputs")
            cases = reference_cases(ref, max_frames, int4=int4_settings(root, manifest))
        del ref  # the PyTorch model is gone before any ONNX session is made: peak RAM is one model
        _release_memory()
        if validate:
            manifest["validation"] = compare(root, manifest, cases, device, on_step=lambda n: bar.step(f"validate {n}"))
        if vision_int8:  # after validation, which checks the fp32 graph (vision_int8.py)
            from .vision_int8 import quantize_vision

            bar.step("vision int8")
            manifest["components"]["vision"]["quantization"] = quantize_vision(root)
        manifest["export_seconds"] = round(time.perf_counter() - started, 2)
        write_manifest(root, manifest)
        bar.close()
        return read_manifest(root)
    except BaseException:
        bar.abort()  # the error message starts on its own line
        raise


def _check_chain_fits(tokenizer_dir: Path, family: str, slowfast: SlowFastSpec, frames: int, context: int) -> None:
    """Validation's chain runs the whole prompt (text + visual tokens of `frames` frames): refuse a
    --max-context it cannot fit, before anything is built (exit 2)."""
    from ..prompts import build_prompt, tokenize_prompt
    from ..runtime.tokenizer import TextTokenizer
    from .validate import CHAIN_QUESTION

    tok = TextTokenizer(tokenizer_dir)
    bos = (tok.encode("") or [None])[0]  # the BOS the tokenizer adds, if any (kept on the first chunk only)
    ids = tokenize_prompt(build_prompt(CHAIN_QUESTION, None, family), tok.encode, bos, -1)
    need = len(ids) - 1 + slowfast.num_tokens(frames)
    if need >= context:
        raise SfedgeError(f"--max-context {context} cannot hold the validation prompt ({need} tokens: {frames} frames "
                          f"+ text); raise it, lower --max-frames, or use --no-validate")


def _release_memory() -> None:
    """Collect, then hand freed heap pages back to the OS: glibc keeps freed blocks below its
    (grown) mmap threshold in the heap, so without malloc_trim the reference's freed gigabytes still
    count against the ONNX sessions that follow (measured: docs/BENCHMARKS.md, export RAM)."""
    import ctypes
    import ctypes.util

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _default_permissions(root: Path) -> None:
    """mkdtemp makes 0700 and onnx writes external data 0600: give everything the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


class _Stages:
    """One tqdm bar over the export's stages; `step(name)` finishes the previous stage."""

    def __init__(self, names: tuple[str, ...], enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(names), desc="export", unit="stage", disable=not enabled)
        self.started = False

    def step(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        self.bar.update(1)
        self.bar.close()

    def abort(self) -> None:
        self.bar.close()
