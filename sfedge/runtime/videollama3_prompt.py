"""VideoLLaMA3's prompt: the checkpoint's own chat template, rendered with jinja2, and the video
token expanded frame by frame (docs/videollama3.md, step 7).

transformers' `VideoLlama3Processor.apply_chat_template` renders the template (a sandboxed jinja2
environment with trim_blocks and lstrip_blocks, the tokenizer's special tokens as variables) over

    [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]

which leaves one video token (`<|video_pad|>`) where the video goes; the processor replaces it with
`",".join(f"Time {t:.1f}s:" + video_token * kept(frame))` and tokenizes the text (without adding
special tokens when the text already starts with BOS). Here the text is tokenized with ONE video
token per frame and each is then repeated `kept(frame)` times: the same ids, since the video token is
a special token that the tokenizer never merges with its neighbours (tests check both ways), without
tokenizing tens of thousands of placeholder strings.

Only jinja2 and `tokenizers` (through runtime/tokenizer.py): the runtime imports this.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ManifestError, SfedgeError

DEFAULT_MESSAGES = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "{question}"}]}]
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class PromptSpec:
    """manifest["prompt"] with the chat template's text and the tokenizer's special tokens."""

    chat_template: str
    video_token: str = "<|video_pad|>"
    video_token_id: int | None = None
    messages: list = field(default_factory=lambda: copy.deepcopy(DEFAULT_MESSAGES))
    add_generation_prompt: bool = True
    frame_prefix: str = "Time {t:.1f}s:"
    frame_separator: str = ","
    special_tokens: dict = field(default_factory=dict)  # bos_token, eos_token ... as the template sees them

    @classmethod
    def from_manifest(cls, prompt: dict, engines_dir: str | Path) -> "PromptSpec":
        """From manifest["prompt"]; the template and special tokens are read from the engines' tokenizer dir."""
        engines_dir = Path(engines_dir)
        template_path = engines_dir / prompt.get("chat_template", "tokenizer/chat_template.jinja")
        if not template_path.is_file():
            raise ManifestError(f"the chat template {template_path} named by the manifest is missing")
        return cls(chat_template=template_path.read_text(encoding="utf-8"),
                   video_token=prompt.get("video_token", "<|video_pad|>"),
                   video_token_id=prompt.get("video_token_id"),
                   messages=prompt.get("messages") or copy.deepcopy(DEFAULT_MESSAGES),
                   add_generation_prompt=bool(prompt.get("add_generation_prompt", True)),
                   frame_prefix=prompt.get("frame_prefix", "Time {t:.1f}s:"),
                   frame_separator=prompt.get("frame_separator", ","),
                   special_tokens=special_tokens(template_path.parent))


def special_tokens(tokenizer_dir: str | Path) -> dict[str, str]:
    """The special-token strings of tokenizer_config.json (the variables transformers hands the template)."""
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for key in _SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


@lru_cache(maxsize=8)
def _compiled(chat_template: str):
    """The template compiled once per process (compiling costs ~0.1 s; transformers caches it too)."""
    return _environment().from_string(chat_template)


def _environment() -> ImmutableSandboxedEnvironment:
    """transformers' chat-template environment (utils/chat_template_utils.py) minus its
    assistant-mask tracker."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = jinja2.utils.Namespace
    return env


def _fill(messages, question: str):
    """The manifest's messages with "{question}" replaced in every text item."""
    if isinstance(messages, dict):
        return {k: _fill(v, question) for k, v in messages.items()}
    if isinstance(messages, list):
        return [_fill(v, question) for v in messages]
    if isinstance(messages, str):
        return messages.replace("{question}", question)
    return messages


def render(spec: PromptSpec, question: str) -> str:
    """The chat template rendered over the question: text with one video token."""
    try:
        return _compiled(spec.chat_template).render(messages=_fill(spec.messages, question),
                               add_generation_prompt=spec.add_generation_prompt, tools=None, documents=None,
                               **spec.special_tokens)
    except jinja2.exceptions.TemplateError as e:
        raise SfedgeError(f"the checkpoint's chat template failed: {e}") from None


def frame_text(spec: PromptSpec, timestamps: list[float], token: str) -> str:
    """`Time 0.0s:<token>,Time 1.0s:<token>,...`: one `token` per frame."""
    return spec.frame_separator.join(spec.frame_prefix.format(t=t) + token for t in timestamps)


@dataclass
class VideoPrompt:
    """Prompt ids with the video tokens expanded; frame i's visual tokens are ids[starts[i]:starts[i] + counts[i]]."""

    ids: list[int]
    starts: list[int]
    counts: list[int]


def marked_ids(spec: PromptSpec, encode, question: str, timestamps: list[float]) -> list[int]:
    """The prompt ids with ONE video token per frame (its "Time t.ts:" text before it): the marked
    form the splice expands (`encode(text, add_special_tokens)`: the tokenizer's)."""
    rendered = render(spec, question)
    found = rendered.count(spec.video_token)
    if found != 1:
        raise SfedgeError(f"the prompt must hold the video token {spec.video_token} exactly once, found {found} "
                          "(a question may not contain it)")
    text = rendered.replace(spec.video_token, frame_text(spec, timestamps, spec.video_token))
    bos = spec.special_tokens.get("bos_token")
    return encode(text, add_special_tokens=not (bos and text.startswith(bos)))


def video_token_id(spec: PromptSpec, tokenizer) -> int:
    """The video token's id: the manifest's, else the tokenizer's."""
    found = spec.video_token_id if spec.video_token_id is not None else tokenizer.vocab().get(spec.video_token)
    if found is None:
        raise ManifestError(f"the tokenizer does not know the video token {spec.video_token}")
    return int(found)


def build(spec: PromptSpec, tokenizer, question: str, timestamps: list[float], kept_per_frame: list[int]) -> VideoPrompt:
    """The prompt ids transformers' VideoLlama3Processor gives for this question, these frame
    timestamps and these kept-token counts per frame (each >= 1)."""
    if len(timestamps) != len(kept_per_frame):
        raise ValueError(f"{len(timestamps)} timestamps but {len(kept_per_frame)} frame token counts")
    if any(n < 1 for n in kept_per_frame):
        raise ValueError("every frame keeps at least one token (min_tokens >= 1)")
    compact = marked_ids(spec, tokenizer.encode, question, timestamps)
    video_id = video_token_id(spec, tokenizer)
    ids, starts, frame = [], [], 0
    for token in compact:
        if token == video_id:
            starts.append(len(ids))
            ids.extend([video_id] * kept_per_frame[frame])
            frame += 1
        else:
            ids.append(token)
    if frame != len(timestamps):
        raise ManifestError(f"the tokenizer split the video token {spec.video_token}: {frame} of {len(timestamps)} found")
    return VideoPrompt(ids, starts, list(kept_per_frame))
