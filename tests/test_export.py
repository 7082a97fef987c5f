"""`sfedge export`: graph I/O contract, manifest contents and hashes, validation (incl. a corrupted
graph), atomic output and CLI exit codes, on the tiny model (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sfedge.errors import ValidationError
from sfedge.manifest import COMPONENTS, hash_tree, load_manifest, sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp32_export(tiny_dir, tmp_path_factory):
    from sfedge.export import export_model

    out = tmp_path_factory.mktemp("export") / "tiny-fp32"
    manifest = export_model(tiny_dir, out, precision="fp32", progress=False)
    return out, manifest


@pytest.fixture(scope="module")
def reference(tiny_dir):
    from sfedge.reference.model import SlowFastLlava

    return SlowFastLlava.from_pretrained(tiny_dir)


def _io(path: Path):
    from sfedge.export.graphs import read_io

    return read_io(path)


def test_graph_io_names_and_shapes(fp32_export):
    out, m = fp32_export
    d = m["model"]["hidden_size"]
    (vin,), (vout,) = _io(out / "vision.onnx")
    assert (vin["name"], vin["dtype"], vin["shape"]) == ("frames", "uint8", ["T", 336, 336, 3])  # schema 2
    assert (vout["name"], vout["dtype"], vout["shape"]) == ("features", "float32", ["T", 576, d])
    (sin,), (sout,) = _io(out / "slowfast.onnx")
    assert (sin["name"], sin["shape"]) == ("features", ["T", 576, d])
    assert (sout["name"], sout["shape"]) == ("visual_tokens", ["N", d])

    ins, outs = _io(out / "llm" / "model.onnx")
    layers = m["model"]["num_layers"]
    kv = [f"past_key_values.{i}.{w}" for i in range(layers) for w in ("key", "value")]
    assert {i["name"] for i in ins} == {"inputs_embeds", "attention_mask", *kv}
    assert {o["name"] for o in outs} == {"logits", *(f"present.{i}.{w}" for i in range(layers) for w in ("key", "value"))}
    emb = next(i for i in ins if i["name"] == "inputs_embeds")
    assert emb["shape"] == ["batch_size", "sequence_length", d]
    past = next(i for i in ins if i["name"] == "past_key_values.0.key")
    assert past["shape"][:3] == ["batch_size", m["model"]["num_kv_heads"], "past_sequence_length"]
    logits = next(o for o in outs if o["name"] == "logits")
    assert logits["shape"] == ["batch_size", 1, m["model"]["vocab_size"]]  # last position only
    # the manifest describes the files as they are
    for name in ("vision", "slowfast", "llm"):
        c = m["components"][name]
        got_in, got_out = _io(out / c["path"])
        assert [{k: i[k] for k in ("name", "dtype", "shape")} for i in c["inputs"]] == got_in
        assert [{k: o[k] for k in ("name", "dtype", "shape")} for o in c["outputs"]] == got_out
    assert m["components"]["vision"]["inputs"][0]["dynamic"] == {"T": [1, 64]}
    assert m["components"]["vision"]["inputs"][0]["layout"] == "NHWC" and m["schema_version"] == 2
    assert m["components"]["vision"]["normalisation"]["in_graph"] is True


def test_vision_graph_drops_last_layer_and_post_layernorm(fp32_export, tiny_dir):
    import onnx

    layers = json.loads((tiny_dir / "config.json").read_text())["vision_config"]["num_hidden_layers"]
    graph = onnx.load(str(fp32_export[0] / "vision.onnx"), load_external_data=False).graph
    norms = sum(n.op_type == "LayerNormalization" for n in graph.node)
    assert norms == 1 + 2 * (layers - 1)  # pre_layrnorm + 2 per kept layer, no post_layernorm


def test_manifest_contents_and_hashes(fp32_export, tiny_dir):
    out, m = fp32_export
    assert load_manifest(out)["files"] == m["files"]  # verifies every sha256
    assert m["files"] == hash_tree(out)  # every file written is listed
    assert set(COMPONENTS) <= set(m["components"])
    for c in m["components"].values():
        assert (out / c["path"]).exists()
    assert m["precision"] == "fp32" and m["device"] == "cpu" and m["quantization"] is None
    assert m["pipeline"]["slowfast"] == {"slow_frames": 10, "slow_mode": "1d_max", "fast_grid": 4}
    assert m["prompt_family"] == "vicuna"
    assert m["source"]["config_sha256"] == sha256_file(tiny_dir / "config.json")
    assert m["source"]["weights_sha256"] == {"model.safetensors": sha256_file(tiny_dir / "model.safetensors")}
    assert set(m["versions"]) >= {"torch", "transformers", "onnx", "onnxruntime", "onnxruntime_genai"}
    llm = m["components"]["llm"]
    assert llm["kv_cache"]["past_key"] == "past_key_values.%d.key"
    assert llm["kv_cache"]["past_present_share_buffer"] is True
    assert llm["attention"] == "GroupQueryAttention" and llm["position_ids"] is False
    table = np.load(out / "embeddings.npy")
    assert list(table.shape) == m["components"]["embeddings"]["shape"] and table.dtype == np.float32
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    v = m["validation"]
    assert v["passed"] and v["frame_counts"] == [1, 7, 50]
    assert v["vision"]["rel"] < 1e-5 and v["slowfast"]["rel"] < 1e-5
    assert v["chain"]["num_visual_tokens"] == 10 * 288 + 50 * 16 and v["chain"]["top1_agree"]


def test_slowfast_graph_short_clip(fp32_export, reference):
    """T < S: the slow indices repeat in-graph exactly as in the reference."""
    import torch

    from sfedge.export.validate import session

    out, m = fp32_export
    f = torch.randn(7, 576, m["model"]["hidden_size"])
    got = session(out / "slowfast.onnx").run(None, {"features": f.numpy()})[0]
    assert got.shape == (2880 + 7 * 16, m["model"]["hidden_size"])
    np.testing.assert_allclose(got, reference.pool(f).numpy(), rtol=0, atol=1e-6)


def test_llm_shared_kv_buffer(fp32_export):
    """The manifest's past_present_share_buffer contract: past buffers preallocated at max_length,
    attention_mask as long as the tokens so far, presents fed back; same logits as a growing cache."""
    from sfedge.export.validate import llm_step, session

    out, m = fp32_export
    llm = m["components"]["llm"]
    kv = llm["kv_cache"]
    sess = session(out / llm["path"])
    embeds = np.load(out / "embeddings.npy")[np.random.default_rng(0).integers(0, m["model"]["vocab_size"], 8)][None]
    expected, _ = llm_step(sess, llm, embeds)
    names = [(kv[f"past_{w}"] % i, kv[f"present_{w}"] % i) for i in range(kv["num_layers"]) for w in ("key", "value")]
    cache = {p: np.zeros((1, kv["num_kv_heads"], kv["max_length"], kv["head_dim"]), np.float32) for p, _ in names}
    for chunk, total in ((embeds[:, :7], 7), (embeds[:, 7:], 8)):
        feed = {"inputs_embeds": chunk, "attention_mask": np.ones((1, total), np.int64), **cache}
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        cache = {p: outs[q] for p, q in names}
        assert cache[names[0][0]].shape[2] == kv["max_length"]
    np.testing.assert_allclose(outs["logits"][0, -1], expected[0, -1], rtol=0, atol=1e-4)


def test_corrupted_graph_fails_validation(fp32_export, reference, tmp_path):
    import onnx
    from onnx import numpy_helper

    from sfedge.export.validate import check_vision, reference_cases, validate_export

    out, m = fp32_export
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    model = onnx.load(str(bad / "vision.onnx"))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.05
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save_model(model, str(bad / "vision.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="vision.onnx.data", size_threshold=1024)
    cases = reference_cases(reference, 7)
    assert not check_vision(bad / "vision.onnx", cases["vision"], "fp32")["passed"]
    with pytest.raises(ValidationError, match="vision"):
        validate_export(bad, m, reference)


def test_cli_exit_codes_and_atomic_output(tiny_dir, tmp_path, monkeypatch, capsys):
    from sfedge.cli import main
    from sfedge.export import registry

    out = tmp_path / "engines"
    assert main(["export", str(tmp_path / "missing"), str(out)]) == 2
    assert main(["export", str(tiny_dir), str(out), "--no-validate", "--max-frames", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["validation"] is None
    assert main(["export", str(tiny_dir), str(out), "--max-frames", "8"]) == 2  # exists, no --force
    before = load_manifest(out)["files"]

    monkeypatch.setitem(registry.REL_TOL["vision"], "fp32", 0.0)  # every export now fails validation
    assert main(["export", str(tiny_dir), str(out), "--force", "--max-frames", "8", "--json"]) == 1
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["ok"] is False and report["validation"]["vision"]["passed"] is False
    assert load_manifest(out)["files"] == before  # the old export survives a failed --force
    fresh = tmp_path / "fresh"
    assert main(["export", str(tiny_dir), str(fresh), "--max-frames", "8"]) == 1
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]  # no partial directories left


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_reduced_precision_exports_validate(tiny_dir, tmp_path, precision):
    from sfedge.export import export_model

    m = export_model(tiny_dir, tmp_path / precision, precision=precision, max_frames=16, progress=False)
    c, v = m["components"], m["validation"]
    assert v["passed"]
    # uint8 frames at frame counts other than the export dummy's 2, at every precision
    assert c["vision"]["inputs"][0]["dtype"] == "uint8" and sorted(v["vision"]["cases"], key=int) == ["1", "7", "16"]
    if precision == "fp16":  # CPU: fp16 vision + slowfast, fp32 LLM (see sfedge/export/llm.py)
        assert c["vision"]["precision"] == "fp16" and c["vision"]["outputs"][0]["dtype"] == "float16"
        assert c["slowfast"]["inputs"][0]["dtype"] == "float16"
        assert c["llm"]["precision"] == "fp32" and c["embeddings"]["dtype"] == "float32"
    else:
        assert m["quantization"]["bits"] == 4 and m["quantization"]["block_size"] == 32
        assert c["llm"]["precision"] == "int4" and c["llm"]["quantized_matmul"]
        assert c["vision"]["precision"] == "fp32"
    load_manifest(tmp_path / precision)


@pytest.mark.parametrize("mode", ["1d_max", "1d_avg", "2d_max", "2d_avg"])
def test_slowfast_modes_export(mode, tmp_path):
    """Every slow mode of the spec exports with T dynamic (T < S included) and matches the reference."""
    import torch

    from sfedge.export.slowfast import export_slowfast
    from sfedge.export.validate import session
    from sfedge.reference.slowfast import SlowFastPool
    from sfedge.spec import SlowFastSpec

    spec = SlowFastSpec(slow_frames=4, slow_mode=mode, fast_grid=6)
    path, cspec = export_slowfast(spec, 8, 16, tmp_path)
    assert cspec.outputs[0].dynamic == {"N": (spec.num_tokens(1), spec.num_tokens(16))}
    sess = session(path)
    for t in (1, 2, 9):
        f = torch.randn(t, 576, 8)
        got = sess.run(None, {"features": f.numpy()})[0]
        assert got.shape == (spec.num_tokens(t), 8)
        np.testing.assert_allclose(got, SlowFastPool(spec)(f).numpy(), rtol=0, atol=1e-6)
