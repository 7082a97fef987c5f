"""The LLM decoder: onnxruntime-genai's model builder on the checkpoint's language model.

Steps (each keeps RAM near one copy of the weights at most):

1. `save_text_checkpoint`: the LLaVA checkpoint's text model as a standalone Llama / Mistral HF
   checkpoint in a scratch directory, streamed shard by shard with safetensors (one shard in RAM at
   a time), with its tokenizer; the token-embedding table goes to OUT/embeddings.npy on the way.
2. `run_builder`: `python -m onnxruntime_genai.models.builder` in a subprocess (offline,
   `exclude_embeds=true`, so the graph takes `inputs_embeds`); the subprocess holds the weights
   while this process holds nothing big, and returns all its memory when it ends. int4 for the
   CPU is the builder's fp32 decoder quantised one weight at a time (`quantize.py`: the builder's
   own int4 result, byte for byte, without its whole-graph fp32 copy in RAM).
3. `logits_for_last_position`: a Slice before `lm_head`, so the graph returns the logits of the last
   position only ([B, 1, V]): a prefill of 3,780 tokens would otherwise spend 2% (7B) to 16% (small
   LLMs) of its time and a [S, V] buffer (242 MB for Vicuna-7B in fp16) on logits nobody reads.
4. `describe_llm`: the decoder's I/O read back from the graph and its genai_config.json, in the
   manifest's words (names, dtypes, KV-cache layout, shared past/present buffer).

Precision mapping (what is built, recorded per component in the manifest):

    requested  device  builder precision  why
    fp32       any     fp32               -
    fp16       cuda    fp16               GroupQueryAttention, fp16 I/O
    fp16       cpu     fp32               the builder's fp16 CPU graph swaps GQA for MultiHeadAttention
                                          without a shared KV buffer and needs position_ids; ORT's
                                          CPU kernels gain nothing from fp16. fp16 on CPU therefore
                                          means fp16 vision + slowfast and an fp32 LLM.
    int4       any     int4               MatMulNBits, RTN symmetric, block 32; I/O fp32 on cpu,
                                          fp16 on cuda; accuracy_level 4 (int8 activations) on cpu
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import SfedgeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "chat_template.json", "chat_template.jinja")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# checkpoint key prefix -> text-model key prefix (llava-hf hub layout, then transformers 5's own)
_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
             ("model.language_model.", "model."), ("lm_head.", "lm_head."))
EMBED_KEY = "model.embed_tokens.weight"
INT4_BLOCK_SIZE = 32


def builder_precision(precision: str, device: str) -> str:
    """The precision the builder is asked for (see the module docstring's table)."""
    return "fp32" if (precision, device) == ("fp16", "cpu") else precision


def io_dtype(precision: str, device: str) -> str:
    """The decoder's inputs_embeds / logits / KV dtype, as the builder chooses it (fp16 on cuda for
    fp16 and int4, else fp32); embeddings.npy is stored in the same dtype."""
    return "float16" if device == "cuda" and precision in ("fp16", "int4") else "float32"


def quantization(precision: str, device: str) -> dict | None:
    """The int4 settings passed to the builder (and recorded in the manifest)."""
    if precision != "int4":
        return None
    return {"method": "rtn", "op": "MatMulNBits", "bits": 4, "block_size": INT4_BLOCK_SIZE,
            "symmetric": True, "accuracy_level": 4 if device == "cpu" else 0,
            "scope": "every decoder MatMul incl. lm_head; embeddings, norms and KV cache unquantized"}


def weight_files(ckpt: Path) -> list[Path]:
    """The checkpoint's safetensors files, in index order."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [ckpt / n for n in names]
    single = ckpt / "model.safetensors"
    if single.is_file():
        return [single]
    raise SfedgeError(f"{ckpt}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)")


def _text_key(key: str) -> str | None:
    for src, dst in _PREFIXES:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def text_context(ckpt: Path, max_context: int | None) -> dict:
    """The manifest's `context` block: the context the decoder is built for (`max_context`, default
    min(4096, max_position_embeddings)), the checkpoint's own, and the RoPE parameters the builder
    gets (`sfedge.context.rope_for_context`). SfedgeError for a context outside 1 .. the checkpoint's."""
    from transformers import AutoConfig

    from ..context import resolve_max_context, rope_for_context

    text = AutoConfig.from_pretrained(ckpt).text_config.to_dict()
    own = int(text["max_position_embeddings"])
    context = resolve_max_context(max_context, own)
    rope = text.get("rope_parameters") or text.get("rope_scaling")
    builder_rope, why = rope_for_context(rope, own, context)
    return {"max_context": context, "checkpoint_max_position_embeddings": own,
            "rope": {"checkpoint": rope, "builder": builder_rope, "why": why}}


def save_text_checkpoint(ckpt: Path, dst: Path, embeddings_path: Path, embeddings_dtype: str,
                         progress=None, context: dict | None = None) -> dict:
    """Write the text model of a LLaVA-NeXT checkpoint as an HF causal-LM checkpoint in dst, and its
    token-embedding table [V, D] as embeddings_path (.npy, `embeddings_dtype`). Returns the text config.
    `context` (`text_context`): its max_context becomes the config's max_position_embeddings (the
    builder sizes the KV cache and the rotary caches by it) and its builder RoPE replaces the
    checkpoint's."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(ckpt).text_config
    if text.model_type not in ARCHITECTURES:
        raise SfedgeError(f"{ckpt}: text model type {text.model_type!r} is not supported (only {sorted(ARCHITECTURES)})")
    dst.mkdir(parents=True, exist_ok=True)
    config = text.to_dict()
    config["architectures"] = [ARCHITECTURES[text.model_type]]
    if context is not None:
        config["max_position_embeddings"] = context["max_context"]
        config.pop("rope_scaling", None)
        if context["rope"]["builder"] is not None:
            config["rope_parameters"] = context["rope"]["builder"]
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    weight_map: dict[str, str] = {}
    for shard in weight_files(ckpt):
        with safe_open(str(shard), framework="pt") as f:
            tensors = {new: f.get_tensor(k) for k in f.keys() if (new := _text_key(k))}
        if EMBED_KEY in tensors:
            table = tensors[EMBED_KEY].to(torch.float32).numpy().astype(embeddings_dtype)
            np.save(embeddings_path, table)
            del table
        if tensors:
            save_file(tensors, str(dst / shard.name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shard.name))
        del tensors
        if progress:
            progress.update(1)
    if EMBED_KEY not in weight_map or ("lm_head.weight" not in weight_map and not config.get("tie_word_embeddings")):
        raise SfedgeError(f"{ckpt}: no language-model weights found (expected keys like language_model.model.*)")
    if set(weight_map.values()) != {"model.safetensors"}:  # sharded: transformers needs the index
        (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    copy_tokenizer(ckpt, dst)
    return config


def copy_tokenizer(ckpt: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files that exist; a checkpoint without tokenizer.json gets one converted
    from its tokenizer.model as transformers 4.x did (`spm_convert`), else written by transformers'
    tokenizer (the runtime reads tokenizer.json with `tokenizers`; the guard checks either)."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (ckpt / name).is_file():
            shutil.copy2(ckpt / name, dst / name)
            copied.append(name)
    if "tokenizer.json" not in copied:
        if "tokenizer.model" in copied:
            from .spm_convert import convert

            convert(ckpt, dst)
        else:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(ckpt).save_pretrained(dst)
        copied = sorted(p.name for p in dst.iterdir())
    return copied


def run_builder(text_dir: Path, out_dir: Path, precision: str, device: str, log_path: Path) -> None:
    """onnxruntime-genai's builder in a subprocess, offline, writing out_dir/model.onnx(.data) and
    genai_config.json. Its output goes to log_path; a failure raises with the log's tail.

    int4 for the CPU: the builder writes the fp32 decoder beside text_dir, then `quantize` (another
    subprocess) makes the builder's own int4 decoder from it one weight at a time; the builder's
    int4 CPU path would hold the whole fp32 decoder in RAM (~2.9x the LLM's fp16 size). The fp32
    copy takes twice the LLM's fp16 size on disk while it lasts."""
    if (precision, device) == ("int4", "cpu"):
        q = quantization(precision, device)
        fp32_dir = text_dir.parent / "llm-fp32"
        run_builder(text_dir, fp32_dir, "fp32", device, log_path)
        _run_logged([sys.executable, "-m", "sfedge.export.quantize", str(fp32_dir), str(out_dir),
                     str(q["block_size"]), str(q["accuracy_level"])], log_path, out_dir, "int4 quantization")
        shutil.rmtree(fp32_dir, ignore_errors=True)
        return
    _run_logged(builder_command(text_dir, out_dir, precision, device), log_path, out_dir, "onnxruntime-genai builder")
    shutil.rmtree(text_dir / ".builder-cache", ignore_errors=True)


# `python -m onnxruntime_genai.models.builder`, after `import sfedge`: the builder imports transformers,
# which imports torchvision when it is installed; sfedge's torchvision_compat must be in place first
# (PyPI's torchvision does not import beside the CPU torch without it: sfedge/torchvision_compat.py)
BUILDER = (sys.executable, "-c", "import runpy, sfedge; "
           "runpy.run_module('onnxruntime_genai.models.builder', run_name='__main__', alter_sys=True)")


def builder_command(text_dir: Path, out_dir: Path, precision: str, device: str) -> list[str]:
    """The builder's command line for `precision` on `device` (its own int4 path included)."""
    # shared_embeddings off: with exclude_embeds there is no embedding in the graph to share with
    # lm_head (tied checkpoints such as Qwen2.5-1.5B get their own lm_head MatMul)
    options = ["exclude_embeds=true", "shared_embeddings=false"]
    q = quantization(precision, device)
    if q:
        options += [f"block_size={q['block_size']}", f"accuracy_level={q['accuracy_level']}", "is_symmetric=true"]
    return [*BUILDER, "-i", str(text_dir), "-o", str(out_dir),
            "-p", builder_precision(precision, device), "-e", device, "-c", str(text_dir / ".builder-cache"),
            "--extra_options", *options]


def _run_logged(cmd: list[str], log_path: Path, out_dir: Path, what: str) -> None:
    """Run `cmd` offline, its output appended to log_path; SfedgeError with the log's tail unless it
    exits 0 having written out_dir/model.onnx."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(log_path, "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0 or not (out_dir / "model.onnx").is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise SfedgeError(f"{what} failed (exit {rc}): {' | '.join(tail)}")


def logits_for_last_position(llm_dir: Path) -> None:
    """Rewrite llm_dir/model.onnx so that `lm_head` sees only the last position: insert
    Slice(hidden, starts=-1, ends=MAX, axes=1) on its input and declare `logits` as
    [batch_size, 1, vocab]. Only the graph proto changes: the weights' external data is untouched."""
    import onnx
    from onnx import helper, numpy_helper

    path = llm_dir / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    heads = [n for n in graph.node if n.name.startswith("/lm_head/") and n.op_type.startswith("MatMul")]
    if len(heads) != 1:
        raise SfedgeError(f"{path}: expected one lm_head MatMul in the builder's graph, found {len(heads)}")
    head = heads[0]
    consts = {"starts": [-1], "ends": [np.iinfo(np.int64).max], "axes": [1]}
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"/lm_head/last_{name}"))
    sliced = "/lm_head/last_position_output_0"
    graph.node.insert(list(graph.node).index(head), helper.make_node(
        "Slice", [head.input[0], *(f"/lm_head/last_{k}" for k in consts)], [sliced], name="/lm_head/last_position"))
    head.input[0] = sliced
    logits = next(o for o in graph.output if o.name == "logits")
    dim = logits.type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = 1
    onnx.save(model, str(path))


def describe_llm(llm_dir: Path, rel_dir: str, precision: str, device: str) -> dict:
    """The manifest's `components.llm`: graph I/O read back from llm/model.onnx, KV cache contract from
    genai_config.json (names as printf patterns over the layer index, shared buffer flag)."""
    import onnx

    from .graphs import read_io

    graph_path = llm_dir / "model.onnx"
    inputs, outputs = read_io(graph_path)
    genai = json.loads((llm_dir / "genai_config.json").read_text())
    dec, search = genai["model"]["decoder"], genai["search"]
    max_len = int(genai["model"]["context_length"])
    ops = {n.op_type for n in onnx.load(str(graph_path), load_external_data=False).graph.node}
    ranges = {"batch_size": [1, 1], "sequence_length": [1, max_len], "past_sequence_length": [0, max_len],
              "total_sequence_length": [1, max_len], "kv_cache_dim": [dec["head_size"], dec["head_size"]]}
    for io in inputs + outputs:
        io["dynamic"] = {d: ranges[d] for d in io["shape"] if isinstance(d, str) and d in ranges}
    kv_dtype = next(io["dtype"] for io in inputs if io["name"].startswith("past_key_values."))
    return {
        "path": f"{rel_dir}/model.onnx",
        "genai_config": f"{rel_dir}/genai_config.json",
        "builder": "onnxruntime-genai model builder, exclude_embeds=true",
        "precision": builder_precision(precision, device),
        "execution_provider": device,
        "inputs": inputs,
        "outputs": outputs,
        "attention": "GroupQueryAttention" if "GroupQueryAttention" in ops else "MultiHeadAttention",
        "quantized_matmul": "MatMulNBits" in ops,
        "position_ids": any(io["name"] == "position_ids" for io in inputs),
        "kv_cache": {
            "past_key": dec["inputs"]["past_key_names"], "past_value": dec["inputs"]["past_value_names"],
            "present_key": dec["outputs"]["present_key_names"], "present_value": dec["outputs"]["present_value_names"],
            "layout": ["batch_size", "num_kv_heads", "sequence", "head_dim"],
            "num_layers": dec["num_hidden_layers"], "num_kv_heads": dec["num_key_value_heads"],
            "head_dim": dec["head_size"], "dtype": kv_dtype, "max_length": max_len,
            "past_present_share_buffer": bool(search.get("past_present_share_buffer", False)),
        },
    }


def build_decoder(ckpt: Path, root: Path, precision: str, device: str, context: dict,
                  on_stage=lambda name: None) -> tuple[dict, dict, str]:
    """The LLM part of every family's export: the text checkpoint streamed out shard by shard (its
    embedding table to root/embeddings.npy), the builder's decoder in root/llm (logits for the last
    position only) and the greedy step beside it. Returns (the llm component, the greedy_step
    component, the embeddings' dtype). `on_stage(name)` is called as the builder starts."""
    import tempfile

    from ..errors import ValidationError
    from .leftovers import scratch_prefix
    from .step import export_step

    emb_dtype = io_dtype(precision, device)
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(".sfedge-text"), dir=root.parent) as scratch:
        scratch = Path(scratch)
        save_text_checkpoint(ckpt, scratch / "text", root / "embeddings.npy", emb_dtype, context=context)
        on_stage("LLM builder")
        run_builder(scratch / "text", root / "llm", precision, device, scratch / "builder.log")
    logits_for_last_position(root / "llm")
    llm = describe_llm(root / "llm", "llm", precision, device)
    if llm["kv_cache"]["max_length"] != context["max_context"]:
        raise ValidationError(f"the builder made a decoder for {llm['kv_cache']['max_length']} positions, "
                              f"not the requested {context['max_context']}")
    logits_dtype = next(io["dtype"] for io in llm["outputs"] if io["name"] == "logits")
    return llm, export_step(root, logits_dtype, emb_dtype), emb_dtype
