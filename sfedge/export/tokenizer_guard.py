"""The tokenizer guard: the runtime's tokenizer.json must give the ids LLaVA's own code gives.

LLaVA (and SlowFast-LLaVA) tokenize with the *slow* SentencePiece tokenizer
(`AutoTokenizer.from_pretrained(path, use_fast=False)`: transformers 4.x `LlamaTokenizer` over
`tokenizer.model`), while sfedge's runtime reads `tokenizer.json` with `tokenizers`. At export,
every chunk of the checkpoint family's SPEC 5 templates (the text around `<image>`, filled with a
fixed set of questions and option lists: Unicode, digits, leading / trailing spaces, newlines,
the multiple-choice rendering) is tokenized both ways; a difference fails the export (exit 1)
naming the first differing chunk and both id lists, unless the caller allows mismatches (then
every difference is recorded). The ids go into the manifest as canaries, which the runtime
re-checks when it opens the engines (`sfedge.runtime.tokenizer.check_canary`).

The reference side is `sfedge.reference.slow_tokenizer.reference_encoder`: the slow tokenizer
re-implemented on `sentencepiece` with the checkpoint's BOS / legacy settings, or, for a
checkpoint without tokenizer.model, its transformers AutoTokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ValidationError
from ..prompts import build_prompt, render_options
from ..spec import IMAGE_TOKEN

# Fixed canary inputs: plain, Unicode (accents, CJK, emoji, a combining mark), digits and
# numbers, leading / trailing / repeated spaces, newlines and tabs, and the literal "▁" piece.
QUESTIONS = (
    "What is happening in the video?",
    "¿Qué pasa? Café, naïve, Straße — 東京の猫 🙂🐈",
    "How many people are there: 0, 1, 2, 10, 42 or 1234567.89?",
    "  Leading and trailing spaces  ",
    "Line one\nLine two\n\n  indented\tand tabbed",
    "e\u0301 (combining accent), \u00a0non-breaking space, \u2581 piece marker",
)
OPTION_LISTS = (
    ("A cat jumps", "A dog runs", "A car stops"),
    ("red", "green", "blue", "yellow", "   padded   "),
    ("3 times", "12 times", "¡más de 100!", "無", "🙂 happy"),
)


def canary_texts(family: str) -> list[str]:
    """Every distinct chunk (text between `<image>` markers) of the family's open-ended and
    multiple-choice prompts over QUESTIONS x ({open} + OPTION_LISTS), then each question and each
    rendered option list on its own. Order is fixed; duplicates dropped."""
    texts: list[str] = []
    for question in QUESTIONS:
        for options in (None, *OPTION_LISTS):
            texts += build_prompt(question, options, family).split(IMAGE_TOKEN)
    texts += list(QUESTIONS) + [render_options(o) for o in OPTION_LISTS]
    return list(dict.fromkeys(texts))


def compare(texts: list[str], runtime: Callable[[str], list[int]],
            reference: Callable[[str], list[int]]) -> tuple[list[dict], list[dict]]:
    """(canaries, mismatches): canaries = [{"text", "ids"(reference), and "runtime_ids" where the
    runtime differs}], mismatches = those that differ, in order."""
    canaries, mismatches = [], []
    for text in texts:
        want, got = list(reference(text)), list(runtime(text))
        entry = {"text": text, "ids": want}
        if got != want:
            entry["runtime_ids"] = got
            mismatches.append(entry)
        canaries.append(entry)
    return canaries, mismatches


def first_difference(mismatch: dict) -> str:
    want, got = mismatch["ids"], mismatch["runtime_ids"]
    pos = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return (f"chunk {mismatch['text']!r}: runtime tokenizer.json gives {got}, the checkpoint's reference "
            f"tokenizer gives {want} (first difference at position {pos})")


def guard(ckpt: Path, tokenizer_dir: Path, family: str, allow_mismatch: bool = False) -> dict:
    """Run the guard; return the manifest's `tokenizer_guard` block. Raises ValidationError (exit 1)
    on the first differing chunk unless `allow_mismatch`."""
    from ..reference.slow_tokenizer import reference_encoder
    from ..runtime.tokenizer import TextTokenizer

    runtime = TextTokenizer(tokenizer_dir)
    encode, description = reference_encoder(ckpt)
    canaries, mismatches = compare(canary_texts(family), runtime.encode, encode)
    if mismatches and not allow_mismatch:
        raise ValidationError(f"tokenizer guard: {len(mismatches)} of {len(canaries)} canary chunks differ; first: "
                              f"{first_difference(mismatches[0])} (--allow-tokenizer-mismatch exports anyway)")
    return {"reference": description, "family": family, "passed": not mismatches,
            "allowed_mismatches": len(mismatches), "canaries": canaries}
