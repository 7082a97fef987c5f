"""Shared fixtures: the tiny model, synthetic clips and tiny engines, each made once per session.

Engines for the runtime tests are exported with validate=False: export validation is the
exporter's own tests' business; the runtime tests check the engines against the reference.
"""

from __future__ import annotations

import os

import pytest

import sfedge  # noqa: F401  (first: its torchvision_compat must precede any transformers import)

os.environ.setdefault("SFEDGE_CACHE", "")  # set per session below


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's ~/.cache/sfedge."""
    path = tmp_path_factory.mktemp("sfedge-cache")
    os.environ["SFEDGE_CACHE"] = str(path)
    yield path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from sfedge.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, llm="llama")


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory):
    from sfedge.models.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "tiny-mistral", seed=1, llm="mistral")


@pytest.fixture(scope="session")
def tiny_vl3_dir(tmp_path_factory):
    """The tiny VideoLLaMA3 checkpoint (sfedge/models/tiny_videollama3.py), seed 0."""
    from sfedge.models.tiny_videollama3 import make_tiny_videollama3

    return make_tiny_videollama3(tmp_path_factory.mktemp("tiny") / "tiny-videollama3", seed=0)


@pytest.fixture(scope="session")
def vl3_engines_fp32(tmp_path_factory, tiny_vl3_dir):
    """fp32 engines of the tiny VideoLLaMA3 checkpoint, exported without validation (see above)."""
    return export_tiny(tmp_path_factory, tiny_vl3_dir, "tiny-videollama3-fp32", "fp32")


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory):
    from sfedge.synthetic import make_clip

    return make_clip(tmp_path_factory.mktemp("clips") / "shapes.mp4", num_frames=60, seed=0)


def export_tiny(tmp_path_factory, ckpt, name: str, precision: str):
    """Tiny engines exported on CPU without validation (see the module docstring)."""
    from sfedge.export import export_model

    out = tmp_path_factory.mktemp("engines") / name
    export_model(ckpt, out, precision=precision, device="cpu", validate=False, progress=False)
    return out


@pytest.fixture(scope="session")
def engines_fp32(tmp_path_factory, tiny_dir):
    return export_tiny(tmp_path_factory, tiny_dir, "tiny-llama-fp32", "fp32")


@pytest.fixture(scope="session")
def engines_fp16(tmp_path_factory, tiny_dir):
    return export_tiny(tmp_path_factory, tiny_dir, "tiny-llama-fp16", "fp16")


@pytest.fixture(scope="session")
def engines_int4(tmp_path_factory, tiny_dir):
    return export_tiny(tmp_path_factory, tiny_dir, "tiny-llama-int4", "int4")


@pytest.fixture(scope="session")
def engines_mistral(tmp_path_factory, tiny_mistral_dir):
    return export_tiny(tmp_path_factory, tiny_mistral_dir, "tiny-mistral-fp32", "fp32")


@pytest.fixture(scope="session")
def pipeline_fp32(engines_fp32):
    from sfedge.runtime.pipeline import Pipeline

    return Pipeline(engines_fp32)


@pytest.fixture(scope="session")
def reference_llama(tiny_dir, pipeline_fp32):
    from sfedge.reference.model import SlowFastLlava

    return SlowFastLlava.from_pretrained(tiny_dir, spec=pipeline_fp32.spec)


@pytest.fixture(scope="session")
def short_clips(tmp_path_factory):
    """name -> path: video files with fewer than 10 frames, another codec, and image directories."""
    from sfedge.synthetic import has_encoder, make_clip, make_image_dir

    root = tmp_path_factory.mktemp("runtime-clips")
    clips = {
        "mp4-3": make_clip(root / "three.mp4", 3, seed=1),
        "mp4-7": make_clip(root / "seven.mp4", 7, seed=2),
        "mp4-12": make_clip(root / "twelve.mp4", 12, seed=3),
        "dir-5": make_image_dir(root / "dir5", 5, seed=4),
        "dir-20": make_image_dir(root / "dir20", 20, seed=5),
    }
    if has_encoder("libvpx-vp9"):
        clips["webm-9"] = make_clip(root / "nine.webm", 9, seed=6)
    return clips


# --- real SentencePiece tokenizers (fetched once from PyPI, cached outside the repo) --------------

MISTRAL_COMMON = "mistral-common==1.13.1"  # its wheel carries Mistral-7B's tokenizer.model (v1)
MISTRAL_SP_MEMBER = "mistral_common/data/tokenizer.model.v1"
MISTRAL_SP_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


def _test_assets_dir():
    from pathlib import Path

    root = os.environ.get("SFEDGE_TEST_ASSETS") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sfedge-test-assets"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def mistral_sp_model():
    """Mistral-7B's SentencePiece model (493 KB): `pip download` of the mistral-common wheel (no
    dependencies), the member read from the zip, its sha256 checked, cached in
    $SFEDGE_TEST_ASSETS (default ~/.cache/sfedge-test-assets). Skips where PyPI is unreachable."""
    import hashlib
    import subprocess
    import sys
    import tempfile
    import zipfile
    from pathlib import Path

    target = _test_assets_dir() / "mistral-7b-tokenizer.model.v1"
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == MISTRAL_SP_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, MISTRAL_COMMON]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.skip(f"cannot fetch {MISTRAL_COMMON} from PyPI: {proc.stderr.strip()[-200:]}")
        data = zipfile.ZipFile(wheels[0]).read(MISTRAL_SP_MEMBER)
    if hashlib.sha256(data).hexdigest() != MISTRAL_SP_SHA256:
        pytest.fail(f"{MISTRAL_COMMON}'s {MISTRAL_SP_MEMBER} has an unexpected sha256")
    tmp_target = target.with_suffix(f".tmp{os.getpid()}")
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
    return target


@pytest.fixture(scope="session")
def sp_mistral_dir(tmp_path_factory, mistral_sp_model):
    """llava-hf/llava-v1.6-mistral-7b-hf's layout and tokenizer files (Mistral-7B's SentencePiece
    model, <image> = 32000, 32,064 embedding rows, max_position_embeddings 32,768), tiny random weights."""
    from sfedge.models.sentencepiece_ckpt import make_sentencepiece_checkpoint

    return make_sentencepiece_checkpoint(tmp_path_factory.mktemp("sp") / "sp-mistral", mistral_sp_model,
                                         family="vicuna", seed=2, llm="mistral", max_position_embeddings=32768)


@pytest.fixture(scope="session")
def sp_chatml_dir(tmp_path_factory, mistral_sp_model):
    """The same SentencePiece model with <|im_start|> / <|im_end|> added as special tokens (ChatML
    prompts: a stand-in for Yi-34B, whose tokenizer is not obtainable here), Llama text model."""
    from sfedge.models.sentencepiece_ckpt import make_sentencepiece_checkpoint

    return make_sentencepiece_checkpoint(tmp_path_factory.mktemp("sp") / "sp-chatml", mistral_sp_model,
                                         family="chatml", seed=3, llm="llama", max_position_embeddings=4096)


@pytest.fixture(scope="session")
def engines_sp_mistral(tmp_path_factory, sp_mistral_dir):
    return export_tiny(tmp_path_factory, sp_mistral_dir, "sp-mistral-fp32", "fp32")


@pytest.fixture(scope="session")
def engines_sp_chatml(tmp_path_factory, sp_chatml_dir):
    return export_tiny(tmp_path_factory, sp_chatml_dir, "sp-chatml-fp32", "fp32")
