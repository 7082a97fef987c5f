"""The tokenizer guard (sfedge/export/tokenizer_guard.py) and the runtime's canary re-check, on the
real SentencePiece checkpoints of conftest.py (Mistral-7B's tokenizer.model in llava-hf's layout)."""

from __future__ import annotations

import json
import shutil

import pytest

from sfedge.errors import ManifestError, ValidationError


def _altered_copy(src, dst, drop_piece="\u2581video"):
    """A copy of the checkpoint's tokenizer files whose tokenizer.json cannot form `drop_piece`
    (its merges removed): the kind of silent damage a re-conversion or hand edit causes."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and not p.name.startswith("model"):
            shutil.copy2(p, dst / p.name)
    data = json.loads((src / "tokenizer.json").read_text())
    before = len(data["model"]["merges"])
    data["model"]["merges"] = [m for m in data["model"]["merges"] if "".join(m) != drop_piece]
    assert len(data["model"]["merges"]) < before
    (dst / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    return dst


def test_canary_texts_cover_the_templates_and_the_hard_inputs():
    from sfedge.export.tokenizer_guard import canary_texts

    for family, first in (("vicuna", "USER: "), ("chatml", "<|im_start|>system\n Answer the question. <|im_end|>\n<|im_start|>user\n ")):
        texts = canary_texts(family)
        assert first in texts and len(texts) == len(set(texts))
        joined = "".join(texts)
        for needle in ("東京", "🙂", "1234567.89", "  Leading", "\n\n", "\t", "(A) A cat jumps\n", "Best option:("):
            assert needle in joined, (family, needle)


@pytest.mark.parametrize("family", ["vicuna", "chatml"])
def test_guard_passes_on_the_llava_hf_files(family, sp_mistral_dir, sp_chatml_dir):
    from sfedge.export.tokenizer_guard import guard

    ckpt = sp_mistral_dir if family == "vicuna" else sp_chatml_dir
    block = guard(ckpt, ckpt, family)
    assert block["passed"] and block["allowed_mismatches"] == 0
    assert "legacy=True" in block["reference"] and len(block["canaries"]) >= 30
    assert all("runtime_ids" not in c and c["ids"][0] == 1 for c in block["canaries"])


def test_export_fails_on_an_altered_tokenizer_json_naming_the_chunk(sp_mistral_dir, tmp_path, capsys):
    """Exit 1, one line naming the first differing chunk and both id lists; nothing left behind."""
    from sfedge.cli import main

    ckpt = _altered_copy(sp_mistral_dir, tmp_path / "ckpt")
    for p in sp_mistral_dir.glob("model*"):
        (ckpt / p.name).symlink_to(p)
    out = tmp_path / "engines"
    assert main(["export", str(ckpt), str(out), "--no-validate"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # (the rest: the bar)
    assert len(err) == 1 and err[0].startswith("sfedge export: error: tokenizer guard"), err
    assert "chunk '\\nThe input consists of a sequence of key frames from a video. Answer" in err[0]
    assert "runtime tokenizer.json gives [1, " in err[0] and "reference tokenizer gives [1, " in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_allowed_mismatches_are_recorded_and_rechecked(sp_mistral_dir, tmp_path):
    """--allow-tokenizer-mismatch: every difference in the block; check_canary accepts the engine's
    tokenizer as exported and refuses any other."""
    from sfedge.export.tokenizer_guard import guard
    from sfedge.runtime.tokenizer import TextTokenizer, check_canary

    altered = _altered_copy(sp_mistral_dir, tmp_path / "altered")
    with pytest.raises(ValidationError, match="tokenizer guard"):
        guard(sp_mistral_dir, altered, "vicuna")
    block = guard(sp_mistral_dir, altered, "vicuna", allow_mismatch=True)
    differing = [c for c in block["canaries"] if "runtime_ids" in c]
    assert not block["passed"] and block["allowed_mismatches"] == len(differing) > 0
    assert all(c["ids"] != c["runtime_ids"] for c in differing)
    manifest = {"tokenizer_guard": block}
    check_canary(TextTokenizer(altered), manifest)  # the tokenizer as exported: accepted
    with pytest.raises(ManifestError, match="no longer agrees"):
        check_canary(TextTokenizer(sp_mistral_dir), manifest)  # another one: refused


def test_pipeline_canaries_refuse_a_changed_tokenizer(engines_sp_mistral, sp_mistral_dir, tmp_path):
    """The exported manifest's canaries pass on its own tokenizer and fail, with one line, on a
    tokenizer that no longer gives the same ids (e.g. another `tokenizers` release)."""
    from sfedge.manifest import load_manifest
    from sfedge.runtime.tokenizer import TextTokenizer, check_canary

    manifest = load_manifest(engines_sp_mistral)
    assert manifest["tokenizer_guard"]["passed"]
    check_canary(TextTokenizer(engines_sp_mistral / "tokenizer"), manifest)
    with pytest.raises(ManifestError) as e:
        check_canary(TextTokenizer(_altered_copy(sp_mistral_dir, tmp_path / "t")), manifest)
    assert "\n" not in str(e.value) and "video" in str(e.value)


def test_transformers5_conversion_is_caught(sp_mistral_dir, tmp_path):
    """transformers 5.24's own tokenizer.model -> tokenizer.json conversion ranks the whitespace-run
    merges first and prepends "▁" only to text that does not start with a space: SentencePiece
    disagrees on runs of spaces. A checkpoint re-saved that way fails the guard."""
    from transformers import AutoTokenizer

    from sfedge.export.tokenizer_guard import guard

    src = tmp_path / "src"
    src.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(sp_mistral_dir / name, src / name)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "v5")
    with pytest.raises(ValidationError, match="Leading and trailing|padded"):
        guard(sp_mistral_dir, tmp_path / "v5", "vicuna")


def test_a_checkpoint_without_tokenizer_json_gets_one_that_passes(sp_chatml_dir, tmp_path):
    """copy_tokenizer converts tokenizer.model as transformers 4.x did (spm_convert): the guard passes
    (transformers 5's plain conversion would not: test_transformers5_conversion_is_caught)."""
    from sfedge.export.llm import copy_tokenizer
    from sfedge.export.tokenizer_guard import guard

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(sp_chatml_dir / name, ckpt / name)
    files = copy_tokenizer(ckpt, tmp_path / "tok")
    assert "tokenizer.json" in files
    assert guard(ckpt, tmp_path / "tok", "chatml")["passed"]


def test_pipeline_refuses_engines_whose_tokenizer_no_longer_agrees(engines_fp32, monkeypatch):
    """Pipeline re-checks the canaries when it opens: a tokenizers library that now splits text
    differently (simulated: one id changed for every chunk) is refused with one line."""
    from sfedge.errors import ManifestError
    from sfedge.manifest import load_manifest
    from sfedge.runtime.pipeline import Pipeline
    from sfedge.runtime.tokenizer import TextTokenizer

    assert load_manifest(engines_fp32, verify_files=False)["tokenizer_guard"]["canaries"]
    real = TextTokenizer.encode
    monkeypatch.setattr(TextTokenizer, "encode", lambda self, text: [*real(self, text), 7])
    with pytest.raises(ManifestError, match="no longer agrees"):
        Pipeline(engines_fp32)
