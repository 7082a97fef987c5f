"""`make_plan`: one plan (budget, fit, levers, floors) as a JSON-able dict, and its text."""

from __future__ import annotations

from dataclasses import replace

from ..errors import SfedgeError
from ..spec import SlowFastSpec
from . import model as models
from .budget import GIB, Settings, fit, floors, kv_dtype, levers
from .devices import Target


def load_model(*, preset: str | None = None, checkpoint: str | None = None, engines: str | None = None,
               precision: str | None = None, device: str = "cuda") -> tuple[models.ModelInfo, object]:
    """(the model, a function precision -> model for the levers, or None for engines)."""
    if engines:
        info = models.from_engines(engines)
        if precision and precision != info.precision:
            raise SfedgeError(f"--precision {precision}: the engines in {engines} are {info.precision} "
                              "(their files decide; drop --precision)")
        if (device == "cpu") != (info.device == "cpu"):
            info.notes.append(f"the engines were built for {info.device}, the target runs "
                              f"{'cpu' if device == 'cpu' else 'cuda'}: sizes are these files', re-export for the target")
        return info, None
    if preset:
        return models.from_preset(preset, precision or "fp16", device), \
            lambda p: models.from_preset(preset, p, device)
    return models.from_checkpoint(checkpoint, precision or "fp16", device), \
        lambda p: models.from_checkpoint(checkpoint, p, device)


def settings_for(info: models.ModelInfo, *, frames=None, slow_frames=None, fast_grid=None, max_context=None,
                 kv_dtype_=None, max_new_tokens=None, efficiency=None, pruned=None) -> Settings:
    """The settings: flags, else the engines' (manifest: frames `ask` samples, slowfast, context),
    else the family's (Family.plan.prompt: e.g. VideoLLaMA3's processor max_frames, video budget and
    chat template), else the defaults (SPEC: 50 frames, slow 10 / fast 4x4, context min(4096,
    max_position_embeddings), 128 new tokens)."""
    base = models.engines_slowfast(info) or SlowFastSpec()
    try:
        sf = replace(base, **{k: v for k, v in (("slow_frames", slow_frames), ("fast_grid", fast_grid)) if v is not None})
    except ValueError as e:
        raise SfedgeError(str(e)) from None
    ctx = max_context or models.engines_context(info) or min(4096, info.max_position_embeddings)
    rules = info.family.plan.prompt(info)
    engine_frames = ((info.manifest or {}).get("pipeline", {}).get("sampling", {}).get("num_frames")
                     or (rules and rules.frames))
    if pruned is not None and not (rules and rules.prunes):
        raise SfedgeError(f"--pruned: {info.family.name} engines prune no visual tokens (VideoLLaMA3's compression "
                          "mask is what --pruned assumes a fraction of)")
    if pruned is not None and not 0 <= pruned < 1:
        raise SfedgeError(f"--pruned must be in [0, 1), got {pruned}")
    s = Settings(frames=frames or engine_frames or 50, slowfast=sf, max_context=ctx, kv_dtype=kv_dtype_,
                 max_new_tokens=max_new_tokens or 128, efficiency=efficiency or 0.5, rules=rules, pruned=pruned or 0.0)
    if s.frames < 1 or s.max_context < 1 or s.max_new_tokens < 1 or not 0 < s.efficiency <= 1:
        raise SfedgeError("--frames, --max-context and --max-new-tokens must be >= 1, --efficiency in (0, 1]")
    if kv_dtype_ is not None and kv_dtype_ not in models.BYTES:
        raise SfedgeError(f"--kv-dtype must be one of {', '.join(models.BYTES)}, got {kv_dtype_!r}")
    return s


def make_plan(info: models.ModelInfo, target: Target, s: Settings, make_model=None) -> dict:
    r = fit(info, target, s)
    plan = {
        "model": info.name, "precision": info.precision, "device": info.device, "target": target.to_dict(),
        "settings": {"frames": s.frames, "slowfast": s.rules.label if s.rules else s.slowfast.name(),
                     "visual_tokens": s.visual_tokens, **({"pruned": s.pruned} if s.rules and s.rules.prunes else {}),
                     "prefill_tokens": s.prefill_tokens, "text_tokens": s.text_tokens, "max_context": s.max_context,
                     "kv_dtype": kv_dtype(info, s), "max_new_tokens": s.max_new_tokens},
        "sizes": "file sizes on disk" if info.file_bytes else "computed from the geometry",
        **r, "speed": floors(info, target, s), "notes": list(info.notes) + models.family_notes(info),
    }
    plan["levers"] = [] if r["fits"] else levers(info, target, s, make_model)
    return plan


def _gib(b: float) -> str:
    return f"{b / GIB:8.2f} GiB"


def render(plan: dict) -> str:
    t, st = plan["target"], plan["settings"]
    pruned = f" ({st['pruned']:.0%} of later frames pruned, assumed)" if st.get("pruned") else ""
    out = [f"plan: {plan['model']} {plan['precision']} ({plan['device']} engines) on {t['label']} "
           f"({t['memory_gib']:g} GiB{' unified' if t['unified'] else ''}, {t['bandwidth_gbps']:g} GB/s)",
           f"  {st['frames']} frames, {st['slowfast']}{pruned}: {st['visual_tokens']} visual + {st['text_tokens']} text = "
           f"{st['prefill_tokens']} prefill tokens, {st['max_new_tokens']} new, context {st['max_context']}, "
           f"KV {st['kv_dtype']}", "", "memory budget:"]
    for ln in plan["lines"]:
        tag = "" if ln["where"] == "device" else "  [host, not counted]"
        est = "  (estimated)" if ln["how"].startswith("estimated") else ""
        out.append(f"  {_gib(ln['bytes'])}  {ln['item']}{tag}{est}")
    verdict = "FITS" if plan["fits"] else "DOES NOT FIT"
    out.append(f"  {_gib(plan['device_bytes'])}  total of {t['memory_gib']:g} GiB -> {verdict}, headroom "
               f"{plan['headroom_bytes'] / GIB:.2f} GiB")
    out += [f"  problem: {p}" for p in plan["problems"]]
    if plan["levers"]:
        out.append("levers (each alone):")
        for lv in plan["levers"]:
            out.append(f"  {lv['lever']:60} {_gib(lv['device_bytes'])}  {'fits' if lv['fits'] else 'no'}"
                       f"{'; ' + '; '.join(lv['problems']) if lv['problems'] else ''}")
    sp = plan["speed"]
    f = sp["floors_ms"]
    out += ["", f"latency floors ({sp['compute_dtype']} at {sp['ceilings']['matmul_TFLOPs']:g} TFLOP/s, "
            f"{sp['ceilings']['bandwidth_GBps']:g} GB/s):"]
    out += [f"  {k:22} {v:10.2f} ms" for k, v in f.items()]
    if sp["expected_ttft_ms"] is not None:
        out.append(f"  expected at {sp['efficiency']:.0%} of the floors: TTFT ({' + '.join(sp['ttft_stages'])}) "
                   f"{sp['expected_ttft_ms'] / 1e3:.2f} s, decode {sp['expected_decode_tokens_per_s']:.1f} tokens/s")
    else:
        out.append(f"  expected decode at {sp['efficiency']:.0%}: {sp['expected_decode_tokens_per_s']:.1f} tokens/s")
    out += [f"note: {n}" for n in plan["notes"]]
    out.append("sources of every target figure and of the estimated lines: docs/DEVICES.md")
    return "\n".join(out)
