"""Everything the manifest says that export does not compute itself: library versions, the source
checkpoint's identity, and component entries whose I/O is read back from the saved graphs (so the
manifest describes the files, not the exporter's intentions)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from ..errors import ValidationError
from ..manifest import sha256_file
from .graphs import read_io
from .llm import weight_files
from .registry import ComponentSpec

_PACKAGES = {"torch": "torch", "transformers": "transformers", "onnx": "onnx", "onnxruntime": "onnxruntime",
             "onnxruntime_gpu": "onnxruntime-gpu", "onnxruntime_genai": "onnxruntime-genai",
             "safetensors": "safetensors", "tokenizers": "tokenizers", "sentencepiece": "sentencepiece",
             "onnxscript": "onnxscript", "numpy": "numpy"}


def versions() -> dict:
    """Installed versions of the export stack (None where absent); TensorRT is not used by export."""
    out = {}
    for key, dist in _PACKAGES.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    out["tensorrt"] = None
    return out


def source_identity(name: str, ckpt: Path) -> dict:
    """The checkpoint as given, its resolved path, sha256 of config.json and of every weight file."""
    return {
        "name": name,
        "checkpoint": str(ckpt.resolve()),
        "config_sha256": sha256_file(ckpt / "config.json"),
        "weights_sha256": {p.name: sha256_file(p) for p in weight_files(ckpt)},
    }


def component_entry(root: Path, spec: ComponentSpec, precision: str) -> dict:
    """A vision / slowfast manifest entry: I/O read from the graph, checked against the spec (names,
    dtypes, shapes), with the spec's dynamic-axis ranges attached."""
    inputs, outputs = read_io(root / spec.path)
    for got, want in ((inputs, spec.inputs), (outputs, spec.outputs)):
        expected = [{"name": w.name, "dtype": w.dtype, "shape": list(w.shape)} for w in want]
        if got != expected:
            raise ValidationError(f"{spec.path}: graph I/O {got} does not match the spec {expected}")
        for g, w in zip(got, want):
            g["dynamic"] = {k: list(v) for k, v in w.dynamic.items()}
            if w.layout:
                g["layout"] = w.layout
    return {"path": spec.path, "precision": precision, "opset": spec.opset, "inputs": inputs, "outputs": outputs}


def model_block(ref, llm: dict, embeddings_shape: tuple, max_frames: int) -> dict:
    """The manifest's `model`: what the runtime needs to size buffers and stop generation."""
    text = ref.model.config.text_config
    eos = sorted(ref.eos_token_ids)
    return {
        "hidden_size": int(text.hidden_size), "vocab_size": int(embeddings_shape[0]),
        "num_layers": llm["kv_cache"]["num_layers"], "num_kv_heads": llm["kv_cache"]["num_kv_heads"],
        "head_dim": llm["kv_cache"]["head_dim"], "max_length": llm["kv_cache"]["max_length"],
        "bos_token_id": ref.tokenizer.bos_token_id, "eos_token_id": eos[0], "eos_token_ids": eos,
        "image_token_id": ref.image_token_id, "max_frames": max_frames,
    }


def read_manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())
