"""LLaVA's own tokenizer: the slow SentencePiece `LlamaTokenizer` of transformers 4.x.

LLaVA and SlowFast-LLaVA load the tokenizer with `AutoTokenizer.from_pretrained(path,
use_fast=False)`: for the llava-hf checkpoints that is transformers 4.x's `LlamaTokenizer` over
`tokenizer.model`. transformers 5 no longer has it (its `LlamaTokenizer` reads tokenizer.json),
so `SlowSentencePiece` re-implements its encode path (the only part LLaVA uses) on the
`sentencepiece` library, with the checkpoint's own settings from tokenizer_config.json:
`legacy` (4.x default True), `add_bos_token` / `add_eos_token`, `add_prefix_space`, and the added
tokens (split out before SentencePiece, with their lstrip / rstrip). The reference tokenises
prompts with it and the export's tokenizer guard compares the runtime's tokenizer.json with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

SPIECE_UNDERLINE = "\u2581"


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class SlowSentencePiece:
    """transformers 4.x `LlamaTokenizer` (the slow one LLaVA uses) on a checkpoint's
    tokenizer.model, `encode(text)` = `tokenizer(text).input_ids`."""

    def __init__(self, ckpt: Path):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2

        ckpt = Path(ckpt)
        config = _read_json(ckpt / "tokenizer_config.json")
        special = _read_json(ckpt / "special_tokens_map.json")
        self.legacy = True if config.get("legacy") is None else bool(config["legacy"])
        self.add_bos = bool(config.get("add_bos_token", True))
        self.add_eos = bool(config.get("add_eos_token", False))
        self.add_prefix_space = True if config.get("add_prefix_space") is None else bool(config["add_prefix_space"])
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString((ckpt / "tokenizer.model").read_bytes())
        if not self.legacy:  # as LlamaTokenizer.get_spm_processor: no dummy prefix outside legacy mode
            proto.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

        def named(key: str, default: str) -> str:
            return _token_content(config.get(key)) or _token_content(special.get(key)) or default

        self.unk_token, bos, eos = named("unk_token", "<unk>"), named("bos_token", "<s>"), named("eos_token", "</s>")
        # added tokens: content -> (id, lstrip, rstrip, special)
        self.added: dict[str, tuple[int, bool, bool, bool]] = {}
        for piece_id in range(self.sp.get_piece_size()):
            if self.sp.is_control(piece_id) or self.sp.is_unknown(piece_id):
                self.added[self.sp.id_to_piece(piece_id)] = (piece_id, False, False, True)
        for name, piece_id in _read_json(ckpt / "added_tokens.json").items():
            self.added[name] = (int(piece_id), False, False, False)
        for piece_id, tok in config.get("added_tokens_decoder", {}).items():
            self.added[tok["content"]] = (int(piece_id), bool(tok.get("lstrip")), bool(tok.get("rstrip")),
                                          bool(tok.get("special")))
        extra = [_token_content(t) for t in config.get("additional_special_tokens") or []]
        for name in extra:
            if name in self.added:
                self.added[name] = (*self.added[name][:3], True)
        self.special = {name for name, (_, _, _, sp) in self.added.items() if sp}
        self.bos_id = self._id(bos)
        self.eos_id = self._id(eos)
        self.underline_id = self.sp.piece_to_id(SPIECE_UNDERLINE)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")") \
            if self.added else None
        self._unk_len = len(self.sp.encode(self.unk_token))

    def _id(self, token: str) -> int:
        return self.added[token][0] if token in self.added else self.sp.piece_to_id(token)

    def encode(self, text: str) -> list[int]:
        if not self.legacy and text:  # LlamaTokenizer.tokenize, non-legacy
            text = text.replace(SPIECE_UNDERLINE, " ")
            if self.add_prefix_space:
                text = SPIECE_UNDERLINE + text
        parts = self._split.split(text) if self._split else [text]
        for i, part in enumerate(parts):  # the added tokens' lstrip / rstrip, as the slow tokenizer
            if part in self.added:
                _, lstrip, rstrip, _ = self.added[part]
                if rstrip and i + 1 < len(parts) and parts[i + 1]:
                    parts[i + 1] = parts[i + 1].lstrip()
                if lstrip and i > 0 and parts[i - 1]:
                    parts[i - 1] = parts[i - 1].rstrip()
        ids: list[int] = []
        pieces: list[str] = []
        for part in parts:
            if not part:
                continue
            if part in self.added:
                ids.append(self.added[part][0])
                pieces.append(part)
            else:
                new = self._tokenize(part)
                ids += new
                pieces += [self.sp.id_to_piece(i) for i in new]
        if not self.legacy and len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self.special:
            ids = ids[1:]
        return ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])

    def _tokenize(self, text: str) -> list[int]:
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp.encode(text)
        ids = self.sp.encode(self.unk_token + text)  # keeps a leading space: "<unk> Hey" -> <,unk,>,▁Hey
        return ids[self._unk_len:] if len(ids) >= self._unk_len else ids

    def describe(self) -> str:
        return (f"SentencePiece tokenizer.model as LLaVA's slow LlamaTokenizer (legacy={self.legacy}, "
                f"add_bos_token={self.add_bos}, add_eos_token={self.add_eos})")


def reference_encoder(ckpt: Path) -> tuple[Callable[[str], list[int]], str]:
    """(encode, description): the slow SentencePiece tokenizer where the checkpoint has
    tokenizer.model, else its transformers AutoTokenizer."""
    if (Path(ckpt) / "tokenizer.model").is_file():
        slow = SlowSentencePiece(ckpt)
        return slow.encode, slow.describe()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    return (lambda text: list(tok(text).input_ids)), f"transformers AutoTokenizer ({type(tok).__name__}; no tokenizer.model)"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
