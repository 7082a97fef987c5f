"""What `sfedge plan` plans for: a model's geometry, the dtypes its engines get at a precision on a
device, and the bytes of each engine file (real sizes for an engines directory, else computed).

Three sources: a preset (its geometry, from sfedge.models.presets' tables, without transformers),
a checkpoint directory (its config.json) or an exported engines directory (its manifest; the
source checkpoint's config.json, where it still exists, for the FLOP counts). Torch-free.

Precision -> dtypes, as `sfedge export` builds them (sfedge/export/__init__.py, export/llm.py):

    precision  device  vision  LLM weights            LLM I/O, KV cache, embeddings.npy
    fp32       any     fp32    fp32                   float32
    fp16       cuda    fp16    fp16                   float16
    fp16       cpu     fp16    fp32 (builder: fp32)   float32
    int4       cuda    fp16    int4 + fp16 scales/32  float16
    int4       cpu     fp32    int4 + fp32 scales/32  float32
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..bench.roofline import Geometry
from ..errors import SfedgeError
from ..spec import IMAGE_SIZE, PATCH_SIZE, SlowFastSpec

PRECISIONS = ("fp32", "fp16", "int4")
INT4_BLOCK = 32  # sfedge.export.llm.INT4_BLOCK_SIZE (kept here: export imports torch)
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


def llava_preset_config(name: str) -> dict | None:
    """A SlowFast-LLaVA preset's config as llava-hf's config.json would hold it (what
    Geometry.from_config reads), built from sfedge.models.presets' tables without transformers; None
    for a name that is not one of them (the llava_next family's `plan.preset_config`)."""
    from ..models.presets import PRESETS

    if name not in PRESETS:
        return None
    vision, text, family = PRESETS[name]
    return {"model_type": "llava_next", "vision_config": dict(vision, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
            "text_config": dict({"tie_word_embeddings": False, "max_position_embeddings": 4096}, **text),
            "vision_feature_layer": -2, "prompt_family": family}


def preset_names() -> list[str]:
    from ..models.presets import PRESETS
    from ..models.presets_videollama3 import VL3_PRESETS

    return [*PRESETS, *VL3_PRESETS]


def preset_config_dict(name: str) -> dict:
    """A preset's config.json as a dict, from the family that declares it (Family.plan.preset_config)."""
    from ..families import FAMILIES

    for family in FAMILIES.values():
        cfg = family.plan.preset_config(name) if family.plan else None
        if cfg is not None:
            return cfg
    raise SfedgeError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")


def family_of_config(cfg: dict | None):
    """The family whose model_types hold the config's `model_type` (else the default, llava_next:
    llava-hf configs of other LLaVA types are read with its formulas, as before families existed)."""
    from ..families import DEFAULT, FAMILIES

    mt = (cfg or {}).get("model_type")
    return next((f for f in FAMILIES.values() if mt in f.model_types), FAMILIES[DEFAULT])


def dtypes(precision: str, device: str) -> dict:
    """The dtypes `sfedge export --precision P --device D` gives each part (table above)."""
    if precision not in PRECISIONS:
        raise SfedgeError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = device == "cuda"
    io = "float16" if cuda and precision in ("fp16", "int4") else "float32"
    vision = "float16" if precision == "fp16" or (precision == "int4" and cuda) else "float32"
    if precision == "int4":
        weight = 0.5 + BYTES[io] / INT4_BLOCK  # 4-bit weights + one scale per block (symmetric: no zero point)
    else:
        weight = float(BYTES[io])
    return {"vision": vision, "io": io, "llm_weight_bytes_per_param": weight}


@dataclass
class ModelInfo:
    name: str
    config: dict | None  # llava-hf config.json as a dict (None: unknown, FLOP stages left out)
    precision: str
    device: str  # "cpu" or "cuda": what the engines are (or would be) built for
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    max_position_embeddings: int
    file_bytes: dict | None = None  # engines directory: real sizes per component
    manifest: dict | None = None
    notes: list = field(default_factory=list)
    root: Path | None = None  # the engines directory (its tokenizer counts a family's prompt text)
    family: object = None  # sfedge.families.Family (None: from the manifest, else the config's model_type)
    source: Path | None = None  # a checkpoint directory (--model): its processor, template and tokenizer
    preset: str | None = None  # a preset's name (--preset)

    def __post_init__(self) -> None:
        if self.family is None:
            from ..families import family_of_manifest

            self.family = family_of_manifest(self.manifest) if self.manifest else family_of_config(self.config)

    @property
    def geometry(self) -> Geometry | None:
        return Geometry.from_config(self.config) if self.config else None

    @property
    def dtypes(self) -> dict:
        d = dtypes(self.precision, self.device)
        if self.manifest:  # what was really built
            llm = self.manifest["components"]["llm"]
            d["io"] = llm.get("kv_cache", {}).get("dtype", d["io"])
            d["vision"] = "float16" if self.manifest["components"]["vision"].get("precision") == "fp16" else "float32"
        return d

    @property
    def vision_heads(self) -> int:
        v = (self.config or {}).get("vision_config", {})
        return v.get("num_attention_heads") or max(1, v.get("hidden_size", 1024) // 64)


def _text_dims(cfg: dict) -> dict:
    t = cfg["text_config"]
    heads = t["num_attention_heads"]
    return {"num_layers": t["num_hidden_layers"], "num_kv_heads": t.get("num_key_value_heads") or heads,
            "head_dim": t.get("head_dim") or t["hidden_size"] // heads, "hidden": t["hidden_size"],
            "vocab": t["vocab_size"], "max_position_embeddings": t.get("max_position_embeddings", 4096)}


def from_config(name: str, cfg: dict, precision: str, device: str, **where) -> ModelInfo:
    dtypes(precision, device)  # validates the precision
    return ModelInfo(name, cfg, precision, device, **_text_dims(cfg), **where)


def from_preset(name: str, precision: str, device: str) -> ModelInfo:
    return from_config(name, preset_config_dict(name), precision, device, preset=name)


def from_checkpoint(path: str | Path, precision: str, device: str) -> ModelInfo:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise SfedgeError(f"--model {path}: no config.json there (a llava-hf checkpoint directory?)")
    try:
        cfg = json.loads(f.read_text())
        cfg["text_config"]["hidden_size"]
    except (ValueError, KeyError, TypeError) as e:
        raise SfedgeError(f"--model {path}: config.json is not a LLaVA-NeXT config ({e})") from None
    return from_config(Path(path).name, cfg, precision, device, source=Path(path))


def engine_file_bytes(root: Path, manifest: dict) -> dict:
    """Bytes on disk per component: the LLM's graph + weights (.onnx, .data, as the bench's decode
    floor counts them), the vision graph + its external data, slowfast, greedy_step, embeddings."""
    comps = manifest["components"]

    def files(rel: str) -> int:
        p = root / rel
        return sum(q.stat().st_size for q in (p, p.with_name(p.name + ".data")) if q.is_file())

    llm_dir = (root / comps["llm"]["path"]).parent
    return {"llm": sum(p.stat().st_size for p in llm_dir.rglob("*") if p.is_file()
                       and (p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data"))),
            "vision": files(comps["vision"]["path"]),
            "slowfast": files(comps["slowfast"]["path"]) if "slowfast" in comps else 0,  # a family without pooling
            "greedy_step": files(comps["greedy_step"]["path"]), "embeddings": files(comps["embeddings"]["path"])}


def from_engines(root: str | Path) -> ModelInfo:
    from ..manifest import load_manifest

    root = Path(root)
    manifest = load_manifest(root, verify_files=False)
    m = manifest["model"]
    cfg, notes = None, []
    ckpt = manifest.get("source", {}).get("checkpoint")
    if ckpt and (Path(ckpt) / "config.json").is_file():
        cfg = json.loads((Path(ckpt) / "config.json").read_text())
    else:
        notes.append(f"source checkpoint {ckpt!r} not found: vision / prefill FLOPs unknown (pass --model CKPT)")
    llm = manifest["components"]["llm"]
    info = ModelInfo(root.name, cfg, manifest.get("precision", "fp32"), llm.get("execution_provider", "cpu"),
                     m["num_layers"], m["num_kv_heads"], m["head_dim"], m["hidden_size"], m["vocab_size"],
                     manifest.get("context", {}).get("checkpoint_max_position_embeddings", m["max_length"]),
                     engine_file_bytes(root, manifest), manifest, notes, root)
    return info


def family_notes(info: ModelInfo) -> list[str]:
    """What the plan leaves out for this family (Family.plan.vision_modelled False)."""
    if info.family.plan.vision_modelled:
        return []
    return [f"{info.family.name}: the vision graph's FLOPs and activations (frames at their own resolution) are "
            "not modelled: the vision floor and the vision activation line are left out"]


def engines_context(info: ModelInfo) -> int | None:
    return info.manifest["model"]["max_length"] if info.manifest else None


def engines_slowfast(info: ModelInfo) -> SlowFastSpec | None:
    if not info.manifest:
        return None
    return SlowFastSpec(**info.manifest.get("pipeline", {}).get("slowfast", {}))


# --- computed file sizes (presets, checkpoints) ----------------------------------------------------

def clip_vision_params(cfg: dict, g: Geometry) -> int:
    """The llava_next family's `plan.vision_params`."""
    return vision_params(g)


def vision_params(g: Geometry) -> int:
    """CLIP vision tower up to the feature layer (patch conv, class + position embeddings, pre-LN,
    `v_layers_used` encoder layers) + the mlp2x_gelu projector: what vision.onnx holds."""
    h, m = g.v_hidden, g.v_mlp
    layer = 4 * (h * h + h) + 4 * h + (h * m + m) + (m * h + h)
    embed = g.patch_dim * h + h + (g.patches + 1) * h + 2 * h
    projector = h * g.hidden + g.hidden + g.hidden * g.hidden + g.hidden
    return embed + g.v_layers_used * layer + projector


def llm_file_bytes(g: Geometry, weight_bytes_per_param: float, io: str, context: int, bias_params: int = 0) -> float:
    """The builder's decoder without embeddings: matmuls + lm_head at the weight precision, RMSNorm
    weights, the rotary cos / sin caches ([context, head_dim / 2] each) and any biases (Qwen2's q, k,
    v: the family's `plan.llm_bias_params`) in the I/O dtype."""
    matmuls = (g.llm_linear_params + g.vocab * g.hidden) * weight_bytes_per_param
    small = ((2 * g.layers + 1) * g.hidden + 2 * context * (g.head_dim // 2) + bias_params) * BYTES[io]
    return matmuls + small


def computed_file_bytes(info: ModelInfo, context: int) -> dict:
    g, d, rules = info.geometry, info.dtypes, info.family.plan
    return {"llm": llm_file_bytes(g, d["llm_weight_bytes_per_param"], d["io"], context, rules.llm_bias_params(g)),
            "vision": rules.vision_params(info.config, g) * BYTES[d["vision"]], "slowfast": 0, "greedy_step": 0,
            "embeddings": info.vocab * info.hidden * BYTES[d["io"]]}
