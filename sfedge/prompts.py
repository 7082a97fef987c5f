"""The four SlowFast-LLaVA prompt templates (SPEC 5), verbatim, and the chunk-wise tokenisation.

Pure Python: shared by the reference (transformers tokenizer) and the runtime (`tokenizers`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence

from .spec import IMAGE_TOKEN

_CONTEXT = (
    "The input consists of a sequence of key frames from a video. Answer concisely with overall "
    "content and context of the video, highlighting any significant events, characters, or objects "
    "that appear throughout the video."
)

# family "vicuna": the 7B models (Vicuna and Mistral); family "chatml": the 34B model (Yi).
TEMPLATES: dict[tuple[str, str], str] = {
    ("vicuna", "open"): (
        "USER: <image>\n" + _CONTEXT + " Question: %s \nASSISTANT:\nAnswer: In the video,"
    ),
    ("chatml", "open"): (
        "<|im_start|>system\n Answer the question. <|im_end|>\n<|im_start|>user\n <image>\n"
        + _CONTEXT
        + " Question: %s <|im_end|>\n<|im_start|>assistant\nAnswer: In the video,"
    ),
    ("vicuna", "mc"): (
        "You are a helpful expert in video analysis. Select the best option to answer the question. "
        "USER: <image>\nThe input consists of a sequence of key frames from a video.\nQuestion: %s\n"
        "Options:\n%sOnly give the best option. \nASSISTANT:\nAnswer: Best option:("
    ),
    ("chatml", "mc"): (
        "<|im_start|>system\n You are a helpful expert in video analysis. Select the best option to "
        "answer the question. <|im_end|>\n<|im_start|>user\n <image>\nThe input consists of a sequence "
        "of key frames from a video. Question: %s\nOptions:\n%sOnly give the best option. "
        "<|im_end|>\n<|im_start|>assistant\nAnswer: Best option:("
    ),
}
FAMILIES = ("vicuna", "chatml")
MAX_OPTIONS = 26


def render_options(options: Sequence[str]) -> str:
    """`(A) text\\n(B) text\\n...`, one per line."""
    if not 2 <= len(options) <= MAX_OPTIONS:
        raise ValueError(f"multiple choice needs 2 to {MAX_OPTIONS} options, got {len(options)}")
    return "".join(f"({letter}) {text}\n" for letter, text in zip(string.ascii_uppercase, options))


def build_prompt(question: str, options: Sequence[str] | None = None, family: str = "vicuna") -> str:
    """The full prompt text, with `<image>` where the visual tokens go."""
    if family not in FAMILIES:
        raise ValueError(f"prompt family must be one of {FAMILIES}, got {family!r}")
    for what, text in (("question", question), *(("option", o) for o in options or ())):
        _check_encodable(text, what)
    if options:
        return TEMPLATES[(family, "mc")] % (question, render_options(options))
    return TEMPLATES[(family, "open")] % question


def _check_encodable(text: str, what: str) -> None:
    """ValueError (one line) for text that cannot be UTF-8: lone surrogates, which is what Python
    makes of command-line bytes that are not UTF-8 (the tokenizer would raise deep inside)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the {what} is not valid UTF-8 (undecodable character at position {e.start}): "
                         f"{text[:60].encode('utf-8', 'backslashreplace').decode()!r}") from None


def parse_choice(answer: str, num_options: int) -> str | None:
    """The chosen letter of a multiple-choice answer: the first generated character, or a
    pattern like `A)` / `A:` / `(A)` near the start. None if no valid letter is found."""
    letters = string.ascii_uppercase[:num_options]
    text = answer.strip()
    if text and text[0] in letters and (len(text) == 1 or not text[1].isalpha()):
        return text[0]
    for m in re.finditer(r"\(?\b([A-Z])\s*[):.]", text):
        if m.group(1) in letters:
            return m.group(1)
    return None


def tokenize_prompt(prompt: str, encode: Callable[[str], list[int]], bos_token_id: int | None,
                    image_token_id: int) -> list[int]:
    """SlowFast-LLaVA's `tokenizer_image_token`: each piece around `<image>` is encoded on its own
    (`encode` = tokenizer(text) with special tokens); if the first piece starts with BOS, BOS is kept
    once at the start and stripped from every later piece. One `image_token_id` marks the splice
    point (the caller replaces it with all visual tokens)."""
    chunks = [encode(c) for c in prompt.split(IMAGE_TOKEN)]
    offset = 1 if chunks and chunks[0] and bos_token_id is not None and chunks[0][0] == bos_token_id else 0
    ids: list[int] = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.extend([image_token_id])
        ids.extend(chunk[offset:])
    return ids


def detect_family(vocab: Iterable[str]) -> str:
    """"chatml" for tokenizers that know `<|im_start|>` (Yi-34B), else "vicuna" (Vicuna, Mistral)."""
    return "chatml" if "<|im_start|>" in vocab else "vicuna"
