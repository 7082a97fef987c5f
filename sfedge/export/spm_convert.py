"""tokenizer.model -> tokenizer.json as transformers 4.x's LlamaConverter wrote it.

The llava-hf checkpoints' tokenizer.json files were written by transformers 4.x. transformers
5.24's own conversion of the same SentencePiece model differs from SentencePiece on runs of
spaces (measured on Mistral-7B's model, README "The tokenizer guard"): it ranks the whitespace-run
merges (`▁▁`, `▁▁▁▁`: score -1e9 in SentencePiece) first, and its Metaspace pre-tokenizer adds no
`▁` to text that already starts with a space. `convert` starts from transformers' conversion and
puts back 4.x's two choices: BPE merges ranked by the merged piece's SentencePiece score, and (for
`legacy` tokenizers, 4.x's default) a `Prepend("▁")` + `Replace(" ", "▁")` normaliser. The export's
tokenizer guard then checks the result against SentencePiece itself.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def spm_merges(sp_model: Path) -> list[tuple[str, str]]:
    """BPE merges in 4.x's order: for each piece in id order, its (left, right) splits that are both
    pieces, sorted by their ids; then a stable sort by the merged piece's score, highest first."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for piece, i in vocab.items():
        local = [(piece[:k], piece[k:], sp.get_score(i)) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: m[2], reverse=True)
    return [(left, right) for left, right, _ in merges]


def convert(src: Path, dst: Path) -> None:
    """Write dst/ (tokenizer.json + transformers' other tokenizer files) for the SentencePiece
    tokenizer in src/ (tokenizer.model + tokenizer_config.json ...)."""
    from transformers import AutoTokenizer

    src, dst = Path(src), Path(dst)
    config = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    legacy = True if config.get("legacy") is None else bool(config["legacy"])
    with tempfile.TemporaryDirectory() as tmp:  # only the tokenizer's files: no tokenizer.json to start from
        for name in _TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, Path(tmp) / name)
        AutoTokenizer.from_pretrained(tmp).save_pretrained(dst)
    data = json.loads((dst / "tokenizer.json").read_text())
    if data["model"]["type"] == "BPE":
        data["model"]["merges"] = [list(m) for m in spm_merges(src / "tokenizer.model")]
    if legacy:
        data["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        data["pre_tokenizer"] = None
    (dst / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
