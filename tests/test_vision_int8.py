"""`sfedge export --vision-int8`: the int8 vision graph (ONNX Runtime dynamic quantization), on
the tiny model: exported, recorded in the manifest, run by the Pipeline; refused where it cannot run."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from sfedge.errors import SfedgeError
from sfedge.spec import GenerationSpec


@pytest.fixture(scope="module")
def engines_int8v(tmp_path_factory, tiny_dir):
    from sfedge.export import export_model

    out = tmp_path_factory.mktemp("engines") / "tiny-fp32-int8v"
    export_model(tiny_dir, out, precision="fp32", device="cpu", validate=False, progress=False, vision_int8=True)
    return out


def test_vision_int8_is_quantized_and_recorded(engines_int8v, engines_fp32):
    import onnx

    from sfedge.export.vision_int8 import MIN_COSINE
    from sfedge.manifest import load_manifest

    m = load_manifest(engines_int8v)  # every file, the new vision graph included, has its sha256
    q = m["components"]["vision"]["quantization"]
    assert q["tool"] == "onnxruntime.quantization.quantize_dynamic" and q["op_types"] == ["MatMul"]
    assert MIN_COSINE <= q["vs_fp32"]["cosine"] < 1.0 and q["vs_fp32"]["max_abs"] > 0
    ops = Counter(n.op_type for n in onnx.load(str(engines_int8v / "vision.onnx"), load_external_data=False).graph.node)
    assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0
    assert "quantization" not in load_manifest(engines_fp32)["components"]["vision"]  # opt-in only
    assert m["components"]["vision"]["inputs"] == load_manifest(engines_fp32)["components"]["vision"]["inputs"]


def test_vision_int8_pipeline_answers(engines_int8v, pipeline_fp32, clip_path):
    from sfedge.export.vision_int8 import MIN_COSINE, compare, random_frames
    from sfedge.runtime.pipeline import Pipeline

    p = Pipeline(engines_int8v)
    feeds = random_frames(p.vision.session, 3, seed=1)
    got = p.vision.infer(feeds)["features"]
    want = pipeline_fp32.vision.infer(feeds)["features"]
    assert compare(want, got)["cosine"] >= MIN_COSINE  # frames other than the export's check
    gen = GenerationSpec(max_new_tokens=6, ignore_eos=True)
    a = p.ask(clip_path, "What is happening in the video?", gen=gen)
    b = pipeline_fp32.ask(clip_path, "What is happening in the video?", gen=gen)
    assert len(a.token_ids) == len(b.token_ids) == 6  # agreement is measured, not asserted (BENCHMARKS.md)


@pytest.mark.parametrize("precision, device", [("fp32", "cuda"), ("fp16", "cpu")])
def test_vision_int8_refused_where_it_cannot_run(tmp_path, precision, device):
    from sfedge.export import export_model

    with pytest.raises(SfedgeError, match="--vision-int8"):
        export_model("tiny", tmp_path / "e", precision=precision, device=device, vision_int8=True)
    assert not (tmp_path / "e").exists()


def test_vision_int8_cli_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sfedge", "export", "tiny", str(tmp_path / "e"), "--vision-int8",
                          "--device", "cuda"], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--vision-int8" in out.stderr
