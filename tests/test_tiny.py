"""The tiny checkpoint: loadable by transformers, deterministic, tokenizer parity, resolve_model, CLI."""

from __future__ import annotations

import hashlib
import json

import pytest

from sfedge.cli import main
from sfedge.errors import SfedgeError
from sfedge.models.tiny import make_tiny, resolve_model
from sfedge.prompts import build_prompt

PROMPTS = [
    build_prompt("What is happening in the video?"),
    build_prompt("Which shape moves left?", ["the red circle", "the blue square", "nothing"]),
    build_prompt("Describe it.", None, "chatml"),
    "In the video, a man throws a ball.\n\nUnseen wörds: zebra 42 $%!",
]


def _digests(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_files_and_geometry(tiny_dir):
    from transformers import AutoConfig

    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    cfg = AutoConfig.from_pretrained(tiny_dir)
    v, t = cfg.vision_config, cfg.text_config
    assert (v.image_size, v.patch_size, v.num_hidden_layers) == (336, 14, 3)
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (-2, "default")
    assert t.model_type == "llama" and t.max_position_embeddings == 4096
    assert (t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (4, 2, 16)


def test_mistral_variant(tiny_mistral_dir):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny_mistral_dir).text_config.model_type == "mistral"


def test_loads_in_transformers(tiny_dir):
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert tok.is_fast
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert model.config.text_config.vocab_size == len(tok)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_transformers_and_tokenizers_agree(tiny_dir, prompt):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_dir)
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    ids = hf(prompt).input_ids
    assert ids == raw.encode(prompt).ids
    assert ids[0] == hf.bos_token_id and ids.count(hf.bos_token_id) == 1
    assert raw.encode("<image>", add_special_tokens=False).ids == [hf.convert_tokens_to_ids("<image>")]
    if prompt.isascii():  # printable ASCII round-trips
        assert hf.decode(ids, skip_special_tokens=True) == raw.decode(ids) == prompt.replace("<image>", "")


def test_same_seed_same_bytes(tiny_dir, tmp_path):
    again = make_tiny(tmp_path / "again", seed=0, llm="llama")
    assert _digests(again) == _digests(tiny_dir)
    other = make_tiny(tmp_path / "other", seed=1, llm="llama")
    assert _digests(other)["model.safetensors"] != _digests(tiny_dir)["model.safetensors"]
    assert _digests(other)["tokenizer.json"] == _digests(tiny_dir)["tokenizer.json"]


def test_bad_llm_is_refused(tmp_path):
    with pytest.raises(SfedgeError):
        make_tiny(tmp_path / "x", llm="gpt2")


def test_resolve_model(tiny_dir, tmp_path):
    from sfedge.cache import cache_dir

    path = resolve_model("tiny")
    assert path == cache_dir() / "tiny-llama-s0"
    assert _digests(path) == _digests(tiny_dir)
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny") == path and (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert resolve_model(str(tiny_dir)) == tiny_dir
    with pytest.raises(SfedgeError, match="config.json"):
        resolve_model(tmp_path)
    with pytest.raises(SfedgeError):
        resolve_model("no/such/model")


def test_make_tiny_command(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["make-tiny", str(out), "--seed", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["path"] == str(out) and info["seed"] == 3 and (out / "config.json").exists()
    assert main(["make-tiny", str(out)]) == 2  # refuses a non-empty OUT
    assert "not empty" in capsys.readouterr().err
    assert main(["make-tiny", str(out), "--force", "--llm", "mistral"]) == 0
    assert json.loads((out / "config.json").read_text())["text_config"]["model_type"] == "mistral"
