"""--max-context: the decoder's KV cache and attention buffers sized for the job, the KV-bytes
function the README tables, RoPE handed to the builder, the overflow policy at both edges, and the
stale scratch directories a killed export leaves."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest

from sfedge.context import DEFAULT_MAX_CONTEXT, kv_cache_bytes, resolve_max_context, rope_for_context
from sfedge.errors import SfedgeError

GIB, MIB = 1 << 30, 1 << 20
# (layers, KV heads, head dim) from the published configs
MODELS = {"Vicuna-7B": (32, 32, 128), "Mistral-7B": (32, 8, 128), "Yi-34B": (60, 8, 128)}


def test_kv_cache_bytes_for_the_three_models():
    got = {name: kv_cache_bytes(*shape, DEFAULT_MAX_CONTEXT, "float16") for name, shape in MODELS.items()}
    assert [got[n]["per_token"] for n in MODELS] == [512 * 1024, 128 * 1024, 240 * 1024]
    assert [got[n]["total"] for n in MODELS] == [2 * GIB, 512 * MIB, 960 * MIB]
    assert kv_cache_bytes(*MODELS["Mistral-7B"], 32768, "float16")["total"] == 4 * GIB  # the checkpoint's own
    assert kv_cache_bytes(*MODELS["Mistral-7B"], 4096, "float32")["total"] == GIB
    with pytest.raises(ValueError):
        kv_cache_bytes(1, 1, 1, 1, "int3")


def test_context_resolution_and_rope():
    assert resolve_max_context(None, 32768) == 4096 and resolve_max_context(None, 2048) == 2048
    assert resolve_max_context(100, 32768) == 100
    for bad in (0, 32769):
        with pytest.raises(SfedgeError, match="max_position_embeddings 32768"):
            resolve_max_context(bad, 32768)
    dynamic = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    assert rope_for_context(dynamic, 4096, 4096)[0] == {"rope_type": "default", "rope_theta": 10000.0}
    linear = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert rope_for_context(linear, 4096, 4096)[0] == linear


def test_dynamic_rope_equals_plain_rope_below_the_checkpoint_context():
    """SPEC 1's claim, on transformers' own rotary embedding: dynamic NTK scaling (factor 2) gives
    the plain cos / sin at every position below max_position_embeddings."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    kw = dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=256)
    plain = LlamaRotaryEmbedding(LlamaConfig(**kw))
    dyn = LlamaRotaryEmbedding(LlamaConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, **kw))
    x, pos = torch.zeros(1, 256, 64), torch.arange(256)[None]
    for a, b in zip(plain(x, pos), dyn(x, pos)):
        assert torch.equal(a, b)


def test_a_32k_checkpoint_exports_with_the_chosen_context(engines_sp_mistral, clip_path):
    """llava-v1.6-mistral's max_position_embeddings 32,768, default --max-context: the manifest, the
    builder's config, the rotary caches in the graph and the KV buffers the running decoder
    allocated all hold 4,096 positions."""
    import json

    import onnx

    from sfedge.manifest import load_manifest
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.spec import GenerationSpec

    m = load_manifest(engines_sp_mistral)
    assert m["context"]["max_context"] == 4096 and m["context"]["checkpoint_max_position_embeddings"] == 32768
    assert m["model"]["max_length"] == 4096 and m["components"]["llm"]["kv_cache"]["max_length"] == 4096
    assert m["context"]["kv_cache"] == kv_cache_bytes(2, 2, 16, 4096, "float32")
    assert m["context"]["rope"]["builder"]["rope_type"] == "default"
    genai = json.loads((engines_sp_mistral / "llm" / "genai_config.json").read_text())
    assert genai["model"]["context_length"] == 4096
    graph = onnx.load(str(engines_sp_mistral / "llm" / "model.onnx"), load_external_data=False).graph
    assert {i.name: list(i.dims) for i in graph.initializer if i.name in ("cos_cache", "sin_cache")} == \
           {"cos_cache": [4096, 8], "sin_cache": [4096, 8]}
    pipe = Pipeline(engines_sp_mistral)
    pipe.ask(clip_path, "What is moving?", gen=GenerationSpec(max_new_tokens=2))
    shapes = {tuple(v.shape()) for v in pipe.decoder.kv.values()}  # the running decoder's KV buffers
    assert shapes == {(1, 2, 4096, 16)}


def test_max_context_above_the_checkpoint_is_refused(sp_mistral_dir, tmp_path, capsys):
    from sfedge.cli import main

    assert main(["export", str(sp_mistral_dir), str(tmp_path / "e"), "--max-context", "40000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sfedge export: error: --max-context must be between 1 and the checkpoint's "
                   "max_position_embeddings 32768, got 40000"]
    assert not any(tmp_path.iterdir())


def _kill_export_midway(ckpt, parent, timeout=300.0) -> list:
    """Start `sfedge export` in a subprocess, SIGKILL it once both its scratch directories exist,
    return them (left behind, as after a crash or an OOM kill)."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "sfedge.cli", "export", str(ckpt), str(parent / "killed"),
                             "--no-validate"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            left = sorted(parent.glob(f"killed.partial-{proc.pid}-*")) + sorted(parent.glob(f".sfedge-text-{proc.pid}-*"))
            if len(left) == 2:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return left
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pytest.fail("the export subprocess ended or timed out before both scratch directories existed")


@pytest.fixture(scope="module")
def small_context(tmp_path_factory, tiny_dir, pipeline_fp32, short_clips):
    """Tiny engines whose context holds the 3-frame prompt plus 4 positions, exported into a parent
    that holds the scratch directories of a killed export, of a live one (another process) and one
    without a process id."""
    from sfedge.export import export_model
    from sfedge.spec import GenerationSpec

    clip, question = short_clips["mp4-3"], "What is moving in the video?"
    visual = pipeline_fp32.ask(clip, question, gen=GenerationSpec(max_new_tokens=1)).num_visual_tokens
    prompt = len(pipeline_fp32.prompt_ids(question)) - 1 + visual  # one <image> id -> the visual tokens
    parent = tmp_path_factory.mktemp("small-context")
    stale = _kill_export_midway(tiny_dir, parent)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        kept = [parent / f"busy.partial-{live.pid}-live0001", parent / f".sfedge-text-{live.pid}-live0002",
                parent / "legacy.partial-nopid123"]
        for d in kept:
            (d / "sub").mkdir(parents=True)
        out = parent / "engines"
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            export_model(tiny_dir, out, validate=False, progress=False, max_context=prompt + 4)
    finally:
        live.kill()
        live.wait()
    return {"engines": out, "clip": clip, "question": question, "prompt": prompt, "stale": stale, "kept": kept,
            "said": said.getvalue()}


def test_a_killed_exports_leftovers_are_removed_and_no_live_ones(small_context):
    assert all(d.name.startswith(("killed.partial-", ".sfedge-text-")) for d in small_context["stale"])
    assert not any(d.exists() for d in small_context["stale"])
    assert all(d.exists() for d in small_context["kept"])
    said = small_context["said"].strip().splitlines()  # the export says what it removed, one line each
    assert sorted(said) == sorted(f"removed {d} (left by export process {d.name.split('-')[-2]}, which is gone)"
                                  for d in small_context["stale"]), said


def test_generation_that_reaches_the_context_stops_with_length(small_context):
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.spec import GenerationSpec

    c = small_context
    pipe = Pipeline(c["engines"])
    assert pipe.manifest["model"]["max_length"] == c["prompt"] + 4
    result = pipe.ask(c["clip"], c["question"], gen=GenerationSpec(max_new_tokens=50, ignore_eos=True))
    assert result.stop_reason == "length", result.stop_reason
    assert 1 <= len(result.token_ids) <= 5


def test_a_prompt_that_does_not_fit_is_refused_with_the_numbers(small_context):
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.spec import GenerationSpec

    c = small_context
    pipe = Pipeline(c["engines"])
    longer = c["question"] + " Describe every shape, its colour and where it goes, in order."
    with pytest.raises(SfedgeError) as e:
        pipe.ask(c["clip"], longer, gen=GenerationSpec(max_new_tokens=8))
    message = str(e.value)
    assert "\n" not in message and str(c["prompt"] + 4) in message, message


def test_a_validated_export_refuses_a_context_its_chain_cannot_fit(tiny_dir, tmp_path):
    """Validation runs the 50-frame prompt (3,680 visual tokens + text): a smaller --max-context is
    refused before anything is built, with the numbers."""
    from sfedge.export import export_model

    with pytest.raises(SfedgeError, match=r"--max-context 3000 cannot hold the validation prompt \(37\d\d tokens"):
        export_model(tiny_dir, tmp_path / "e", max_context=3000, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
