"""The bench loop: warm up, then time every stage of the engines and of the PyTorch reference on
the same frames and prompt, with a fixed number of new tokens (EOS ignored).

Stages (ms): decode_video, preprocess, vision, slowfast, prefill (from the end of pooling to the
first token), ttft (time to first token as a user sees it: from the call with the video to the first
token out), decode_ms_per_token, e2e (wall clock of one whole answer). The engines' stages come
from `Pipeline.ask(...).timings_ms`; the reference is timed step by step around
`SlowFastLlava`'s methods, within one N-token generate: prefill up to the moment the first token's
id is on the host, decode the rest / (N - 1) (as the engines' are).

Memory is sampled (PeakMonitor polls) only while loading and during the warmup runs (at least one
untimed run), never inside the timed loop; the engines' device memory is the CUDA runtime's own
figure before loading and after the runs (memory.cuda_used_mb).
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import cache_dir
from ..families import check_same_family, family_of_manifest
from ..manifest import load_manifest
from ..spec import GenerationSpec, PipelineSpec
from . import roofline
from .memory import PeakMonitor, cuda_used_mb
from .stats import ratio, summarize_runs

QUESTION = "What is happening in the video?"
STAGES = ("decode_video", "preprocess", "vision", "slowfast", "prefill", "ttft", "decode_ms_per_token", "e2e")
TTFT_PARTS = ("decode_video", "preprocess", "vision", "slowfast", "prefill")


@dataclass
class BenchConfig:
    engines: Path
    video: Path
    new_tokens: int = 128
    runs: int = 3
    warmup: int = 1
    provider: str = "cpu"
    reference: bool = True
    model: str | None = None  # reference checkpoint; default: the manifest's source checkpoint
    roofline: bool = True
    question: str = QUESTION
    ceilings: dict | None = None  # measured already (e.g. by the GPU plan): not measured again
    prune: bool = True  # False: VideoLLaMA3 engines keep every visual token (--no-prune)


@dataclass
class SideResult:
    """One side's runs (engines or reference): per-run stage ms, peak memory, extras."""

    runs: list[dict] = field(default_factory=list)
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    info: dict = field(default_factory=dict)


def synthetic_clip(frames: int, seed: int = 0) -> Path:
    """A synthetic clip of `frames` frames (sfedge.synthetic), made once in the cache."""
    from ..synthetic import make_clip

    path = cache_dir() / "bench" / f"clip-{frames}f-s{seed}.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.mp4")
        make_clip(tmp, num_frames=frames, seed=seed)
        tmp.rename(path)
    return path


def _engine_run(res, wall_ms: float) -> dict:
    t = res.timings_ms
    n = len(res.token_ids)
    run = {k: float(t[k]) for k in ("decode_video", "preprocess", "vision", "slowfast", "prefill") if k in t}
    # The pipeline's own "ttft" (video in -> first token out) where it reports one; else the sum of
    # the stages before the first token (which leaves out the little time between them)
    run["ttft"] = float(t["ttft"]) if "ttft" in t else sum(run.get(k, 0.0) for k in TTFT_PARTS)
    run["decode_ms_per_token"] = float(t["decode"]) / max(1, n - 1)  # the first token comes from prefill
    run["e2e"] = wall_ms
    run["new_tokens"] = n
    return run


def bench_engines(cfg: BenchConfig, gen: GenerationSpec, on_cuda: bool) -> SideResult:
    from ..runtime.pipeline import open_pipeline

    side = SideResult()
    baseline = how = None
    if on_cuda:
        from ..runtime.cuda_libraries import preload

        preload()  # the CUDA runtime the provider will use, so that its figure is the baseline
        baseline, how = cuda_used_mb()
    with PeakMonitor() as mon:  # loading and the untimed runs only
        pipe = open_pipeline(cfg.engines, provider=cfg.provider, prefix_reuse=False,  # every run a cold prefill
                             **({} if cfg.prune else {"prune": False}))
        for _ in range(max(1, cfg.warmup)):
            res = pipe.ask(cfg.video, cfg.question, gen=gen)
    ttft_reported = "ttft" in res.timings_ms
    for _ in range(cfg.runs):
        t0 = time.perf_counter()
        res = pipe.ask(cfg.video, cfg.question, gen=gen)
        side.runs.append(_engine_run(res, (time.perf_counter() - t0) * 1e3))
    side.peak_rss_mb = mon.peak_rss_mb
    side.info = {"frames": len(res.frame_indices), "visual_tokens": res.num_visual_tokens, "tokens": res.token_ids,
                 "prompt_tokens": res.prompt_tokens,
                 **({"visual_tokens_pruned": res.visual_tokens_pruned} if hasattr(res, "visual_tokens_pruned") else {}),
                 "ttft_source": "Pipeline timings_ms['ttft']" if ttft_reported else "sum of the stages before the "
                 "first token (this Pipeline reports no 'ttft')",
                 "memory_note": "peak RSS sampled over loading + untimed runs"}
    if on_cuda:
        used, how_after = cuda_used_mb()
        if used is not None and baseline is not None and how_after == how:
            side.peak_gpu_mb = max(0.0, used - baseline)
            side.info["memory_note"] += (f"; device: {how} after the runs minus before the sessions (the CUDA "
                                         f"provider's arena keeps its peak reservation)")
    del pipe
    gc.collect()
    return side


def reference_dtype(precision: str, on_cuda: bool) -> str:
    """Same precision as the engines where torch can: fp16 (also for int4 engines) on CUDA, fp32 on CPU."""
    return "float16" if on_cuda and precision in ("fp16", "int4") else "float32"


def bench_reference(cfg: BenchConfig, gen: GenerationSpec, manifest: dict, checkpoint: str,
                    dtype: str, on_cuda: bool) -> SideResult:
    """SlowFast-LLaVA's reference, timed stage by stage (Family.bench_reference of llava_next)."""
    import torch

    from ..reference.model import SlowFastLlava
    from ..runtime.preprocess import preprocess
    from ..runtime.video import load_video

    spec = PipelineSpec.from_dict(manifest.get("pipeline", {}))
    device = "cuda" if on_cuda else "cpu"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    side = SideResult(info={"dtype": dtype, "checkpoint": checkpoint})
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()

    def one_run(ref) -> dict:
        marks = [time.perf_counter()]

        def mark() -> None:
            sync()
            marks.append(time.perf_counter())

        clip = load_video(cfg.video, spec.sampling.num_frames)
        mark()
        pixels = torch.from_numpy(preprocess(clip.frames, spec.preprocess))
        mark()
        feats = ref.vision_features(pixels)
        mark()
        visual = ref.pool(feats)
        mark()
        embeds = ref.inputs_embeds(ref.prompt_ids(cfg.question), visual)
        mark()
        first: list[float] = []  # when the first token's id reached the host (int() syncs)
        new_ids = ref.generate(embeds, gen, on_token=lambda _t: first or first.append(time.perf_counter()))
        mark()
        ms = [(b - a) * 1e3 for a, b in zip(marks, marks[1:])]  # ..., slowfast, splice, generate
        side.info.update(frames=int(pixels.shape[0]), visual_tokens=int(visual.shape[0]),
                         prefill_tokens=embeds.shape[1], tokens=[int(t) for t in new_ids])
        return {"decode_video": ms[0], "preprocess": ms[1], "vision": ms[2], "slowfast": ms[3],
                "prefill": (first[0] - marks[-2]) * 1e3, "ttft": (first[0] - marks[0]) * 1e3,
                "decode_ms_per_token": (marks[-1] - first[0]) * 1e3 / max(1, len(new_ids) - 1),
                "e2e": sum(ms), "new_tokens": len(new_ids)}

    def llm_weight_bytes(ref) -> int:
        return (sum(p.numel() * p.element_size() for n, p in ref.model.named_parameters()
                    if "language_model" in n and "embed_tokens" not in n)
                + ref.model.lm_head.weight.numel() * ref.model.lm_head.weight.element_size())

    return time_reference(
        side, cfg, on_cuda, lambda: SlowFastLlava.from_pretrained(checkpoint, dtype=getattr(torch, dtype),
                                                                  device=device, spec=spec),
        one_run, llm_weight_bytes)


def time_reference(side: SideResult, cfg: BenchConfig, on_cuda: bool, load, one_run, llm_weight_bytes) -> SideResult:
    """Every family's reference side: `load()` the model and warm it up (peak memory is sampled over
    these only), then `cfg.runs` timed `one_run(model)`s; record the LLM's weight bytes
    (`llm_weight_bytes(model)`: what one decode step reads) and free the model."""
    import torch

    with PeakMonitor() as mon:  # loading and the untimed runs only
        ref = load()
        for _ in range(max(1, cfg.warmup)):
            one_run(ref)
    side.runs = [one_run(ref) for _ in range(cfg.runs)]
    side.peak_rss_mb = mon.peak_rss_mb
    if on_cuda:
        side.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    side.info.update(weight_bytes=llm_weight_bytes(ref))
    del ref
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return side


def _llm_file_bytes(engines: Path, manifest: dict) -> int:
    """Bytes of the LLM graph and its weights on disk: what one decode step must read."""
    llm_dir = (engines / manifest["components"]["llm"]["path"]).parent
    return sum(p.stat().st_size for p in llm_dir.rglob("*") if p.is_file()
               and (p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data")))


def _checkpoint_config(checkpoint: str | None) -> dict | None:
    from ..models.tiny import resolve_model

    if checkpoint is None:
        return None
    try:
        return json.loads((resolve_model(checkpoint) / "config.json").read_text())
    except Exception:  # noqa: BLE001 - the floors then leave the FLOP stages out
        return None


def _geometry(cfg_dict: dict | None):
    """The roofline geometry of a checkpoint config (its LLM; the vision terms are CLIP's and are
    used only for a family whose `plan.vision_modelled`); None when it cannot be read (the floors
    are then left out)."""
    try:
        return roofline.Geometry.from_config(cfg_dict) if cfg_dict else None
    except (KeyError, TypeError, ValueError):
        return None


def _side_report(side: SideResult, floors: dict) -> dict:
    stages = summarize_runs([{k: r[k] for k in STAGES if k in r} for r in side.runs])
    med = {k: v["median"] for k, v in stages.items()}
    per_token = med.get("decode_ms_per_token")
    return {
        "stages_ms": stages, "tokens_per_s": 1e3 / per_token if per_token else None,
        "new_tokens": side.runs[-1]["new_tokens"], "peak_rss_mb": side.peak_rss_mb, "peak_gpu_mb": side.peak_gpu_mb,
        "floors_ms": floors, "floor_fraction": {k: f / med[k] for k, f in floors.items() if med.get(k)},
        **side.info,
    }


def run_bench(cfg: BenchConfig, log=print) -> dict:
    """Run the whole benchmark; return the report dict (see report.py for its rendering)."""
    manifest = load_manifest(cfg.engines, verify_files=False)
    family = family_of_manifest(manifest)
    on_cuda = cfg.provider != "cpu"
    gen = GenerationSpec(max_new_tokens=cfg.new_tokens, ignore_eos=True)
    precision = manifest.get("precision", "fp32")
    checkpoint = cfg.model or manifest.get("source", {}).get("checkpoint")
    if cfg.reference and checkpoint is not None:
        check_same_family(checkpoint, family)  # before minutes of engine runs

    ceilings = None
    if cfg.roofline:
        if cfg.ceilings is None:
            log("measuring ceilings (bandwidth, matmul rate) ...")
        ceilings = cfg.ceilings or (roofline.measure_cuda() if on_cuda else roofline.measure_cpu())
    log(f"engines: {cfg.engines} ({precision}, {cfg.provider}), {cfg.warmup} warmup + {cfg.runs} runs ...")
    eng = bench_engines(cfg, gen, on_cuda)
    cfg_dict = _checkpoint_config(checkpoint)
    geom = _geometry(cfg_dict)
    n_prefill = eng.info["prompt_tokens"]  # the positions the engines' prompt took, visual tokens included
    # Activation / KV-cache bytes per value: what the LLM graph really stores (int4 on CPU keeps
    # fp32 activations and an fp32 KV cache; only fp16 graphs, and int4 on CUDA, use 2 bytes).
    kv_dtype = manifest["components"]["llm"].get("kv_cache", {}).get("dtype")
    act = {"float32": 4, "float16": 2}.get(kv_dtype, 4 if precision == "fp32" else 2)

    def floors(weight_bytes: float, act_bytes: int) -> dict:
        if ceilings is None or geom is None:
            return {}
        return roofline.floors_ms(geom, ceilings, frames=eng.info["frames"], prefill_tokens=n_prefill,
                                  new_tokens=cfg.new_tokens, weight_bytes=weight_bytes, act_bytes=act_bytes,
                                  vision=family.plan.vision_modelled)

    report = {
        "engines": str(cfg.engines), "provider": cfg.provider, "precision": precision, "video": str(cfg.video),
        "frames": eng.info["frames"], "visual_tokens": eng.info["visual_tokens"], "prefill_tokens": n_prefill,
        "new_tokens": cfg.new_tokens, "runs": cfg.runs, "warmup": cfg.warmup, "ceilings": ceilings,
        "engine": _side_report(eng, floors(_llm_file_bytes(cfg.engines, manifest), act)),
        "reference": None, "speedup": None,
    }
    if cfg.reference:
        if checkpoint is None:
            raise ValueError("no reference checkpoint: pass --model or use --no-reference")
        dtype = reference_dtype(precision, on_cuda)
        log(f"reference: {checkpoint} ({dtype}, {'cuda' if on_cuda else 'cpu'}) ...")
        ref = family.bench_reference(cfg, gen, manifest, checkpoint, dtype, on_cuda)
        ref_bytes = 2 if dtype == "float16" else 4
        report["reference"] = _side_report(ref, floors(ref.info["weight_bytes"], ref_bytes))
        e, r = report["engine"]["stages_ms"], report["reference"]["stages_ms"]
        report["speedup"] = {k: ratio(r[k]["median"], e[k]["median"]) for k in STAGES if k in e and k in r}
        # greedy tokens of the last timed run on each side (same frames, prompt and new tokens; EOS
        # ignored): informational, the pass/fail rule is `sfedge verify`'s (a reference in another
        # dtype, or int4 engines, may part ways early)
        from ..parity import token_agreement

        report["token_agreement"] = token_agreement(eng.info["tokens"], ref.info["tokens"])
    return report
