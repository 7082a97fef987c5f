"""load_manifest refuses anything it cannot verify: torch-free, no export needed."""

from __future__ import annotations

import json

import pytest

from sfedge.errors import ManifestError
from sfedge.manifest import COMPONENTS, load_manifest, write_manifest

PATHS = {"vision": "vision.onnx", "slowfast": "slowfast.onnx", "llm": "llm/model.onnx",
         "embeddings": "embeddings.npy", "tokenizer": "tokenizer", "greedy_step": "greedy_step.onnx"}


@pytest.fixture
def engines(tmp_path):
    for rel in [*PATHS.values(), "vision.onnx.data"]:
        f = tmp_path / rel
        if rel == "tokenizer":
            f.mkdir()
            f = f / "tokenizer.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(rel.encode())
    write_manifest(tmp_path, {"components": {c: {"path": PATHS[c]} for c in COMPONENTS}})
    return tmp_path


def _edit(root, change):
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_a_complete_manifest_loads(engines):
    m = load_manifest(engines)
    assert set(m["files"]) == {*PATHS.values(), "vision.onnx.data", "tokenizer/tokenizer.json"} - {"tokenizer"}


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(files={}), "no file hashes"),
    (lambda m: m["files"].pop("vision.onnx"), "component vision"),
    (lambda m: m["files"].pop("vision.onnx.data"), "vision.onnx.data has no recorded sha256"),
    (lambda m: m["files"].pop("tokenizer/tokenizer.json"), "component tokenizer"),
    (lambda m: m["components"]["llm"].update(path="../elsewhere/model.onnx"), "unsafe path"),
    (lambda m: m["files"].update({"/etc/passwd": "0"}), "unsafe path"),
    (lambda m: m["components"].pop("greedy_step"), "components missing: greedy_step"),
    (lambda m: m.update(schema_version=99), "schema_version 99"),
])
def test_unverifiable_manifests_are_refused(engines, change, message):
    _edit(engines, change)
    with pytest.raises(ManifestError, match=message):
        load_manifest(engines)


def test_a_manifest_that_is_not_an_object_is_refused(engines):
    (engines / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        load_manifest(engines)


def test_a_tampered_file_is_refused(engines):
    (engines / "vision.onnx.data").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="vision.onnx.data does not match its sha256"):
        load_manifest(engines)


def test_the_runtime_tensorrt_cache_is_not_hashed(engines):
    """ONNX Runtime's TensorRT EP writes engine caches into trt_cache/ at run time."""
    (engines / "trt_cache" / "vision").mkdir(parents=True)
    (engines / "trt_cache" / "vision" / "x.engine").write_bytes(b"built at run time")
    write_manifest(engines, json.loads((engines / "manifest.json").read_text()))
    assert not any(f.startswith("trt_cache/") for f in load_manifest(engines)["files"])
    (engines / "trt_cache" / "vision" / "x.engine").write_bytes(b"rebuilt")
    load_manifest(engines)  # still verifies
