"""sfedge.prompts: the four templates verbatim (SPEC 5) and LLaVA's tokenizer_image_token."""

from __future__ import annotations

import pytest

from sfedge.prompts import build_prompt, detect_family, parse_choice, render_options, tokenize_prompt

Q = "What is the dog doing?"
OPTS = ["running", "sleeping", "eating"]
RENDERED = "(A) running\n(B) sleeping\n(C) eating\n"

# Typed from SPEC.md section 5 (`\n` there is a newline).
CONTEXT = ("The input consists of a sequence of key frames from a video. Answer concisely with overall content "
           "and context of the video, highlighting any significant events, characters, or objects that appear "
           "throughout the video.")
EXPECTED = {
    ("vicuna", False): "USER: <image>\n" + CONTEXT + " Question: What is the dog doing? \nASSISTANT:\nAnswer: In the video,",
    ("chatml", False): ("<|im_start|>system\n Answer the question. <|im_end|>\n<|im_start|>user\n <image>\n" + CONTEXT
                        + " Question: What is the dog doing? <|im_end|>\n<|im_start|>assistant\nAnswer: In the video,"),
    ("vicuna", True): ("You are a helpful expert in video analysis. Select the best option to answer the question. "
                       "USER: <image>\nThe input consists of a sequence of key frames from a video.\n"
                       "Question: What is the dog doing?\nOptions:\n" + RENDERED
                       + "Only give the best option. \nASSISTANT:\nAnswer: Best option:("),
    ("chatml", True): ("<|im_start|>system\n You are a helpful expert in video analysis. Select the best option to "
                       "answer the question. <|im_end|>\n<|im_start|>user\n <image>\nThe input consists of a sequence "
                       "of key frames from a video. Question: What is the dog doing?\nOptions:\n" + RENDERED
                       + "Only give the best option. <|im_end|>\n<|im_start|>assistant\nAnswer: Best option:("),
}


@pytest.mark.parametrize(("family", "mc"), list(EXPECTED))
def test_prompt_is_verbatim(family, mc):
    got = build_prompt(Q, OPTS if mc else None, family)
    assert got.encode() == EXPECTED[(family, mc)].encode()
    assert got.count("<image>") == 1


def test_render_options():
    assert render_options(OPTS) == RENDERED
    assert render_options(["x", "y"]) == "(A) x\n(B) y\n"
    with pytest.raises(ValueError):
        render_options(["only one"])


def test_unknown_family_is_refused():
    with pytest.raises(ValueError):
        build_prompt(Q, None, "alpaca")


def test_detect_family():
    assert detect_family(["<s>", "</s>", "<image>"]) == "vicuna"
    assert detect_family(["<|im_start|>", "<|im_end|>"]) == "chatml"


@pytest.mark.parametrize(("answer", "expected"), [
    ("A) running", "A"), ("B", "B"), ("C: eating", "C"), (" (B) sleeping", "B"),
    ("Apples", None), ("D) nothing", None), ("", None), ("E) no, I mean (B) sleeping", "B"),
])
def test_parse_choice(answer, expected):
    assert parse_choice(answer, 3) == expected


# --- tokenizer_image_token -------------------------------------------------------------------

def llava_tokenizer_image_token(prompt, tokenizer, image_token_index):
    """LLaVA's llava/mm_utils.py tokenizer_image_token, as published (return_tensors=None)."""
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


class _CharTokenizer:
    """A stand-in tokenizer: one id per character (ord + 10), optional BOS = 1."""

    def __init__(self, add_bos: bool):
        self.bos_token_id = 1
        self.add_bos = add_bos

    def __call__(self, text):
        class _Enc:
            input_ids = ([1] if self.add_bos else []) + [ord(c) + 10 for c in text]
        return _Enc()


@pytest.mark.parametrize("add_bos", [True, False])
@pytest.mark.parametrize("prompt", [EXPECTED[("vicuna", False)], EXPECTED[("chatml", True)], "<image>\nhi", "no image"])
def test_tokenize_prompt_matches_llava(add_bos, prompt):
    tok = _CharTokenizer(add_bos)
    got = tokenize_prompt(prompt, lambda t: tok(t).input_ids, tok.bos_token_id, -200)
    assert got == llava_tokenizer_image_token(prompt, tok, -200)


def test_tokenize_prompt_bos_once_image_once():
    tok = _CharTokenizer(add_bos=True)
    ids = tokenize_prompt("ab<image>cd", lambda t: tok(t).input_ids, 1, -200)
    assert ids == [1, ord("a") + 10, ord("b") + 10, -200, ord("c") + 10, ord("d") + 10]


def test_tokenize_prompt_with_tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    image_id = tok.convert_tokens_to_ids("<image>")
    for prompt in EXPECTED.values():
        ids = tokenize_prompt(prompt, lambda t: tok(t).input_ids, tok.bos_token_id, image_id)
        assert ids == llava_tokenizer_image_token(prompt, tok, image_id)
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1 and ids.count(image_id) == 1
