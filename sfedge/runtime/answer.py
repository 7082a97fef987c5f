"""The answer stage: the features of a window of frames + a question -> streamed answer tokens.

Pooling over the window's features (SlowFast-LLaVA: SPEC 4), the family's prompt with its visual
blocks spliced in on the LLM's device (splice.py: any number of blocks, the pooled tokens never
come back to the host), then the LLM (generate.py). Before prefilling, the prefix cache
(prefix_cache.py) finds how much of the prompt is already in the KV cache: a second question about
the same frames prefills only the tokens after the visual ones, and needs neither their features nor
their pooling. The overflow policy lives here, once for every entry point: a prompt longer than the
engines' context is refused with the numbers (visual tokens are never truncated); an answer that
reaches the context stops with stop_reason "length".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import SfedgeError
from ..families import Family, PromptContext, VisualBlock
from ..prompts import parse_choice
from ..spec import GenerationSpec, PipelineSpec
from .engines import Engine
from .generate import Decoder, generate
from .prefix_cache import PrefixCache
from .splice import SplicePlan, Splicer, num_rows, segments_from_marked
from .tokenizer import TextTokenizer

STOP_REASONS = ("eos", "max_new_tokens", "length", "stop", "cancelled")


@dataclass
class Visual:
    """The frames a question is about, as the answer stage needs them: `key` identifies their
    content (and the settings that made their features), `features()` computes [T, 576, D] (a numpy
    array or an OrtValue); it is called only when the visual tokens are not in the KV cache already."""

    key: bytes
    num_frames: int
    features: Callable[[], object]


@dataclass
class Answer:
    """One answer: its text and tokens, and what it took. `timings_ms`: slowfast (0 when the visual
    tokens came from the prefix cache), prefill (up to the first token), decode (the rest, without
    the time the consumer held control), ttft (from `t0` to the first token), total (from `t0`)."""

    text: str
    token_ids: list[int]
    num_visual_tokens: int
    prompt_tokens: int  # positions the prompt takes in the LLM, visual tokens included
    reused_prompt_tokens: int  # of those, taken from the prefix cache instead of being prefilled
    timings_ms: dict[str, float]
    tokens_per_s: float
    stop_reason: str  # one of STOP_REASONS
    choice: str | None = None
    first_logits: np.ndarray | None = field(default=None, repr=False)


class Answerer:
    """The pooling engine, the LLM decoder, the splice graph, the tokenizer and the prefix cache,
    opened once, driven by the family's declaration (`family.prompt_ids`, `family.layout`)."""

    def __init__(self, slowfast: Engine, decoder: Decoder, tokenizer: TextTokenizer, splicer: Splicer, *,
                 family: Family, variant: str, spec: PipelineSpec, bos: int | None, image_token_id: int,
                 eos: Collection[int], prefill_chunk: int | None = None, prefix_cache_bytes: int = 0,
                 prefix_reuse: bool = True):
        """`variant`: the family's prompt variant from the manifest (llava_next: "vicuna" / "chatml")."""
        self.slowfast, self.decoder, self.tokenizer, self.splicer = slowfast, decoder, tokenizer, splicer
        self.family, self.spec, self.image_token_id = family, spec, image_token_id
        self.prompt_context = PromptContext(tokenizer.encode, bos, image_token_id, variant)
        self.eos, self.prefill_chunk = frozenset(eos), prefill_chunk
        self.prefix = PrefixCache(decoder, prefix_cache_bytes, enabled=prefix_reuse)
        self._input = next(iter(slowfast.inputs)) if slowfast is not None else None

    def prompt_ids(self, question: str, options: Sequence[str] | None = None,
                   blocks: Sequence[VisualBlock] | None = None) -> list[int]:
        """The family's prompt ids, one image token where each visual block goes (`blocks` None: only
        checking the question)."""
        try:
            return self.family.prompt_ids(self.prompt_context, question, options, blocks)
        except ValueError as e:
            raise SfedgeError(str(e)) from None

    def plan(self, visual: Visual, question: str, options: Sequence[str] | None = None) -> SplicePlan:
        """The prompt's layout: the family's prompt ids split at its visual blocks (see splice.py)."""
        blocks = self.family.layout(self.spec, visual)
        return SplicePlan.build(segments_from_marked(self.prompt_ids(question, options, blocks), self.image_token_id,
                                                     blocks))

    def pool(self, features, *, on_device: bool = False):
        """Features [T, 576, D] -> visual tokens [N, D] (the exported pooling graph); an OrtValue (or
        DeviceTensor) left on the engine's device when `on_device`."""
        if self.slowfast is None:  # a family without a pooling graph: its encoder stage made the tokens
            return features
        (visual,) = self.slowfast.infer({self._input: features}, on_device=on_device).values()
        return visual

    def splice(self, ids: Sequence[int], visual) -> np.ndarray:
        """Token embeddings [1, L, D] (a host copy) of prompt ids holding one image token, with the
        visual tokens [N, D] in its place: the splice graph, for checks and tests."""
        plan = SplicePlan.build(segments_from_marked(ids, self.image_token_id, [VisualBlock(b"", num_rows(visual))]))
        return self.splicer.embeds(plan, visual).numpy()

    def stream(self, visual: Visual, question: str, options: Sequence[str] | None = None,
               gen: GenerationSpec = GenerationSpec(), *, stop: Sequence[str] = (), record_logits: bool = False,
               t0: float | None = None, cancelled: Callable[[], bool] | None = None) -> Generator[str, None, Answer]:
        """Yield the answer's text pieces as tokens are made; the generator's return value (what
        `yield from` gives) is the Answer. `stop`: strings that end the answer where they first
        appear (not included; stop_reason "stop"), also when they span several pieces. `t0`: the
        perf_counter time the caller's request began (ttft and total count from there). `cancelled`:
        asked after every token (also one that completes no text yet); True ends the answer there
        (stop_reason "cancelled"): a server whose client went away stops within one token."""
        t0 = time.perf_counter() if t0 is None else t0
        plan = self.plan(visual, question, options)
        items, n_visual = plan.items, plan.num_visual
        dec = self.decoder
        if len(items) > dec.max_length:
            raise SfedgeError(f"the prompt needs {len(items)} positions ({n_visual} visual tokens for "
                              f"{visual.num_frames} frames + {plan.num_text} text tokens) but the engines' context "
                              f"holds {dec.max_length}: use fewer frames (or a smaller visual budget) or export with a larger context")
        timings = {"slowfast": 0.0}
        start = self.prefix.prepare(items, keep=plan.visual_end)
        if start < plan.visual_end:  # some visual tokens must be prefilled: pool the features, on the device
            features = visual.features()  # lazy: preprocessing and vision run here, timed by the encoder
            t = time.perf_counter()
            pooled = self.pool(features, on_device=True)
            timings["slowfast"] = (time.perf_counter() - t) * 1e3
            if num_rows(pooled) != n_visual:
                raise SfedgeError(f"the visual stage made {num_rows(pooled)} visual tokens for {visual.num_frames} "
                                  f"frames, its manifest's settings say {n_visual}: engines and manifest disagree")
            embeds = self.splicer.embeds(plan, pooled, start)
        else:  # only text after the visual tokens is new
            embeds = dec.table[plan.ids[start:]][None]

        logits: list[np.ndarray] = []
        tokens: list[int] = []
        text: list[str] = []
        detok, stops = self.tokenizer.stream(), StopMatcher(stop)
        t_prefill = time.perf_counter()
        t_first = None
        paused = 0.0  # seconds the consumer held control between pieces
        stopped = halted = False
        for token in generate(dec, embeds, gen, self.eos, prefill_chunk=self.prefill_chunk, start=start,
                              items=items[start:], on_first_logits=logits.append if record_logits else None):
            t_first = t_first or time.perf_counter()
            tokens.append(token)
            piece, stopped = stops.push(detok.push(token))
            if piece:
                text.append(piece)
                t_yield = time.perf_counter()
                yield piece
                paused += time.perf_counter() - t_yield
            if stopped:
                break
            if cancelled is not None and cancelled():
                halted = True
                break
        end = time.perf_counter() - paused
        if not (stopped or halted):
            tail, stopped = stops.push(detok.flush())
            tail += "" if stopped else stops.flush()
            if tail:
                text.append(tail)
                yield tail
        t_first = t_first or end
        timings.update(prefill=(t_first - t_prefill) * 1e3, decode=(end - t_first) * 1e3,
                       ttft=(t_first - t0) * 1e3, total=(end - t0) * 1e3)
        steps = max(len(tokens) - 1, 0)  # tokens made by decode steps (the first comes from prefill)
        answer = "".join(text).strip()
        return Answer(
            text=answer, token_ids=tokens, num_visual_tokens=n_visual, prompt_tokens=len(items),
            reused_prompt_tokens=start, timings_ms=timings,
            tokens_per_s=round(steps / (end - t_first), 3) if steps and end > t_first else 0.0,
            stop_reason=("stop" if stopped else "cancelled" if halted else "max_new_tokens" if len(tokens) == gen.max_new_tokens else
                         "length" if dec.length >= dec.max_length else "eos"),
            choice=parse_choice(answer, len(options)) if options else None,
            first_logits=logits[0] if logits else None,
        )


class StopMatcher:
    """Text pieces in, text out up to the first stop string. Text that could be the start of a stop
    string is held back until the next piece decides it."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Add a piece; return (text that is safe to emit, whether a stop string was found)."""
        if not self.stops:
            return piece, False
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending = self.pending[:min(found)], ""
            return out, True
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
