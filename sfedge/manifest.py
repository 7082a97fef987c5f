"""manifest.json: the one contract between export (writes it) and runtime (trusts nothing else).

Torch-free. Schema (version 2; version 1 engines took normalised float32 pixel_values
[T,3,336,336] and are refused with a message to re-export):

    {
      "schema_version": 2,
      "sfedge_version": "0.1.0",
      "created_utc": "2026-11-21T12:00:00Z",
      "precision": "fp32" | "fp16" | "int4",
      "device": "cpu" | "cuda",                      # what the graphs were built/optimised for
      "quantization": {...} | null,                  # int4: method, block_size, accuracy_level ...
      "pipeline": PipelineSpec.to_dict(),            # sampling, preprocess, slowfast settings
      "family": "llava_next",                        # the model family (sfedge/families); absent: llava_next
      "prompt_family": "vicuna" | "chatml",
      "model": {                                     # what the runtime needs to drive the LLM
        "hidden_size": D, "vocab_size": V, "num_layers": L, "num_kv_heads": H_kv,
        "head_dim": d, "max_length": 4096, "bos_token_id": 1, "eos_token_id": 2,
        "image_token_id": 32000, "max_frames": 64
      },
      "components": {
        "vision":     {"path": "vision.onnx",   "inputs": [IO], "outputs": [IO]},
        "slowfast":   {"path": "slowfast.onnx", "inputs": [IO], "outputs": [IO]},
        "llm":        {"path": "llm/model.onnx", "inputs": [IO], "outputs": [IO], ...},
        "embeddings": {"path": "embeddings.npy", "dtype": "float32", "shape": [V, D]},
        "tokenizer":  {"path": "tokenizer"},       # a directory holding tokenizer.json
        "greedy_step": {"path": "greedy_step.onnx", "inputs": [IO], "outputs": [IO]}
                                                     # ArgMax(logits) + Gather(table) -> token, embeds
        "splice":     {"path": "splice.onnx", "inputs": [IO], "outputs": [IO]}
                                                     # Gather(table, ids) + ScatterND(visual) -> embeds
      },
      "source": {"checkpoint": "...", "config_sha256": "...", "weights_sha256": {file: sha}},
      "versions": {"torch": ..., "transformers": ..., "onnx": ..., "onnxruntime": ...,
                   "onnxruntime_genai": ..., "tensorrt": null},
      "validation": {...} | null,                    # the export's own parity report
      "files": {"relative/path": "sha256", ...}      # every file written, manifest excluded
    }

    IO = {"name": "features", "dtype": "float32", "shape": ["T", 576, 4096], "dynamic": {"T": [1, 64]}}

    The vision input (schema 2): frames resized on the host (PIL bicubic, SPEC 2) and nothing else,
    normalised inside the graph (/255, CLIP mean / std, in float32):
        {"name": "frames", "dtype": "uint8", "shape": ["T", 336, 336, 3], "layout": "NHWC",
         "dynamic": {"T": [1, 64]}}
    and the vision component records what the graph does to them:
        "normalisation": {"in_graph": true, "formula": "(x / 255 - mean[c]) / std[c], float32",
                          "mean": [...], "std": [...]}

Extensions written by `sfedge export` (sfedge/export/), all under schema version 2:

    "slowfast_name": "slow_10frms_spatial_1d_max_pool-fast_4x4",
    "export_seconds": 26.6,
    "pipeline": {"sampling": {"num_frames": min(50, max_frames)}, ...},
    "model": {..., "eos_token_ids": [2]},                 # every id that ends generation
    "components": {
      "vision":   {..., "precision": "fp32" | "fp16", "opset": 18},   # frames always uint8;
      "slowfast": {..., "precision": ..., "opset": 18},               # features/visual_tokens in
                                                                      # the precision's dtype
      # with `export --vision-int8` only: components.vision.quantization = {"method": "dynamic", "tool",
      #   "weights", "reduce_range", "activations", "op_types", "const_weights_only", "validation",
      #   "vs_fp32": {"max_abs", "rel", "cosine", "frames", "input", "against", "min_cosine"}}
      "llm": {
        "path": "llm/model.onnx", "genai_config": "llm/genai_config.json",
        "builder": "onnxruntime-genai model builder, exclude_embeds=true",
        "precision": "fp32" | "fp16" | "int4",   # what was built: fp16 on cpu builds fp32
        "execution_provider": "cpu" | "cuda",
        "inputs":  [inputs_embeds [batch_size, sequence_length, D] (kv dtype),
                    attention_mask int64 [batch_size, total_sequence_length],
                    (position_ids int64 [batch_size, sequence_length], only if "position_ids"),
                    past_key_values.{i}.key / .value [batch_size, H_kv, past_sequence_length, d]],
        "outputs": [logits [batch_size, 1, V] (kv dtype; last position only, sliced at export),
                    present.{i}.key / .value [batch_size, H_kv, total_sequence_length, d]],
        "attention": "GroupQueryAttention" | "MultiHeadAttention",
        "quantized_matmul": bool,                # MatMulNBits (int4)
        "position_ids": bool,                    # False for GQA: positions come from attention_mask
        "kv_cache": {"past_key": "past_key_values.%d.key", "past_value": "past_key_values.%d.value",
                     "present_key": "present.%d.key", "present_value": "present.%d.value",
                     "layout": ["batch_size", "num_kv_heads", "sequence", "head_dim"],
                     "num_layers": L, "num_kv_heads": H_kv, "head_dim": d, "dtype": "float32",
                     "max_length": 4096, "past_present_share_buffer": true}
      },
      "embeddings": {..., "dtype": the llm's inputs_embeds dtype},
      "tokenizer": {"path": "tokenizer", "files": ["tokenizer.json", ...]}
    },
    "source": {"name": "tiny" | as given, ...},
    "context": {"max_context": N,                          # = model.max_length = kv_cache.max_length
                "checkpoint_max_position_embeddings": 32768,
                "rope": {"checkpoint": {...} | null, "builder": {...} | null, "why": "..."},
                "kv_cache": {"dtype", "per_token", "context", "total"}},   # bytes (sfedge.context)
    "tokenizer_guard": {"reference": "SentencePiece tokenizer.model as LLaVA's slow ...",
                        "family": "vicuna" | "chatml", "passed": bool, "allowed_mismatches": n,
                        "canaries": [{"text": chunk, "ids": [reference ids],
                                      "runtime_ids": [...] (only where allowed to differ)}]},
    "validation": {"metric": ..., "frame_counts": [1, 7, 50], "passed": true,
                   "vision" | "slowfast" | "llm" | "chain": {"precision", "rel_tol", "min_cosine",
                       "rel", "max_abs", "cosine", "passed", "failure", "cases": {case: errors}}}

Driving the LLM (GroupQueryAttention builds): attention_mask is all ones over past + current tokens,
and its row sum tells GQA the total length (positions are derived from it). With
past_present_share_buffer true the runtime may preallocate past_key_values.{i} as
[1, H_kv, max_length, d] once, pass the same buffers as present outputs (ORT IO binding), and keep
attention_mask's length = tokens so far; the graph also accepts an unshared, growing cache (past
length = tokens so far, present = past + new), which is what export validation uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as stat_module
import tempfile
import time
from pathlib import Path, PurePosixPath

from .errors import ManifestError, SfedgeError
from .families import family_of_manifest
from .families.llava_next import LLAVA_NEXT

SCHEMA_VERSION = 2  # 2: the vision graph takes uint8 NHWC frames and normalises them itself (was float32 NCHW)
MANIFEST_NAME = "manifest.json"
COMPONENTS = LLAVA_NEXT.graphs  # the default family's; a manifest must hold its own family's `graphs`


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


RUNTIME_CACHE = "trt_cache"  # ONNX Runtime's TensorRT EP engine cache: rewritten at run time, not hashed


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (manifest and runtime cache excluded), keyed by POSIX
    relative path."""
    root = Path(root)
    return {
        rel: sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
        and (rel := p.relative_to(root).as_posix()).split("/")[0] != RUNTIME_CACHE
    }


def write_manifest(root: Path, manifest: dict) -> Path:
    """Fill in schema_version and the file hashes, then write root/manifest.json."""
    manifest = dict(manifest, schema_version=SCHEMA_VERSION, files=hash_tree(root))
    missing = [c for c in family_of_manifest(manifest).graphs if c not in manifest.get("components", {})]
    if missing:
        raise ValueError(f"manifest lacks components {missing}")
    path = Path(root) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def load_manifest(root: Path, verify_files: bool = True, *, trust_stamps: bool = True) -> dict:
    """Read and check root/manifest.json: schema version, components present, and (by default)
    every listed file present with the recorded sha256. Raises ManifestError naming the problem.

    Hashing every file is slow for big engines (sha256: ~1 GB/s here), so, as git's index does, each
    successful verification is remembered in a stamp (see `stamp_path`): a file whose
    (size, mtime_ns, ctime_ns, inode, device) is unchanged since its sha256 last matched this very
    manifest (same manifest sha256) is not hashed again. Any stat change -> hashed. With
    `trust_stamps=False` every file is hashed (the stamp is refreshed). A missing, corrupt or
    unwritable stamp only means hashing."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ManifestError(f"engines directory not found: {root}")
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {root} (not an sfedge engines directory?)")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if type(version) is int and version < SCHEMA_VERSION:
        raise ManifestError(f"{root}: engines exported by an older sfedge (manifest schema_version {version}, this "
                            f"sfedge reads {SCHEMA_VERSION}): re-export them with this sfedge: {reexport_command(root, manifest)}")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema_version {version!r}, this sfedge reads {SCHEMA_VERSION}")
    try:
        graphs = family_of_manifest(manifest).graphs
    except SfedgeError as e:
        raise ManifestError(f"{path}: {e}") from None
    components = manifest.get("components")
    missing = [c for c in graphs if not isinstance(components, dict) or not isinstance(components.get(c), dict)]
    if missing:
        raise ManifestError(f"{path}: components missing: {', '.join(missing)}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ManifestError(f"{path}: no file hashes recorded: the engines cannot be verified")
    for rel in [*files, *(c.get("path", "") for c in components.values())]:
        if not _safe_relative(rel):
            raise ManifestError(f"{path}: unsafe path {rel!r} (must be relative, inside the engines directory)")
    for name in graphs:
        rel = components[name].get("path", "")
        covered = rel in files or any(f.startswith(rel.rstrip("/") + "/") for f in files)
        if not covered:
            raise ManifestError(f"{path}: component {name} ({rel!r}) has no recorded sha256")
        data = f"{rel}.data"
        if (root / data).exists() and data not in files:
            raise ManifestError(f"{path}: {data} has no recorded sha256")
    if verify_files:
        _verify_files(root, files, hashlib.sha256(raw).hexdigest(), trust_stamps)
    return manifest


def reexport_command(root: Path, manifest: dict) -> str:
    """The `sfedge export` command line that rebuilds `root` from what its manifest records (the
    checkpoint, precision, device, max frames, context, non-default SlowFast settings); MODEL where
    it records no checkpoint."""
    from dataclasses import asdict

    from .spec import SlowFastSpec

    def get(block, key):
        return block.get(key) if isinstance(block, dict) else None

    source, name = manifest.get("source"), get(manifest.get("source"), "name")
    model = name if isinstance(name, str) and name.startswith("tiny") else get(source, "checkpoint") or name
    parts = ["sfedge export", str(model) if model else "MODEL", str(root)]
    flags = {"--precision": manifest.get("precision"), "--device": manifest.get("device"),
             "--max-frames": get(manifest.get("model"), "max_frames"),
             "--max-context": get(manifest.get("context"), "max_context")}
    slowfast = get(manifest.get("pipeline"), "slowfast")
    for key, default in asdict(SlowFastSpec()).items():
        if get(slowfast, key) not in (None, default):
            flags["--" + key.replace("_", "-")] = slowfast[key]
    parts += [f"{flag} {value}" for flag, value in flags.items() if isinstance(value, (str, int)) and not isinstance(value, bool)]
    return "`" + " ".join(parts + ["--force"]) + "`"


# --- verification stamps ------------------------------------------------------------------------
#
# Stamp file (JSON), one per engines directory, in the user's cache (the engines directory may be
# read-only):
#     {"stamp_version": 1, "root": "/resolved/engines", "manifest_sha256": "...",
#      "files": {"rel/path": {"sha256": ..., "size": ..., "mtime_ns": ..., "ctime_ns": ...,
#                             "ino": ..., "dev": ...}}}
# Racy entries (git's "racy clean" problem): file timestamps are coarse, so a file changed again
# within the same timestamp tick as its hashing could keep its whole stat tuple. An entry is only
# recorded when the file's mtime and ctime are at least RACY_MARGIN_NS older than the moment its
# hashing began; then any later change gets a newer ctime. Fresher files are simply hashed again
# next time (and recorded once they are old enough).

STAMP_VERSION = 1
RACY_MARGIN_NS = 2_000_000_000
_STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino", "dev")


def stamp_path(root: Path) -> Path:
    """Where the verification stamp of the engines directory `root` lives:
    cache_dir()/verified/<sha256 of the resolved path>.json."""
    from .cache import cache_dir

    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()
    return cache_dir() / "verified" / f"{key}.json"


def _now_ns() -> int:
    return time.time_ns()


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino, "dev": st.st_dev}


def _read_stamp(root: Path, manifest_sha: str) -> dict[str, dict]:
    """The stamp's entries if it belongs to this directory and this exact manifest, else {}."""
    try:
        stamp = json.loads(stamp_path(root).read_text())
        if (stamp.get("stamp_version") != STAMP_VERSION or stamp.get("manifest_sha256") != manifest_sha
                or stamp.get("root") != str(Path(root).resolve())):
            return {}
        return {rel: e for rel, e in stamp["files"].items()
                if isinstance(e, dict) and isinstance(e.get("sha256"), str)
                and all(type(e.get(k)) is int for k in _STAT_FIELDS)}
    except Exception:  # missing, unreadable, corrupt: hash instead
        return {}


def _write_stamp(root: Path, manifest_sha: str, entries: dict[str, dict]) -> None:
    """Atomically (temporary file + os.replace) replace the stamp; any failure is ignored."""
    tmp = None
    try:
        target = stamp_path(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"stamp_version": STAMP_VERSION, "root": str(Path(root).resolve()),
                       "manifest_sha256": manifest_sha, "files": entries}, f)
        os.replace(tmp, target)
        tmp = None
    except Exception:  # read-only or full cache: verification still happened, next time hashes again
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _verify_files(root: Path, files: dict[str, str], manifest_sha: str, trust_stamps: bool) -> None:
    """Every listed file present with the manifest's sha256 (hashed unless a stamp vouches for it
    unchanged); the stamp then records what is known good."""
    known = _read_stamp(root, manifest_sha)
    fresh: dict[str, dict] = {}
    for rel, digest in files.items():
        f = root / rel
        try:
            before = os.stat(f)
        except OSError:
            before = None
        if before is None or not stat_module.S_ISREG(before.st_mode):
            raise ManifestError(f"{root}: file listed in the manifest is missing: {rel}")
        stat = _stat_key(before)
        entry = known.get(rel)
        if trust_stamps and entry is not None and entry["sha256"] == digest and \
                all(entry[k] == stat[k] for k in _STAT_FIELDS):
            fresh[rel] = entry
            continue
        started = _now_ns()
        if sha256_file(f) != digest:
            raise ManifestError(f"{root}: {rel} does not match its sha256 in the manifest (corrupted or edited)")
        try:
            after = _stat_key(os.stat(f))
        except OSError:
            continue
        if after == stat and max(stat["mtime_ns"], stat["ctime_ns"]) < started - RACY_MARGIN_NS:
            fresh[rel] = dict(stat, sha256=digest)
    if fresh != known:
        _write_stamp(root, manifest_sha, fresh)


def _safe_relative(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel
