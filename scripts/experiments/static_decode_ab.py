"""CPU decode ms/token: the static-shape decode loop (this branch's generate.py: one IOBinding bound once,
[1, max_length] mask written in place) against the per-step rebinding loop it replaced (generate.py at
commit 58aa9dc, loaded beside it), side by side in one process on ONE LLM session (the same weights),
alternating A/B per round.

The LLM: a random Llama made here, vocab 32064, `--geometry cpu` (hidden 1024, 16 layers, 16 heads / 4 KV
heads, head_dim 64, MLP 2816: the `sf-llava-cpu` preset's LLM) or `small` (hidden 256, 4 layers, 4 / 2
heads, MLP 704), exported by onnxruntime-genai's builder with sfedge's last-position slice, fp32
(GroupQueryAttention, shared KV buffer), context 4096. Then the greedy step's own cost per token.

    PYTHONPATH=$PWD python scripts/experiments/static_decode_ab.py [--geometry cpu] [--rounds 7] [--new 64] [--prompts 256 2048]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BEFORE = "58aa9dc"


def load_before(repo: Path):
    src = subprocess.run(["git", "-C", str(repo), "show", f"{BEFORE}:sfedge/runtime/generate.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "generate_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("sfedge.runtime.generate_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


GEOMETRY = {  # hidden, layers, heads, KV heads, MLP
    "cpu": (1024, 16, 16, 4, 2816),  # the sf-llava-cpu preset's LLM: decode is bandwidth-bound (~1 GB fp32 per token)
    "small": (256, 4, 4, 2, 704),  # per-step overhead (binding, sessions, sync) is a visible share of the step
}


def build(out: Path, max_length: int, precision: str, geometry: str) -> Path:
    import torch
    from onnxruntime_genai.models.builder import create_model, parse_extra_options
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from sfedge.export.llm import logits_for_last_position
    from sfedge.models.tiny import train_tokenizer

    ckpt = out / "ckpt"
    hidden, layers, heads, kv_heads, mlp = GEOMETRY[geometry]
    config = LlamaConfig(vocab_size=32064, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_length,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(ckpt)
    PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(), bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(ckpt)  # the builder copies a tokenizer
    np.save(out / "table.npy", LlamaForCausalLM.from_pretrained(ckpt).model.embed_tokens.weight.detach().numpy())
    llm = out / precision
    options = parse_extra_options(None, str(ckpt), str(llm), precision, "cpu", str(out / "cache"), ["exclude_embeds=true"])
    create_model(None, str(ckpt), str(llm), precision, "cpu", str(out / "cache"), **options)
    logits_for_last_position(llm)
    return llm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompts", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--geometry", choices=GEOMETRY, default="cpu")
    args = ap.parse_args()
    from sfedge.export.step import export_step
    from sfedge.runtime import generate as after
    from sfedge.runtime.engines import OrtEngine
    from sfedge.spec import GenerationSpec

    before = load_before(Path(__file__).resolve().parents[2])
    out = Path(tempfile.mkdtemp(prefix="static-decode-ab-"))
    llm = build(out, args.max_length, args.precision, args.geometry)
    hidden, layers, heads, kv_heads, _ = GEOMETRY[args.geometry]
    table = np.load(out / "table.npy")
    engine = OrtEngine(llm / "model.onnx")
    step = export_step(llm, np.dtype(engine.outputs["logits"].dtype).name, np.dtype(engine.inputs["inputs_embeds"].dtype).name)
    kv = [(f"past_key_values.{i}.{k}", f"present.{i}.{k}") for i in range(layers) for k in ("key", "value")]
    kw = dict(kv_names=kv, num_kv_heads=kv_heads, head_dim=hidden // heads, max_length=args.max_length, shared=True)
    decs = {"before": (before, before.Decoder(engine, table, llm / step["path"], **kw)),
            "after": (after, after.Decoder(engine, table, llm / step["path"], **kw))}
    gen = GenerationSpec(max_new_tokens=args.new, ignore_eos=True)
    rng = np.random.default_rng(0)
    for n in args.prompts:
        embeds = table[rng.integers(3, table.shape[0], n)][None]
        ms, tokens = {k: [] for k in decs}, {}
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                mod, dec = decs[name]
                it = mod.generate(dec, embeds, gen, set())
                got = [next(it)]
                t = time.perf_counter()
                got += list(it)
                if r:  # round 0 warms up
                    ms[name].append((time.perf_counter() - t) * 1e3 / (len(got) - 1))
                tokens[name] = got
        assert tokens["before"] == tokens["after"], "the two loops disagree"
        b, a = statistics.median(ms["before"]), statistics.median(ms["after"])
        for name, v in ms.items():
            print(f"prompt {n}: {name:6s} decode {statistics.median(v):.2f} ms/token (min {min(v):.2f}, max {max(v):.2f}; "
                  f"{args.new - 1} steps x {args.rounds - 1} rounds)")
        print(f"prompt {n}: after / before = {a / b:.3f}; tokens identical ({len(tokens['after'])})")
    # the second session's cost per token: the greedy step (ArgMax over V + Gather, token read back)
    # alone, against the LLM's decode step alone, on the last prompt's state
    dec = decs["after"][1]
    step, llm = [], []
    for _ in range(200):
        t = time.perf_counter()
        after.next_token(dec, gen, None)
        step.append((time.perf_counter() - t) * 1e3)
    for _ in range(20):
        t = time.perf_counter()
        dec.engine.run_binding(dec.decode_binding, captured=True)  # same position each time: state unchanged
        llm.append((time.perf_counter() - t) * 1e3)
    print(f"greedy step session: {statistics.median(step):.3f} ms per token (median of 200), LLM decode step "
          f"{statistics.median(llm):.2f} ms (median of 20): {statistics.median(step) / statistics.median(llm):.1%}")


if __name__ == "__main__":
    main()
