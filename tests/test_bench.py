"""`sfedge bench`: statistics and roofline formulas against hand-computed values, the report, and a
CLI smoke test on tiny engines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sfedge.bench import roofline
from sfedge.bench.memory import PeakMonitor
from sfedge.bench.report import format_table, plot
from sfedge.bench.runner import STAGES, reference_dtype
from sfedge.bench.stats import ratio, summarize, summarize_runs

TOY = dict(v_hidden=2, v_mlp=4, v_layers_used=1, patches=4, patch_dim=588,
           hidden=4, mlp=8, layers=1, heads=2, kv_heads=1, head_dim=2, vocab=10)


def test_summarize():
    assert summarize([3, 1, 2]) == {"median": 2, "min": 1, "max": 3, "n": 3}
    assert summarize([4, 1])["median"] == 2.5
    runs = summarize_runs([{"a": 1, "b": 5}, {"a": 3}])
    assert runs["a"]["median"] == 2 and runs["b"]["n"] == 1
    with pytest.raises(ValueError):
        summarize([])
    assert ratio(10, 5) == 2 and ratio(None, 5) is None and ratio(1, 0) is None


def test_geometry_from_config():
    cfg = {"vision_config": {"hidden_size": 2, "intermediate_size": 4, "num_hidden_layers": 2, "image_size": 28,
                             "patch_size": 14},
           "text_config": {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "num_key_value_heads": 1, "vocab_size": 10},
           "vision_feature_layer": -2}
    assert roofline.Geometry.from_config(cfg) == roofline.Geometry(**TOY)


def test_flops_by_hand():
    g = roofline.Geometry(**TOY)
    # q,o: 4*2*2 each; k,v: 4*1*2 each; mlp 3*4*8  -> 144 per layer
    assert g.llm_linear_params == 144
    # 2*3*144 linear + 2*3^2*2*2*1 causal attention + 2*4*10 lm_head
    assert roofline.prefill_flops(g, 3) == 864 + 72 + 80
    # patch embed 2*4*588*2 + layer (2*5*(4*4 + 2*2*4) + 4*25*2) + projector 2*4*(2*4 + 4*4)
    assert roofline.vision_flops_per_frame(g) == 9408 + 520 + 192
    assert roofline.kv_bytes(g, 10, 2) == 2 * 1 * 1 * 2 * 10 * 2
    assert g.llm_weight_bytes(2) == (144 + 40) * 2


def test_real_sizes_match_peers():
    """PEERS.md: CLIP-L/336 ~0.35 TFLOP/frame (the tower; + projector), 7B prefill of 3780 tokens
    ~53 TFLOP, 7B fp16 ~13.5 GB read per token."""
    from sfedge.models.presets import preset_config

    g = roofline.Geometry.from_config(preset_config("sf-llava-7b").to_dict())
    assert g.v_layers_used == 23
    assert 0.36e12 < roofline.vision_flops_per_frame(g) < 0.40e12
    assert 52e12 < roofline.prefill_flops(g, 3780) < 54e12
    assert 13.0e9 < g.llm_weight_bytes(2) < 13.6e9


def test_floors():
    g = roofline.Geometry(**TOY)
    ceil = {"bandwidth_GBps": 1e-9, "matmul_TFLOPs": 1e-12}  # 1 byte/s, 1 FLOP/s
    f = roofline.floors_ms(g, ceil, frames=2, prefill_tokens=3, new_tokens=4, weight_bytes=100, act_bytes=2)
    assert f["vision"] == 1e3 * 2 * 10120
    assert f["prefill"] == 1e3 * 1016
    assert f["slowfast"] == 1e3 * 2 * 4 * 4 * 2
    assert f["decode_ms_per_token"] == 1e3 * (100 + roofline.kv_bytes(g, 3 + 2, 2))
    assert set(roofline.floors_ms(None, ceil, frames=2, prefill_tokens=3, new_tokens=4, weight_bytes=100,
                                  act_bytes=2)) == {"decode_ms_per_token"}


def test_measure_cpu_ceilings():
    c = roofline.measure_cpu(copy_mb=16, gemm_n=256, repeats=2)
    assert c["bandwidth_GBps"] > 0.1 and c["matmul_TFLOPs"] > 1e-4


def test_peak_monitor_sees_an_allocation():
    """A 64 MiB block alive for ~10 polls, freed inside the block: the peak stays above what the
    process holds afterwards. The block is an anonymous mapping of its own (malloc could hand back
    heap pages that earlier tests left resident, which RSS would not see), and the comparison is
    with the after-state, so memory freed meanwhile cannot hide it."""
    import mmap
    import time

    import psutil

    with PeakMonitor() as mon:
        block = mmap.mmap(-1, 64 * 2**20)
        block.write(b"x" * len(block))  # touch every page
        time.sleep(0.05)
        block.close()  # unmapped: RSS drops
    assert mon.peak_rss_mb >= psutil.Process().memory_info().rss / 2**20 + 48
    assert mon.peak_gpu_mb is None


def test_reference_dtype():
    assert reference_dtype("fp16", on_cuda=True) == "float16"
    assert reference_dtype("int4", on_cuda=True) == "float16"
    assert reference_dtype("fp16", on_cuda=False) == "float32"
    assert reference_dtype("fp32", on_cuda=True) == "float32"


def _fake_report():
    stage = {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    side = {"stages_ms": {k: stage for k in STAGES}, "tokens_per_s": 500.0, "new_tokens": 4, "peak_rss_mb": 100.0,
            "peak_gpu_mb": None, "floors_ms": {"vision": 1.0}, "floor_fraction": {"vision": 0.5}}
    return {"engines": "/x/tiny", "provider": "cpu", "precision": "fp32", "frames": 3, "visual_tokens": 2928,
            "prefill_tokens": 2990, "new_tokens": 4, "runs": 3, "warmup": 1,
            "ceilings": {"device": "cpu", "bandwidth_GBps": 10.0, "matmul_TFLOPs": 0.1, "how": "test"},
            "engine": side, "reference": side, "speedup": {k: 1.0 for k in STAGES}}


def test_table_and_plot(tmp_path):
    text = format_table(_fake_report())
    assert "2.0 (1.0-3.0)" in text and "1.00x" in text and "50%" in text
    png = plot(_fake_report(), tmp_path / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tiny_engines(tmp_path_factory, tiny_dir):
    try:
        from sfedge.export import export_model
        import sfedge.runtime.pipeline  # noqa: F401
    except ImportError as e:
        pytest.skip(f"needs sfedge.export.export_model and sfedge.runtime.pipeline ({e})")
    out = tmp_path_factory.mktemp("engines") / "tiny-fp32"
    export_model(tiny_dir, out, precision="fp32", device="cpu", validate=False, progress=False)
    return out


@pytest.mark.slow
def test_cli_smoke(tmp_path_factory, tiny_dir, tmp_path):
    engines = _tiny_engines(tmp_path_factory, tiny_dir)
    cmd = [sys.executable, "-m", "sfedge", "bench", str(engines), "--frames", "3", "--new-tokens", "4", "--runs", "1",
           "--warmup", "0", "--model", str(tiny_dir), "--json", "--plot", str(tmp_path / "b.png")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["frames"] == 3 and report["new_tokens"] == 4
    for side in ("engine", "reference"):
        assert report[side]["new_tokens"] == 4
        assert set(report[side]["stages_ms"]) == set(STAGES)
        assert all(v["min"] >= 0 for v in report[side]["stages_ms"].values()), report[side]["stages_ms"]
        assert report[side]["stages_ms"]["decode_ms_per_token"]["median"] > 0
        assert report[side]["peak_rss_mb"] > 0
        assert 0 < report[side]["floor_fraction"]["prefill"] <= 1.5
    assert report["speedup"]["e2e"] > 0
    # fp32 engines and the fp32 reference on the tiny model: the same greedy tokens (EOS ignored)
    assert report["token_agreement"] == {"compared": 4, "equal_prefix": 4, "first_diff_step": None}
    assert (tmp_path / "b.png").is_file()
