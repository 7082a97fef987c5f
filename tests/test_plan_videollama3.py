"""`sfedge plan` for VideoLLaMA3 through the family record (Family.plan): a preset, a checkpoint and
its exported engines give the same token counts; the sizes computed from the geometry match the tiny
export's files; the 7B's weights and KV cache against a hand computation; the CLI and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sfedge.cli import main
from sfedge.plan import budget, model
from sfedge.plan.devices import TARGETS
from sfedge.plan.report import load_model, make_plan, settings_for


def _plan(capsys, *argv) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_checkpoint_preset_and_engines_count_the_same_tokens(capsys, tiny_vl3_dir, vl3_engines_fp32):
    """The tiny checkpoint (--model) and its export (--engines) count the same visual tokens (budget
    64 x 784 px over 10 frames: 6 merged tokens each) and the same template + timestamp text; the
    presets use the same tokenizer and template, so their text count is the same too."""
    args = ("--target", "orin-nano-8gb", "--frames", "10")
    eng = _plan(capsys, "--engines", str(vl3_engines_fp32), *args)
    ckpt = _plan(capsys, "--model", str(tiny_vl3_dir), "--precision", "fp32", *args)
    for key in ("frames", "slowfast", "visual_tokens", "text_tokens", "prefill_tokens", "pruned"):
        assert eng["settings"][key] == ckpt["settings"][key], key
    assert eng["settings"]["visual_tokens"] == 60 and eng["settings"]["slowfast"] == "video budget"
    kv = [ln for ln in eng["lines"] if ln["item"].startswith("KV")]
    assert kv == [ln for ln in ckpt["lines"] if ln["item"].startswith("KV")]
    # the engines now carry the source checkpoint's geometry: the prefill floor and activations appear
    assert "prefill" in eng["speed"]["floors_ms"] and "vision" not in eng["speed"]["floors_ms"]
    assert any("vision graph's FLOPs" in n for n in eng["notes"])
    # pruning as an assumption: the first frame whole, half of each later frame's 6 tokens
    pruned = _plan(capsys, "--engines", str(vl3_engines_fp32), *args, "--pruned", "0.5")
    assert pruned["settings"]["visual_tokens"] == 6 + 9 * 3 and pruned["settings"]["pruned"] == 0.5
    preset = _plan(capsys, "--preset", "videollama3-2b", *args)
    assert preset["settings"]["text_tokens"] == eng["settings"]["text_tokens"]
    # the presets' budget: 28*28*768 px over 10 frames -> 76 merged tokens per frame
    assert preset["settings"]["visual_tokens"] == 760


def test_computed_sizes_match_the_tiny_export(vl3_engines_fp32):
    """The geometry path the presets take (SigLIP + projector, Qwen2 with q/k/v biases), applied to the
    tiny checkpoint's config, against the files the export wrote."""
    info, _ = load_model(engines=str(vl3_engines_fp32), device="cpu")
    assert info.config is not None and info.family.name == "video_llama_3"
    computed = model.computed_file_bytes(model.from_config("x", info.config, "fp32", "cpu"),
                                         info.manifest["model"]["max_length"])
    llm_dir = (vl3_engines_fp32 / info.manifest["components"]["llm"]["path"]).parent
    # the builder drops all-zero biases (onnxruntime_genai builders/base.py: count_nonzero(q_proj.bias) > 0)
    # and random checkpoints' biases are zero; real Qwen2.5 ones are not, so the plan counts them
    g = info.geometry
    biases = g.layers * (g.heads * g.head_dim + 2 * g.kv_heads * g.head_dim) * 4
    assert computed["llm"] - biases == (llm_dir / "model.onnx.data").stat().st_size
    assert computed["embeddings"] == pytest.approx(info.file_bytes["embeddings"], abs=256)  # .npy header
    # vision: the exporter stores identical tensors once (all-ones norms, zero biases of a random
    # checkpoint: 800 of 42272 parameters at the tiny width, far fewer at so400m widths)
    data = (vl3_engines_fp32 / "vision.onnx.data").stat().st_size
    assert data <= computed["vision"] <= 1.025 * data, (computed["vision"], data)


def test_7b_weights_and_kv_by_hand():
    """Qwen2.5-7B (28 layers, hidden 3584, 28 heads / 4 KV heads of 128, MLP 18944, vocab 152064, untied)."""
    L, h, kvd, m, V, ctx = 28, 3584, 4 * 128, 18944, 152064, 4096
    matmuls = L * (2 * h * h + 2 * h * kvd + 3 * h * m) + V * h  # q, o, k, v, gate / up / down, lm_head
    small = (2 * L + 1) * h + 2 * ctx * 64 + L * (h + 2 * kvd)  # norms, rotary cos / sin, q / k / v biases
    for precision, device, per_param, io in (("fp32", "cpu", 4, 4), ("fp16", "cuda", 2, 2),
                                             ("int4", "cuda", 0.5 + 2 / 32, 2), ("int4", "cpu", 0.5 + 4 / 32, 4)):
        info = model.from_preset("videollama3-7b", precision, device)
        sizes = model.computed_file_bytes(info, ctx)
        assert sizes["llm"] == pytest.approx(matmuls * per_param + small * io, rel=1e-12), precision
        assert sizes["embeddings"] == V * h * io
        s = settings_for(info, max_context=ctx)
        kv = next(ln for ln in budget.memory_lines(info, TARGETS["h200"], s) if ln["item"].startswith("KV"))
        assert kv["bytes"] == L * 4 * 128 * 2 * io * ctx  # layers x KV heads x head_dim x (K, V) x dtype
    # SigLIP so400m/14 (27 layers, 1152 / 4304) + projector 1152 -> 3584 -> 3584
    h_v, m_v = 1152, 4304
    vision = 3 * 14 * 14 * h_v + h_v + 27 * (4 * (h_v * h_v + h_v) + 4 * h_v + 2 * h_v * m_v + m_v + h_v) + 2 * h_v
    assert model.computed_file_bytes(model.from_preset("videollama3-7b", "fp16", "cuda"), ctx)["vision"] == \
        2 * (vision + h_v * h + h + h * h + h)


@pytest.mark.parametrize("preset", ["videollama3-2b", "videollama3-7b"])
def test_presets_answer_on_every_precision(preset):
    for target in (TARGETS["orin-nano-8gb"], TARGETS["h200"]):
        for precision in model.PRECISIONS:
            info, mk = load_model(preset=preset, precision=precision, device="cuda")
            plan = make_plan(info, target, settings_for(info), mk)
            assert plan["settings"]["frames"] == 180 and plan["settings"]["visual_tokens"] == 180 * 4
            assert plan["device_bytes"] > 0 and plan["speed"]["expected_decode_tokens_per_s"] > 0
            json.dumps(plan)
            if not plan["fits"]:
                assert any(lv["lever"].startswith("--pruned") for lv in plan["levers"])


def test_cli_errors_and_no_torch(capsys):
    assert main(["plan", "--preset", "sf-llava-7b", "--target", "h200", "--pruned", "0.5"]) == 2
    assert "prune no visual tokens" in capsys.readouterr().err
    assert main(["plan", "--preset", "videollama3-2b", "--target", "h200", "--pruned", "1"]) == 2
    assert "--pruned must be in [0, 1)" in capsys.readouterr().err
    code = ("import sys; from sfedge.cli import main; "
            "rc = main(['plan', '--preset', 'videollama3-7b', '--target', 'agx-orin-32gb', '--precision', 'int4']); "
            "print([m for m in ('torch', 'transformers') if m in sys.modules], rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[] 0"
