"""Test checkpoints with a real SentencePiece tokenizer, in llava-hf's layout.

The tiny model's byte-level BPE tokenizer is the same file for the reference and the runtime, so
every tokenisation path agrees by construction. These checkpoints carry a real SentencePiece
model instead (the caller passes it: the tests take Mistral-7B's `tokenizer.model.v1` from the
`mistral-common` wheel) and the files llava-hf ships beside it:

    tokenizer.model        the SentencePiece model (what LLaVA's slow tokenizer reads)
    tokenizer.json         converted from it as transformers 4.x did (`export/spm_convert.py`:
                           what llava-hf ships; what sfedge's runtime reads)
    tokenizer_config.json  llava-hf's: LlamaTokenizer, legacy, add_bos_token, added_tokens_decoder
    special_tokens_map.json

with `<image>` = 32000 and `<pad>` = 32001 added as special tokens and the embedding table padded
to 32,064 rows, as `llava-hf/llava-v1.6-mistral-7b-hf` does. Family "chatml" also adds
`<|im_start|>` / `<|im_end|>` (32002 / 32003) as special tokens: a stand-in for Yi-34B's ChatML
prompts (Yi's own tokenizer is not obtainable here). The weights are the tiny model's (random,
seeded); max_position_embeddings defaults to Mistral's 32,768.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..errors import SfedgeError
from ..spec import IMAGE_TOKEN

PADDED_VOCAB = 32064  # llava-hf pads the embedding table to a multiple of 64
FAMILIES = ("vicuna", "chatml")


def _added(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def tokenizer_config(base_vocab: int, family: str, legacy: bool = True) -> dict:
    """llava-hf's tokenizer_config.json for a SentencePiece model of `base_vocab` pieces."""
    added = {0: "<unk>", 1: "<s>", 2: "</s>", base_vocab: IMAGE_TOKEN, base_vocab + 1: "<pad>"}
    extra = []
    if family == "chatml":
        added.update({base_vocab + 2: "<|im_start|>", base_vocab + 3: "<|im_end|>"})
        extra = ["<|im_start|>", "<|im_end|>"]
    return {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added(c) for i, c in added.items()},
        "additional_special_tokens": extra, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "legacy": legacy, "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>", "padding_side": "left", "processor_class": "LlavaNextProcessor",
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False, "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>", "use_default_system_prompt": False,
    }


def write_tokenizer(out: Path, sp_model: Path, family: str, legacy: bool = True) -> dict[str, int]:
    """tokenizer.model, tokenizer_config.json, special_tokens_map.json and a tokenizer.json converted
    by transformers from the SentencePiece model; returns the special tokens' ids."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from ..export.spm_convert import convert

    if family not in FAMILIES:
        raise SfedgeError(f"family must be one of {FAMILIES}, got {family!r}")
    base = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    config = tokenizer_config(base, family, legacy)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sp_model, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    if config["additional_special_tokens"]:
        special_map["additional_special_tokens"] = config["additional_special_tokens"]
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:  # tokenizer.model -> tokenizer.json as transformers 4.x did
        convert(out, Path(tmp))
        shutil.copyfile(Path(tmp) / "tokenizer.json", out / "tokenizer.json")
    tok = AutoTokenizer.from_pretrained(out)
    ids = {t["content"]: int(i) for i, t in config["added_tokens_decoder"].items()}
    got = {t: tok.convert_tokens_to_ids(t) for t in ids}
    if got != ids:
        raise SfedgeError(f"converted tokenizer ids {got} differ from llava-hf's {ids}")
    return ids


def make_sentencepiece_checkpoint(out_dir: str | Path, sp_model: str | Path, family: str = "vicuna",
                                  seed: int = 0, llm: str = "mistral", max_position_embeddings: int = 32768,
                                  legacy: bool = True) -> Path:
    """A tiny random LLaVA-NeXT checkpoint in llava-hf's layout around a real SentencePiece model."""
    from .tiny import _config, write_random_model

    out = Path(out_dir)
    special_ids = write_tokenizer(out, Path(sp_model), family, legacy)
    config = _config(PADDED_VOCAB, special_ids, llm, max_position_embeddings)
    write_random_model(out, config, seed, special_ids)
    (out / "sfedge_tiny.json").write_text(json.dumps({"seed": seed, "llm": llm, "tokenizer": "sentencepiece",
                                                      "family": family}, indent=2) + "\n")
    return out
