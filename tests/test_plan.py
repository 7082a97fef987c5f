"""`sfedge plan`: the device table's derivations, the budget and floors against hand-computed cases,
every preset x target x precision answers, engine file sizes exact, the CLI, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sfedge.cli import main
from sfedge.models.presets import PRESETS
from sfedge.plan import budget, model
from sfedge.plan.devices import TARGETS, Target, get_target
from sfedge.plan.report import load_model, make_plan, settings_for

CEIL = {"bandwidth_GBps": 10.0, "matmul_TFLOPs": 0.1, "how": "fixed for the test"}
TOY = Target("toy", "toy", "gpu", memory_gib=1, bandwidth_gbps=100, fp16_tflops=2, int8_tops=4, fp32_tflops=1,
             unified=False, runtime_gib=0.25)


def test_device_table_derivations():
    nano = TARGETS["orin-nano-8gb"]  # 8 SMs x 625 MHz x 4096 = 20.48 dense INT8 (printed 40 sparse)
    assert (nano.int8_tops, nano.fp16_tflops, nano.fp32_tflops) == (20.5, 10.2, 1.28)
    assert TARGETS["orin-nano-8gb-super"].int8_tops * 2 == pytest.approx(67, abs=0.5)  # printed 67 TOPS
    assert TARGETS["agx-orin-64gb"].int8_tops * 2 == pytest.approx(170, abs=0.5)  # GPU share of 275 TOPS
    assert TARGETS["h100-sxm"].fp16_tflops == 1979 / 2 and TARGETS["l4"].int8_tops == 485 / 2
    for t in TARGETS.values():
        assert {"memory_gib", "bandwidth_gbps", "fp16_tflops", "int8_tops", "fp32_tflops"} <= set(t.sources), t.name
        assert t.unified == (t.kind == "jetson") and (t.os_reserved_gib > 0) == t.unified


def test_dtypes_follow_export():
    assert model.dtypes("fp16", "cpu") == {"vision": "float16", "io": "float32", "llm_weight_bytes_per_param": 4.0}
    assert model.dtypes("int4", "cuda") == {"vision": "float16", "io": "float16",
                                            "llm_weight_bytes_per_param": 0.5 + 2 / 32}
    assert model.dtypes("int4", "cpu")["llm_weight_bytes_per_param"] == 0.5 + 4 / 32


def test_budget_by_hand_on_the_toy_preset():
    """sf-llava-test fp16 on cuda: vision 64 wide x 3 layers (2 used), LLM 128 wide x 2 layers."""
    info = model.from_preset("sf-llava-test", "fp16", "cuda")
    # LLM: q,o 128x128 each, k,v 128x64 each, MLP 3 x 128 x 256 -> 2 x 147456 = 294912; lm_head 2048 x 128
    # = 262144; norms (2 x 2 + 1) x 128 = 640; rotary 2 x 100 x 16 = 3200; all x 2 bytes
    assert model.llm_file_bytes(info.geometry, 2, "float16", 100) == (294912 + 262144 + 640 + 3200) * 2
    # vision: layer 4(64^2+64) + 4x64 + (64x128+128) + (128x64+64) = 33472; embed 588x64 + 64 + 577x64
    # + 128 = 74752; projector 64x128 + 128 + 128^2 + 128 = 24832
    assert model.vision_params(info.geometry) == 74752 + 2 * 33472 + 24832
    s = budget.Settings(frames=8, max_context=1024, max_new_tokens=16)
    lines = {ln["item"].split(" ")[0]: ln["bytes"] for ln in budget.memory_lines(info, TOY, s)}
    assert lines["KV"] == 2 * 2 * 2 * 32 * 1024 * 2  # K and V x layers x kv heads x head_dim x ctx x fp16
    assert lines["embedding"] == 2048 * 128 * 2
    assert lines["runtime"] == 0.25 * 2**30
    # prefill: 10 x 288 + 8 x 16 = 3008 visual + 64 text; (2 x 256 + 4 x 128) x 3072 x 2 + logits 2048 x 4
    assert lines["prefill"] == 3072 * 1024 * 2 + 2048 * 4
    # on cpu (fp32): + the resident causal half of GQA's fp32 probabilities, 4 heads x 3072 x 3073 / 2 x 4 B
    cpu = model.from_preset("sf-llava-test", "fp32", "cpu")
    assert budget.prefill_activation_bytes(cpu, 3072) == 4 * 3072 * 3073 // 2 * 4 + 3072 * 1024 * 4 + 2048 * 4
    r = budget.fit(info, TOY, s)
    assert r["problems"] == [f"prompt 3072 + 16 new tokens = 3088 > context 1024"] and not r["fits"]
    assert budget.fit(info, TOY, budget.Settings(frames=8, max_context=4096, max_new_tokens=16))["fits"]


def test_floors_by_hand():
    info = model.from_preset("sf-llava-test", "fp16", "cuda")
    s = budget.Settings(frames=2, max_context=4096, max_new_tokens=4)
    f = budget.floors(info, TOY, s)
    g = info.geometry
    weights = model.llm_file_bytes(g, 2, "float16", 4096)
    tokens = 10 * 288 + 2 * 16 + 64  # S = 10 slow frames even for T = 2 (SPEC 4: indices repeat)
    assert f["compute_dtype"] == "float16" and f["ceilings"]["matmul_TFLOPs"] == 2
    kv = 2 * 2 * 2 * 32 * (tokens + 2) * 2  # at the mean context: prompt + new/2
    assert f["floors_ms"]["decode_ms_per_token"] == pytest.approx(1e3 * (weights + kv) / 100e9)
    flops = 2 * tokens * g.llm_linear_params + 2 * tokens**2 * 4 * 32 * 2 + 2 * 128 * 2048
    assert f["floors_ms"]["prefill"] == pytest.approx(1e3 * flops / 2e12)
    assert f["expected_decode_tokens_per_s"] == pytest.approx(0.5 * 1e3 / f["floors_ms"]["decode_ms_per_token"])


def test_every_preset_target_precision_answers():
    cpu = get_target("cpu", ceilings=CEIL, runtime_bytes=100 * 2**20)
    for preset in PRESETS:
        for target in [*TARGETS.values(), cpu]:
            for precision in model.PRECISIONS:
                info, mk = load_model(preset=preset, precision=precision, device="cpu" if target is cpu else "cuda")
                plan = make_plan(info, target, settings_for(info), mk)
                assert plan["device_bytes"] > 0 and plan["speed"]["expected_decode_tokens_per_s"] > 0
                json.dumps(plan)
                if not plan["fits"]:
                    assert plan["levers"], (preset, target.name, precision)


def test_7b_on_orin_nano_does_not_fit_and_jetson_int4_does_with_levers():
    info, mk = load_model(preset="sf-llava-7b", precision="fp16")
    assert not make_plan(info, TARGETS["orin-nano-8gb"], settings_for(info), mk)["fits"]
    info, mk = load_model(preset="sf-llava-jetson", precision="int4")
    plan = make_plan(info, TARGETS["orin-nano-8gb"], settings_for(info, frames=16, slow_frames=4), mk)
    assert plan["fits"] and plan["headroom_bytes"] > 0


def test_engine_file_sizes_exact_and_computed_sizes_agree(engines_fp32):
    """--engines reports the files' real sizes; the computed sizes (from the source checkpoint's
    geometry, what presets use) match the LLM's weights file exactly and the other parts closely."""
    info, _ = load_model(engines=str(engines_fp32), device="cpu")
    comps = info.manifest["components"]
    llm_dir = (engines_fp32 / comps["llm"]["path"]).parent
    assert info.file_bytes["llm"] == sum(p.stat().st_size for p in llm_dir.iterdir() if ".onnx" in p.name)
    assert info.file_bytes["embeddings"] == (engines_fp32 / "embeddings.npy").stat().st_size
    vision = sum(p.stat().st_size for p in engines_fp32.glob("vision.onnx*"))
    assert info.file_bytes["vision"] == vision
    computed = model.computed_file_bytes(model.from_config("x", info.config, "fp32", "cpu"),
                                         info.manifest["model"]["max_length"])
    assert computed["llm"] == (llm_dir / "model.onnx.data").stat().st_size
    assert computed["embeddings"] == pytest.approx(info.file_bytes["embeddings"], abs=256)  # .npy header
    # vision: the exporter stores identical tensors once (all-ones norms, zero biases of random
    # checkpoints), so the weights file is a little smaller than the parameter count (sf-llava-cpu: 0.1%)
    data = (engines_fp32 / "vision.onnx.data").stat().st_size
    assert data <= computed["vision"] <= 1.02 * data


def test_cli_plan_json_and_errors(capsys, engines_fp32):
    assert main(["plan", "--preset", "sf-llava-jetson", "--target", "agx-orin-64gb", "--precision", "int4",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["fits"] and plan["target"]["name"] == "agx-orin-64gb"
    assert main(["plan", "--target", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["targets"]
    assert [t["name"] for t in listed] == [*TARGETS, "cpu"] and listed[-1]["bandwidth_gbps"] > 0
    assert main(["plan", "--preset", "sf-llava-7b", "--target", "nope"]) == 2
    assert "unknown --target 'nope'" in capsys.readouterr().err
    assert main(["plan", "--engines", str(engines_fp32), "--target", "h200", "--precision", "int4"]) == 2
    assert main(["plan", "--target", "h200"]) == 2
    assert main(["plan", "--preset", "sf-llava-7b", "--target", "h200", "--fast-grid", "5"]) == 2


def test_plan_imports_neither_torch_nor_transformers():
    code = ("import sys; from sfedge.cli import main; "
            "rc = main(['plan', '--preset', 'sf-llava-7b', '--target', 'orin-nano-8gb', '--precision', 'int4']); "
            "print([m for m in ('torch', 'transformers') if m in sys.modules], rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[] 0"


def test_devices_doc_matches_the_table():
    from pathlib import Path

    from sfedge.plan.devices import markdown_tables

    doc = (Path(__file__).resolve().parents[1] / "docs" / "DEVICES.md").read_text()
    assert markdown_tables() in doc, "regenerate docs/DEVICES.md's tables from sfedge.plan.devices.markdown_tables()"


def test_plan_vs_measured_peak_rss_tiny(engines_fp32, clip_path):
    """`sfedge ask`'s peak RSS (kernel high-water mark) against `sfedge plan --target cpu`.
    Honest scope: the tiny engines' weights are < 1 MB, so on them this checks the runtime baseline
    (measured) and the two activation estimates (50 frames of vision, a 3,744-token prefill). At this
    scale what the plan does not model (ONNX Runtime's session objects and thread pools, the video
    decoder's buffers: ~60 MB of a ~500 MB peak, measured 1.16x the plan) is a visible share, so the
    bound here is 25%. The issue's 15% criterion is the real-width sf-llava-cpu's, where weights
    dominate: scripts/plan_vs_measured.py, recorded in docs/BENCHMARKS.md (0.92x at 8 frames)."""
    import os

    from sfedge.plan.measured import child_peak_rss_bytes, compare

    info, _ = load_model(engines=str(engines_fp32), device="cpu")
    plan = make_plan(info, get_target("cpu", ceilings=CEIL), settings_for(info, max_new_tokens=4))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    rss, rc, _ = child_peak_rss_bytes([sys.executable, "-m", "sfedge", "ask", str(engines_fp32), str(clip_path),
                                       "What is moving?", "--max-new-tokens", "4"], env)
    assert rc == 0
    assert compare(plan, rss)["error"] <= 0.25, compare(plan, rss)
