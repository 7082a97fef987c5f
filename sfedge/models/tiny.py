"""The embedded default model: a tiny random-weight LLaVA-NeXT checkpoint in llava-hf format.

Real CLIP geometry (336 px, patch 14: 24x24 = 576 tokens per frame) with tiny widths, a Llama or
Mistral text model with grouped-query attention, and a byte-level BPE tokenizer trained here on
the prompt vocabulary. Made in a few seconds, byte-identical for a given seed, and initialised
so that greedy output depends on the video (see `_init_weights`).
"""

from __future__ import annotations

import json
import math
import shutil
import string
import tempfile
from pathlib import Path

from ..cache import cache_dir
from ..errors import SfedgeError
from ..prompts import build_prompt
from ..spec import IMAGE_SIZE, IMAGE_TOKEN, PATCH_SIZE

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", IMAGE_TOKEN, "<pad>")  # ids 0..4, in this order
LLMS = ("llama", "mistral")
VOCAB_SIZE = 1024
TINY_NAMES = {"tiny": "llama", "tiny-llama": "llama", "tiny-mistral": "mistral"}

_WORDS = """
a an the this that these those it its he she they them his her their there here of in on at to
from with without into onto over under above below behind near next by for and or but not no yes
is are was were be been being has have had do does did can could will would should may might
what who whom whose which where when why how many much first then finally after before during
while throughout video clip scene frame frames shot camera view background foreground screen
man woman men women boy girl child children person people player players team crowd baby friend
dog cat horse bird fish cow sheep animal animals car truck bus bike bicycle train boat plane road
street house room kitchen table chair door window tree trees grass water river lake sea beach
field park city snow sky sun ball cup bowl plate knife phone book box bag hat shirt guitar piano
red orange yellow green blue purple pink white black gray grey brown dark bright colorful
circle circles square squares triangle triangles rectangle shape shapes line dot star disk
big small large tiny little long short tall round left right up down top bottom middle center
side corner across around toward away forward backward fast slow slowly quickly still static
moving moves move walking walks walk running runs run jumping jumps jump dancing dances dance
playing plays play cooking cooks cook talking talks talk eating eats eat drinking drinks drink
holding holds hold throwing throws throw catching catches catch riding rides ride driving drives
swimming swims sitting sits standing stands opening opens closing closes cutting cuts pouring
showing shows appears appear disappears changes change bounces bounce rotates spins slides falls
rises grows shrinks follows enters leaves stops starts begins ends continues happens happened
one two three four five six seven eight nine ten several some all each both other another same
different only also again once twice times time second seconds minute minutes beginning end
content context overall event events character characters object objects significant
answer question option options best select expert analysis helpful concisely highlighting
key sequence input consists
"""

_QUESTIONS = (
    "What is happening in the video?",
    "Describe the video in detail.",
    "What color is the circle?",
    "How many shapes appear in the video?",
    "Which direction does the square move?",
    "What is the man doing with the ball?",
    "Where does the red triangle go at the end?",
)
_OPTIONS = (
    ("The circle moves left", "The circle moves right", "The circle stays still"),
    ("red", "green", "blue", "yellow"),
    ("one", "two", "three", "four", "five"),
)


def _corpus() -> list[str]:
    """The text the tokenizer is trained on, in a fixed order: every prompt template filled with
    sample questions and options, and the word list as sentences."""
    texts = []
    for family in ("vicuna", "chatml"):
        for q in _QUESTIONS:
            texts.append(build_prompt(q, None, family))
            for opts in _OPTIONS:
                texts.append(build_prompt(q, opts, family))
    words = _WORDS.split()
    texts += [" ".join(words[i : i + 12]) + "." for i in range(0, len(words), 12)]
    texts += [" In the video, " + w.capitalize() + " " + w + "," for w in words]
    texts.append(" ".join(string.ascii_letters + string.digits + string.punctuation))
    return texts


def train_tokenizer():
    """A byte-level BPE `tokenizers.Tokenizer` with Llama-like special tokens; BOS is added by the
    post-processor. Its alphabet is printable ASCII plus space and newline (other characters become
    `<unk>`), so whatever the random model generates decodes to readable text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def _config(vocab_size: int, special_ids: dict[str, int], llm: str, max_position_embeddings: int = 4096):
    """LlavaNextConfig: CLIP geometry of ViT-L/14-336 at tiny width, GQA text model."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, MistralConfig

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32, hidden_act="quick_gelu",
    )
    text_kwargs = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=special_ids["<s>"], eos_token_id=special_ids["</s>"], pad_token_id=special_ids["<pad>"],
    )
    text = LlamaConfig(**text_kwargs) if llm == "llama" else MistralConfig(sliding_window=None, **text_kwargs)
    return LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=special_ids[IMAGE_TOKEN],
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
        bos_token_id=special_ids["<s>"], eos_token_id=special_ids["</s>"], pad_token_id=special_ids["<pad>"],
    )


# Init std multipliers over the fan-in-preserving 1/sqrt(fan_in) ("mlp." = CLIP's and the LLM's
# MLPs). With the default tiny std (0.02) the visual tokens barely reach the last position and
# greedy decoding repeats one token; sharper attention (q/k), stronger MLPs and a sharper output
# distribution (lm_head, for sampling) make generations depend on the video and vary step to step.
_GAINS = {"q_proj": 3.0, "k_proj": 3.0, "mlp.": 2.0, "lm_head": 4.0}
_EOS_LOGIT_SCALE = 0.25  # shrink EOS's lm_head row: a random model would otherwise stop at random
_EMBEDDINGS = ("embed_tokens", "position_embedding", "class_embedding", "image_newline")  # unit std


def _init_weights(model, seed: int, eos_id: int) -> None:
    """Re-initialise every weight from one seeded generator, in parameter order (deterministic):
    norms 1 / 0 (as constructed), biases 0, embedding tables unit normal, every other weight
    (linear or the patch convolution) normal with std gain / sqrt(fan_in)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                continue
            if name.endswith(".bias"):
                p.zero_()
            elif any(key in name for key in _EMBEDDINGS):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                gain = next((g for key, g in _GAINS.items() if key in name), 1.0)
                p.copy_(torch.randn(p.shape, generator=gen) * (gain / math.sqrt(math.prod(p.shape[1:]))))
        model.lm_head.weight[eos_id] *= _EOS_LOGIT_SCALE


def make_tiny(out_dir: str | Path, seed: int = 0, llm: str = "llama") -> Path:
    """Write a tiny random LLaVA-NeXT checkpoint (config.json, model.safetensors, tokenizer files)
    to `out_dir` and return its path. Same seed -> same bytes."""
    if llm not in LLMS:
        raise SfedgeError(f"--llm must be one of {', '.join(LLMS)}, got {llm!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = train_tokenizer()
    special_ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    write_random_model(out, _config(tok.get_vocab_size(), special_ids, llm), seed, special_ids)
    save_tokenizer(tok, out)
    (out / "sfedge_tiny.json").write_text(json.dumps({"seed": seed, "llm": llm}, indent=2) + "\n")
    return out


def write_random_model(out: Path, config, seed: int, special_ids: dict[str, int]) -> None:
    """The seeded random LLaVA-NeXT model for `config`, saved (safetensors) with its generation config."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    _init_weights(model, seed, special_ids["</s>"])
    model.generation_config.eos_token_id = special_ids["</s>"]
    model.generation_config.pad_token_id = special_ids["<pad>"]
    model.save_pretrained(out)


def save_tokenizer(tok, out: Path) -> None:
    """Save a trained `tokenizers` BPE as a transformers fast tokenizer (tokenizer.json + config)
    with the special tokens the reference and the runtime expect."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, model_max_length=4096,
    ).save_pretrained(out)


def _cached(target: Path, make) -> Path:
    """`make(dir, seed=0)` once into `target` (built in a temporary directory, then renamed)."""
    if not (target / "config.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            make(tmp, seed=0)
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent maker that won the race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str | Path) -> Path:
    """"tiny" / "tiny-llama" / "tiny-mistral" (/ "tiny-videollama3") -> the tiny checkpoint, made once in the cache
    (built in a temporary directory, then renamed into place); anything else must be a local
    checkpoint directory with a config.json."""
    name = str(name_or_path)
    if name == "tiny-videollama3":
        from .tiny_videollama3 import make_tiny_videollama3

        return _cached(cache_dir() / "tiny-videollama3-s0", make_tiny_videollama3)
    if name in TINY_NAMES:
        llm = TINY_NAMES[name]
        return _cached(cache_dir() / f"tiny-{llm}-s0", lambda d, seed: make_tiny(d, seed=seed, llm=llm))
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise SfedgeError(
            f"model {name!r} is neither 'tiny' nor a checkpoint directory with a config.json"
        )
    return path
