"""The checkpoint's tokenizer through `tokenizers` (no transformers), and a streaming detokenizer."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from ..errors import ManifestError, SfedgeError


class TextTokenizer:
    """tokenizer.json from a directory (or the file itself)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise SfedgeError(f"no tokenizer.json at {path}")
        self._tok = Tokenizer.from_file(str(file))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids with the tokenizer's special tokens (e.g. BOS), as `tokenizer(text)` gives
        (`add_special_tokens` False: as `tokenizer(text, add_special_tokens=False)`)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def stream(self) -> "StreamDecoder":
        return StreamDecoder(self)


def check_canary(tokenizer: TextTokenizer, manifest: dict) -> None:
    """Re-tokenize the export's canary chunks (manifest["tokenizer_guard"]["canaries"]) and refuse
    (ManifestError, one line) engines whose tokenizer no longer gives the ids it gave at export:
    the reference's ids, or for a difference allowed at export (`runtime_ids`), the runtime's then.
    Manifests from before the guard have no canaries and pass."""
    canaries = (manifest.get("tokenizer_guard") or {}).get("canaries") or []
    for canary in canaries:
        want = canary.get("runtime_ids", canary["ids"])
        got = tokenizer.encode(canary["text"])
        if got != want:
            pos = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            raise ManifestError(f"the tokenizer no longer agrees with the export: chunk {canary['text']!r} gives "
                                f"{got}, the export recorded {want} (first difference at position {pos}); "
                                f"re-export the engines with this tokenizers version or restore the tokenizer")


class StreamDecoder:
    """Text as tokens arrive, never splitting a multi-byte character or a merged piece.

    Each new token is decoded together with a few tokens before it (so SentencePiece's leading
    spaces and byte-fallback sequences decode as they will in the full text); the new text is
    what the longer decode adds. Text ending in U+FFFD (an incomplete UTF-8 sequence) is held
    back until the next token completes it. The pieces always concatenate to `decode(all ids)`.
    """

    def __init__(self, tokenizer: TextTokenizer):
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids up to here have been emitted as text

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" if none yet)."""
        self.ids.append(int(token_id))
        before = self._tok.decode(self.ids[self._prefix:self._read])
        after = self._tok.decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete sequence at the end of generation)."""
        before = self._tok.decode(self.ids[self._prefix:self._read])
        after = self._tok.decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return after[len(before):] if after.startswith(before) else ""
