"""Runtime units without engines: sampling, the greedy step graph, providers, the streaming detokenizer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from sfedge.errors import SfedgeError
from sfedge.runtime.engines import check_provider, session_providers, trt_profile_shapes
from sfedge.runtime.generate import sample_next
from sfedge.export.step import export_step
from sfedge.runtime.tokenizer import TextTokenizer
from sfedge.spec import GenerationSpec

# --- sampling ---------------------------------------------------------------------------------


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert sample_next(logits, GenerationSpec(), np.random.default_rng(0)) == 1


def test_sampling_is_seeded_and_reproducible():
    logits = np.random.default_rng(1).normal(size=100).astype(np.float32)
    gen = GenerationSpec(temperature=1.0, seed=7)
    draw = lambda: [sample_next(logits, gen, rng) for rng in [np.random.default_rng(gen.seed)] for _ in range(20)]
    assert draw() == draw()
    assert len(set(draw())) > 1  # it does sample


def test_top_k_and_top_p_restrict_the_support():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    top_k = {sample_next(logits, GenerationSpec(temperature=1.0, top_k=2), rng) for _ in range(300)}
    assert top_k == {0, 1}
    top_p = {sample_next(logits, GenerationSpec(temperature=1.0, top_p=0.75), rng) for _ in range(300)}
    assert top_p == {0, 1}  # 0.5 + 0.3 reaches 0.75: the rest is cut
    nucleus_of_one = {sample_next(logits, GenerationSpec(temperature=1.0, top_p=0.4), rng) for _ in range(100)}
    assert nucleus_of_one == {0}
    assert {sample_next(logits, GenerationSpec(temperature=5.0), rng) for _ in range(300)} == {0, 1, 2, 3}


# --- the greedy step graph --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_greedy_step_graph_is_argmax_then_gather(dtype, tmp_path):
    entry = export_step(tmp_path, np.dtype(dtype).name, np.dtype(dtype).name)
    session = ort.InferenceSession(str(tmp_path / entry["path"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 1, 97)).astype(dtype)
    table = rng.normal(size=(97, 8)).astype(dtype)
    token, embeds = session.run(None, {"logits": logits, "table": table})
    assert token.shape == (1, 1) and token[0, 0] == np.argmax(logits)
    np.testing.assert_array_equal(embeds[0, 0], table[np.argmax(logits)])


# --- providers --------------------------------------------------------------------------------


def test_unknown_or_missing_provider_is_a_clear_error():
    with pytest.raises(SfedgeError, match="unknown provider"):
        check_provider("npu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(SfedgeError, match="not available in this onnxruntime"):
            check_provider("cuda")
    assert session_providers("cpu") == ["CPUExecutionProvider"]


def test_trt_profile_shapes_from_manifest_ranges():
    io = [{"name": "pixel_values", "shape": ["T", 3, 336, 336], "dynamic": {"T": [1, 64]}},
          {"name": "inputs_embeds", "shape": ["batch_size", "sequence_length", 64],
           "dynamic": {"batch_size": [1, 1], "sequence_length": [1, 4096]}},
          {"name": "fixed", "shape": [2, 2]}]
    shapes = trt_profile_shapes(io, opt={"sequence_length": 3000})
    assert shapes["trt_profile_min_shapes"] == "pixel_values:1x3x336x336,inputs_embeds:1x1x64"
    assert shapes["trt_profile_opt_shapes"] == "pixel_values:64x3x336x336,inputs_embeds:1x3000x64"
    assert shapes["trt_profile_max_shapes"] == "pixel_values:64x3x336x336,inputs_embeds:1x4096x64"


# --- streaming detokenizer --------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory):
    """A byte-level BPE whose vocabulary holds single bytes: a CJK character or an accented
    letter takes several tokens, each of which alone decodes to U+FFFD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the cat sat on the mat", "hello world"], trainer=trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return TextTokenizer(path)


@pytest.mark.parametrize("text", ["the cat sat", "naïve café 漢字 ok", "emoji 🙂 end", "  two  spaces\nnew line"])
def test_stream_pieces_concatenate_to_the_full_decode(byte_tokenizer, text):
    ids = byte_tokenizer.encode(text)
    stream = byte_tokenizer.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == byte_tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)  # no broken multi-byte character ever emitted
    if len(text.encode()) > len(text):
        assert "" in pieces[:-1]  # some tokens had to wait for the rest of their character


def test_stream_holds_back_an_unfinished_character(byte_tokenizer):
    ids = byte_tokenizer.encode("漢")
    assert len(ids) == 3
    stream = byte_tokenizer.stream()
    assert [stream.push(i) for i in ids] == ["", "", "漢"]
    incomplete = byte_tokenizer.stream()
    incomplete.push(ids[0])
    assert incomplete.flush() == "\ufffd"  # what is left at the end is emitted as decoded


def test_tokenizer_missing_is_a_clear_error(tmp_path):
    with pytest.raises(SfedgeError, match="no tokenizer.json"):
        TextTokenizer(tmp_path)
