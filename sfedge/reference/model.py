"""SlowFast-LLaVA in PyTorch on transformers' LlavaNextForConditionalGeneration (SPEC 1-6).

The pipeline, one method per step:

    video --load_video/preprocess--> pixel_values [T,3,336,336]
          --vision_features--> [T,576,D] --pool--> [N,D]
    question --prompt_ids--> ids (one image token) --inputs_embeds--> [1,L,D]
          --generate--> new token ids --decode--> answer text

Generation is a plain greedy / sampling loop over the language model's KV cache. EOS ends it and is
not part of the returned ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.tiny import resolve_model
from ..prompts import build_prompt, detect_family, parse_choice, tokenize_prompt
from ..spec import VISION_FEATURE_LAYER, GenerationSpec, PipelineSpec
from .slow_tokenizer import SlowSentencePiece
from .slowfast import SlowFastPool


@dataclass
class ReferenceAnswer:
    """What `SlowFastLlava.answer` found: the text and everything needed to reproduce it."""

    answer: str
    token_ids: list[int]
    frame_indices: list[int]
    num_frames_total: int
    num_visual_tokens: int
    choice: str | None = None  # the option letter, for multiple choice
    prompt_ids: list[int] = field(default_factory=list)


class SlowFastLlava:
    """A LLaVA-NeXT checkpoint driven the SlowFast-LLaVA way (training-free video QA)."""

    def __init__(self, model, tokenizer, spec: PipelineSpec = PipelineSpec(),
                 encode: Callable[[str], list[int]] | None = None):
        """`encode`: text -> ids as LLaVA's tokenizer gives them (`from_pretrained` passes the slow
        SentencePiece tokenizer where the checkpoint has tokenizer.model); None: `tokenizer(text)`."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.encode = encode or (lambda text: list(tokenizer(text).input_ids))
        self.spec = spec
        self.prompt_family = detect_family(tokenizer.get_vocab())
        self.image_token_id = int(model.config.image_token_id)
        self.pooler = SlowFastPool(spec.slowfast)
        self.eos_token_ids = _eos_ids(model, tokenizer)

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", spec: PipelineSpec = PipelineSpec(),
                        lazy_upcast: bool = False) -> "SlowFastLlava":
        """Load a llava-hf checkpoint directory (or "tiny") with SDPA attention. The weights load in
        the checkpoint's own dtype (memory-mapped) and are then converted tensor by tensor: asking
        transformers for fp32 straight from an fp16 checkpoint peaks near 3x the checkpoint's size
        (measured on the 7 GB sf-llava-jetson preset: 21.0 GB, vs 17.3 GB this way).

        `lazy_upcast`: keep the language model's weights in the checkpoint's dtype and convert each
        one to `dtype` only while it is used (`upcast_lazily`). The results are bit-identical to a
        model converted up front (widening fp16 / bf16 to fp32 is exact, and every op sees the same
        fp32 values), at half the memory of an fp32 7B model; each forward pays the conversions.
        Export validation and `sfedge verify` use it; the bench does not (it times the reference)."""
        from transformers import AutoTokenizer, LlavaNextForConditionalGeneration
        from transformers.utils import logging as hf_logging

        path = resolve_model(path_or_name)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar amid sfedge's own output
        try:
            model = LlavaNextForConditionalGeneration.from_pretrained(path, dtype="auto", attn_implementation="sdpa")
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if lazy_upcast:
            upcast_lazily(model, dtype)
            model.to(device=device)
        else:
            model.to(device=device, dtype=dtype)
        slow = SlowSentencePiece(path) if (path / "tokenizer.model").is_file() else None
        return cls(model, AutoTokenizer.from_pretrained(path), spec, slow.encode if slow else None)

    @property
    def device(self) -> torch.device:
        return next(self.model.lm_head.parameters()).device  # as stored: no lazy widening

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (under `lazy_upcast`, not the stored one)."""
        head = self.model.lm_head
        if hasattr(head, "parametrizations") and "weight" in head.parametrizations:
            return head.parametrizations.weight[0].dtype  # the _Upcast target: reading .weight widens it
        return head.weight.dtype

    # --- vision -------------------------------------------------------------------------------

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """[T,3,336,336] -> [T,576,D]: projector(CLIP hidden_states[-2] without CLS), full tower.
        `chunk`: run that many frames at a time (frames are independent; the tower's 25 hidden
        states for 50 CLIP-L frames are 3 GB in fp32), None: all at once, as the reference does."""
        tower = self.model.model.vision_tower
        pixels = pixel_values.to(device=self.device, dtype=self.dtype)
        parts, step = [], chunk or max(len(pixels), 1)
        for start in range(0, len(pixels), step):
            hidden = tower(pixels[start:start + step], output_hidden_states=True)
            parts.append(self.model.model.multi_modal_projector(hidden.hidden_states[VISION_FEATURE_LAYER][:, 1:]))
            del hidden
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.no_grad()
    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """[T,576,D] -> [N,D] SlowFast visual tokens (SPEC 4)."""
        return self.pooler(features)

    # --- prompt -------------------------------------------------------------------------------

    def prompt_ids(self, question: str, options: Sequence[str] | None = None) -> list[int]:
        """The SPEC 5 prompt, tokenised piecewise around `<image>` (one image token marks the spot),
        with LLaVA's tokenizer (the slow SentencePiece one where the checkpoint has tokenizer.model)."""
        prompt = build_prompt(question, options, self.prompt_family)
        return tokenize_prompt(prompt, self.encode, self.tokenizer.bos_token_id, self.image_token_id)

    @torch.no_grad()
    def inputs_embeds(self, ids: Sequence[int], visual_tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [1,L,D] with the single image-token position replaced by all visual tokens
        (L = len(ids) - 1 + N)."""
        ids = list(ids)
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"expected exactly one image token ({self.image_token_id}) in the prompt ids, "
                             f"found {ids.count(self.image_token_id)}")
        pos = ids.index(self.image_token_id)
        embeds = self._embed(ids)
        visual = visual_tokens.to(device=self.device, dtype=embeds.dtype)
        return torch.cat([embeds[:pos], visual, embeds[pos + 1:]], dim=0).unsqueeze(0)

    # --- language model -----------------------------------------------------------------------

    @torch.no_grad()
    def first_step_logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Prefill without a cache; the logits [V] for the first generated token."""
        hidden = self.model.model.language_model(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
        return self.model.lm_head(hidden[0, -1]).float()

    @torch.no_grad()
    def generate(self, inputs_embeds: torch.Tensor, gen: GenerationSpec = GenerationSpec(),
                 on_token: Callable[[int], None] | None = None) -> list[int]:
        """New token ids after the prompt: prefill, then one token at a time with the KV cache.
        Stops at EOS (not returned) unless `gen.ignore_eos`, or after `gen.max_new_tokens`.
        `on_token(id)` is called as each token is chosen (its id is on the host by then), EOS too."""
        lm = self.model.model.language_model
        generator = None
        if not gen.greedy and gen.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(gen.seed)
        cache = new_cache(lm)  # one DynamicCache, updated in place by every call
        out = lm(inputs_embeds=inputs_embeds, use_cache=True, **cache)
        ids: list[int] = []
        while len(ids) < gen.max_new_tokens:
            logits = self.model.lm_head(out.last_hidden_state[0, -1]).float()
            token = _next_token(logits, gen, generator)
            if on_token is not None:
                on_token(token)
            if token in self.eos_token_ids and not gen.ignore_eos:
                break
            ids.append(token)
            if len(ids) == gen.max_new_tokens:
                break
            step = self._embed([token]).unsqueeze(0)
            out = lm(inputs_embeds=step, use_cache=True, **cache)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text: special tokens skipped, surrounding whitespace stripped (as the reference)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    # --- end to end ---------------------------------------------------------------------------

    def answer(self, video: str | Path, question: str, options: Sequence[str] | None = None,
               gen: GenerationSpec = GenerationSpec()) -> ReferenceAnswer:
        """Answer a question about a video file (or a directory of frames), SPEC 2-6."""
        from ..runtime.preprocess import preprocess
        from ..runtime.video import load_video

        clip = load_video(video, self.spec.sampling.num_frames)
        pixels = torch.from_numpy(preprocess(clip.frames, self.spec.preprocess))
        visual = self.pool(self.vision_features(pixels))
        ids = self.prompt_ids(question, options)
        new_ids = self.generate(self.inputs_embeds(ids, visual), gen)
        text = self.decode(new_ids)
        return ReferenceAnswer(
            answer=text, token_ids=new_ids, frame_indices=list(clip.indices), num_frames_total=int(clip.total),
            num_visual_tokens=int(visual.shape[0]), choice=parse_choice(text, len(options)) if options else None,
            prompt_ids=ids,
        )

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        """[len(ids), D] token embeddings."""
        table = self.model.model.language_model.get_input_embeddings()
        return table(torch.tensor(list(ids), dtype=torch.long, device=self.device))


def new_cache(lm) -> dict:
    """{argument name: a new DynamicCache} for `lm`'s forward. transformers' current API names the
    KV-cache argument `cache` (5.24 deprecates `past_key_values`, to be removed in 5.40); the 5.x
    releases before the rename call it `past_key_values`. The cache object is mutated in place by
    each call, so the caller never reads it back from the outputs (whose field was renamed too)."""
    import inspect

    from transformers import DynamicCache

    name = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    return {name: DynamicCache(config=lm.config)}


class _Upcast(torch.nn.Module):
    """A parametrization: the stored weight, converted to `dtype` when the module reads it."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.to(self.dtype)


def upcast_lazily(model, dtype: torch.dtype) -> None:
    """Vision tower and projector (small) converted to `dtype` in place; every language-model and
    lm_head tensor (parameters and float buffers) left in the checkpoint's dtype and read through a
    `_Upcast` parametrization, so the LLM computes in `dtype` while memory holds its original size.
    Embedding tables are not converted at all: their looked-up rows are (gather then widen = widen
    then gather), so a lookup never materialises the whole table in `dtype`. Tied weights
    (lm_head = embed_tokens) stay one tensor."""
    from torch.nn.utils import parametrize

    inner = model.model
    inner.vision_tower.to(dtype)
    inner.multi_modal_projector.to(dtype)
    if getattr(inner, "image_newline", None) is not None:
        inner.image_newline.data = inner.image_newline.data.to(dtype)
    for root in (inner.language_model, model.lm_head):
        for module in list(root.modules()):
            if isinstance(module, torch.nn.Embedding):
                if module.weight.dtype != dtype:
                    module.register_forward_hook(lambda _m, _args, out: out.to(dtype))
                continue
            for name, tensor in list(module.named_parameters(recurse=False)):
                if tensor.is_floating_point() and tensor.dtype != dtype:
                    parametrize.register_parametrization(module, name, _Upcast(dtype), unsafe=True)
            for name, buf in list(module.named_buffers(recurse=False)):
                if buf.is_floating_point() and buf.dtype != dtype and buf.dtype != torch.float32:
                    module.register_buffer(name, buf.to(dtype), persistent=False)


def _eos_ids(model, tokenizer) -> frozenset[int]:
    """The ids that end generation: the generation config's eos_token_id (an int or a list), else
    the tokenizer's EOS; plus `<|im_end|>` where the tokenizer has it (ChatML, Yi-34B: llava-hf's
    fast tokenizer names `<|endoftext|>` as EOS while the chat turn ends with `<|im_end|>`)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = set([eos] if isinstance(eos, int) else eos or [])
    im_end = tokenizer.get_vocab().get("<|im_end|>")
    if im_end is not None:
        ids.add(im_end)
    return frozenset(ids)


def _next_token(logits: torch.Tensor, gen: GenerationSpec, generator: torch.Generator | None) -> int:
    """Argmax when greedy; else sample from softmax(logits / temperature) after top-k, then top-p
    (nucleus) filtering, as transformers' TopK and TopP warpers do."""
    if gen.greedy:
        return int(torch.argmax(logits))
    logits = logits / gen.temperature
    if gen.top_k > 0:
        kth = torch.topk(logits, min(gen.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gen.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= 1 - gen.top_p
        remove[-1] = False  # always keep the most likely token
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(0, order, remove), float("-inf"))
    probs = logits.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
