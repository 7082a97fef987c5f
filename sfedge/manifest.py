"""manifest.json: the one contract between export (writes it) and runtime (trusts nothing else).

Torch-free. Schema (version 1):

    {
      "schema_version": 1,
      "sfedge_version": "0.1.0",
      "created_utc": "2026-11-21T12:00:00Z",
      "precision": "fp32" | "fp16" | "int4",
      "device": "cpu" | "cuda",                      # what the graphs were built/optimised for
      "quantization": {...} | null,                  # int4: method, block_size, accuracy_level ...
      "pipeline": PipelineSpec.to_dict(),            # sampling, preprocess, slowfast settings
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
        "tokenizer":  {"path": "tokenizer"}        # a directory holding tokenizer.json
      },
      "source": {"checkpoint": "...", "config_sha256": "...", "weights_sha256": {file: sha}},
      "versions": {"torch": ..., "transformers": ..., "onnx": ..., "onnxruntime": ...,
                   "onnxruntime_genai": ..., "tensorrt": null},
      "validation": {...} | null,                    # the export's own parity report
      "files": {"relative/path": "sha256", ...}      # every file written, manifest excluded
    }

    IO = {"name": "pixel_values", "dtype": "float32", "shape": ["T", 3, 336, 336],
          "dynamic": {"T": [1, 64]}}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import ManifestError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
COMPONENTS = ("vision", "slowfast", "llm", "embeddings", "tokenizer")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (manifest excluded), keyed by POSIX relative path."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def write_manifest(root: Path, manifest: dict) -> Path:
    """Fill in schema_version and the file hashes, then write root/manifest.json."""
    manifest = dict(manifest, schema_version=SCHEMA_VERSION, files=hash_tree(root))
    missing = [c for c in COMPONENTS if c not in manifest.get("components", {})]
    if missing:
        raise ValueError(f"manifest lacks components {missing}")
    path = Path(root) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def load_manifest(root: Path, verify_files: bool = True) -> dict:
    """Read and check root/manifest.json: schema version, components present, and (by default)
    every listed file present with the recorded sha256. Raises ManifestError naming the problem."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ManifestError(f"engines directory not found: {root}")
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {root} (not an sfedge engines directory?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema_version {version!r}, this sfedge reads {SCHEMA_VERSION}")
    missing = [c for c in COMPONENTS if c not in manifest.get("components", {})]
    if missing:
        raise ManifestError(f"{path}: components missing: {', '.join(missing)}")
    if verify_files:
        for rel, digest in manifest.get("files", {}).items():
            f = root / rel
            if not f.is_file():
                raise ManifestError(f"{root}: file listed in the manifest is missing: {rel}")
            if sha256_file(f) != digest:
                raise ManifestError(f"{root}: {rel} does not match its sha256 in the manifest (corrupted or edited)")
    return manifest
