"""load_manifest refuses anything it cannot verify, and remembers what it verified (stamps in the
user cache, trusted only while a file's stat is unchanged): torch-free, no export needed."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

import sfedge.manifest as manifest_module
from sfedge.cache import cache_dir
from sfedge.errors import ManifestError
from sfedge.manifest import COMPONENTS, RACY_MARGIN_NS, load_manifest, stamp_path, write_manifest

PATHS = {"vision": "vision.onnx", "slowfast": "slowfast.onnx", "llm": "llm/model.onnx",
         "embeddings": "embeddings.npy", "tokenizer": "tokenizer", "greedy_step": "greedy_step.onnx",
         "splice": "splice.onnx"}


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
    (lambda m: m["components"].pop("splice"), "components missing: splice"),
    (lambda m: m.update(family="videollama9"), "unknown model family 'videollama9'; this sfedge knows llava_next"),
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


# --- verification stamps: remembered like git's index, never trusted blindly ---------------------

@pytest.fixture
def hashed(monkeypatch):
    """The names of the files load_manifest hashes (sha256_file calls)."""
    calls = []
    real = manifest_module.sha256_file

    def counting(path, *a, **k):
        calls.append(os.path.basename(path))
        return real(path, *a, **k)
    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    return calls


@pytest.fixture
def settled(monkeypatch):
    """The clock a minute ahead: the just-written engine files count as old enough to be stamped
    (files changed within RACY_MARGIN_NS of their hashing are never stamped; see the racy test)."""
    monkeypatch.setattr(manifest_module, "_now_ns", lambda: time.time_ns() + 60 * 10**9)


def _file_count(root):
    return len(json.loads((root / "manifest.json").read_text())["files"])


def test_a_verified_directory_is_not_hashed_again(engines, hashed, settled):
    n = _file_count(engines)
    assert stamp_path(engines).parent == cache_dir() / "verified"  # not in the (maybe read-only) engines
    load_manifest(engines)
    assert len(hashed) == n  # first open: every file hashed
    assert stamp_path(engines).is_file()
    hashed.clear()
    assert load_manifest(engines)["files"]  # second open: the stamp vouches for every file
    assert hashed == []
    load_manifest(engines, trust_stamps=False)  # the explicit full re-hash
    assert len(hashed) == n
    hashed.clear()
    load_manifest(engines, verify_files=False)
    assert hashed == []
    (engines / "greedy_step.onnx").unlink()  # a stamp never hides a missing file
    with pytest.raises(ManifestError, match="missing: greedy_step.onnx"):
        load_manifest(engines)


def test_a_file_edited_behind_the_stamp_is_caught(engines, hashed, settled):
    """Same size, same inode, mtime put back with os.utime: only the ctime tells, and it does."""
    load_manifest(engines)
    f = engines / "vision.onnx.data"
    old = os.stat(f)
    time.sleep(0.05)  # past the filesystem's timestamp tick (the racy guard covers the same tick)
    with open(f, "r+b") as fh:  # in place: keeps the inode
        fh.write(b"X" * old.st_size)
    os.utime(f, ns=(old.st_atime_ns, old.st_mtime_ns))
    new = os.stat(f)
    assert (new.st_size, new.st_mtime_ns, new.st_ino, new.st_dev) == \
           (old.st_size, old.st_mtime_ns, old.st_ino, old.st_dev)
    assert new.st_ctime_ns != old.st_ctime_ns
    hashed.clear()
    with pytest.raises(ManifestError, match="vision.onnx.data does not match its sha256"):
        load_manifest(engines)
    assert hashed == ["vision.onnx.data"]  # the others still trusted


def test_a_replaced_file_is_hashed(engines, hashed, settled):
    """A different file moved into place (new inode), even with the old size and mtime."""
    load_manifest(engines)
    f, tmp = engines / "slowfast.onnx", engines / "slowfast.new"
    old = os.stat(f)
    tmp.write_bytes(f.read_bytes())
    os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(tmp, f)
    hashed.clear()
    load_manifest(engines)
    assert hashed == ["slowfast.onnx"]


def test_a_changed_manifest_reverifies_everything(engines, hashed, settled):
    load_manifest(engines)
    _edit(engines, lambda m: m.update(note="edited"))
    hashed.clear()
    load_manifest(engines)
    assert len(hashed) == _file_count(engines)
    hashed.clear()
    load_manifest(engines)
    assert hashed == []


def test_freshly_changed_files_are_not_stamped(engines, hashed):
    """Racy files (changed within RACY_MARGIN_NS of being hashed) could be changed again within the
    same timestamp tick without any stat change: they are hashed again until they have settled."""
    assert RACY_MARGIN_NS >= 10**9
    load_manifest(engines)
    hashed.clear()
    load_manifest(engines)  # real clock: the files were written just now
    assert len(hashed) == _file_count(engines)


@pytest.mark.parametrize("stamp", [
    b"{not json", b"\xff\xfe", b"[]", b"null",
    b'{"stamp_version": 1, "files": []}',
    b'{"stamp_version": 1, "manifest_sha256": "MANIFEST", "root": "ROOT", "files": {"vision.onnx": "x"}}',
    b'{"stamp_version": 1, "manifest_sha256": "MANIFEST", "root": "ROOT", "files": '
    b'{"vision.onnx": {"sha256": 1, "size": "2", "mtime_ns": null}}}',
])
def test_a_corrupt_stamp_is_ignored(engines, hashed, settled, stamp):
    path = stamp_path(engines)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest_sha = hashlib.sha256((engines / "manifest.json").read_bytes()).hexdigest()
    path.write_bytes(stamp.replace(b"MANIFEST", manifest_sha.encode())
                     .replace(b"ROOT", str(engines.resolve()).encode()))
    load_manifest(engines)
    assert len(hashed) == _file_count(engines)
    assert json.loads(path.read_text())["manifest_sha256"] == manifest_sha  # replaced by a good one
    hashed.clear()
    load_manifest(engines)
    assert hashed == []


def test_a_stamp_that_lies_about_a_tampered_file_is_not_believed(engines, hashed, settled):
    """The stamp's sha256 must equal the manifest's: a stamp for other content vouches for nothing."""
    load_manifest(engines)
    path = stamp_path(engines)
    stamp = json.loads(path.read_text())
    stamp["files"]["vision.onnx"]["sha256"] = "0" * 64
    path.write_text(json.dumps(stamp))
    hashed.clear()
    load_manifest(engines)
    assert hashed == ["vision.onnx"]


@pytest.mark.parametrize("how", ["cache-is-a-file", "verified-is-a-file", "replace-fails", "read-only"])
def test_an_unusable_cache_only_means_hashing(engines, hashed, settled, tmp_path_factory, monkeypatch, how):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SFEDGE_CACHE", str(cache))
    if how == "cache-is-a-file":
        (cache / "file").write_text("")
        monkeypatch.setenv("SFEDGE_CACHE", str(cache / "file" / "sfedge"))
    elif how == "verified-is-a-file":
        (cache / "verified").write_text("")
    elif how == "replace-fails":
        def refuse(*a, **k):
            raise PermissionError("read-only")
        monkeypatch.setattr(manifest_module.os, "replace", refuse)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        (cache / "verified").mkdir()
        (cache / "verified").chmod(0o500)
        cache.chmod(0o500)
    for _ in range(2):
        hashed.clear()
        load_manifest(engines)
        assert len(hashed) == _file_count(engines)
    if how == "replace-fails":
        assert list((cache / "verified").iterdir()) == []  # no temporary file left behind
    with pytest.raises(ManifestError, match="does not match"):  # and verification still bites
        (engines / "tokenizer" / "tokenizer.json").write_bytes(b"x")
        load_manifest(engines)
