"""The runtime chain: video -> frames -> pixels -> vision -> SlowFast -> splice -> LLM -> text.

`Pipeline(engines_dir)` verifies the manifest (schema, every file's sha256) before loading
anything, then opens each engine once; `.ask()` and `.stream()` reuse them for every question
and video. Visual features go from the vision engine to the SlowFast engine without leaving
the device; the LLM loop is in generate.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SfedgeError
from ..manifest import RUNTIME_CACHE, load_manifest
from ..prompts import build_prompt, parse_choice, render_options, tokenize_prompt
from ..spec import GenerationSpec, PipelineSpec
from .engines import OrtEngine, check_provider
from .generate import Decoder, generate
from .preprocess import preprocess
from .tokenizer import TextTokenizer
from .trt_engine import TrtEngine, native_plan
from .video import load_video

STAGES = ("decode_video", "preprocess", "vision", "slowfast", "prefill", "decode", "total")


@dataclass
class AskResult:
    """One answer, with the fields of `sfedge ask --json` (`choice`, the letter or None when the
    answer names none, only for multiple choice)."""

    answer: str
    token_ids: list[int]
    frame_indices: list[int]
    num_frames_total: int
    num_visual_tokens: int
    timings_ms: dict[str, float]
    tokens_per_s: float
    stop_reason: str = "eos"  # "eos", "max_new_tokens", or "cache_full" (the LLM's max_length reached)
    choice: str | None = None
    options: list[str] | None = field(default=None, repr=False)
    first_logits: np.ndarray | None = field(default=None, repr=False)  # with record_logits only

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["first_logits"], d["options"]
        if self.options is None:
            del d["choice"]
        return d


@dataclass
class Prepared:
    """A question made ready for the LLM: the spliced prompt embeddings and what led to them."""

    embeds: np.ndarray  # [1, L, D]
    frame_indices: list[int]
    num_frames_total: int
    num_visual_tokens: int
    timings_ms: dict[str, float]


class Pipeline:
    """Engines opened once from a verified engines directory."""

    def __init__(self, engines_dir: str | Path, provider: str = "cpu", *, trt_cache_dir: str | Path | None = None,
                 prefill_chunk: int | None = None, threads: int = 0):
        root = Path(engines_dir)
        self.manifest = load_manifest(root)  # raises ManifestError before anything is loaded
        native = self.manifest.get("tensorrt", {}).get("plans", {})
        # native TensorRT plans for both vision stages need only the CUDA EP (for the LLM)
        check_provider("cuda" if provider == "tensorrt" and {"vision", "slowfast"} <= set(native) else provider)
        self.root, self.provider, self.prefill_chunk = root, provider, prefill_chunk
        self.spec = PipelineSpec.from_dict(self.manifest["pipeline"])
        self.family = self.manifest.get("prompt_family", "vicuna")
        model, comps = self.manifest["model"], self.manifest["components"]
        fp16 = self.manifest.get("precision") == "fp16"
        cache = Path(trt_cache_dir) if trt_cache_dir else root / RUNTIME_CACHE

        def engine(name: str, provider: str = provider, **kw) -> OrtEngine | TrtEngine:
            c = comps[name]
            if provider == "tensorrt" and (plan := native_plan(root, self.manifest, name)):
                return TrtEngine(plan, c)  # a plan from `sfedge build`; else the ORT TensorRT EP
            return OrtEngine(root / c["path"], provider, io=c.get("inputs", []), fp16=fp16,
                             trt_cache_dir=cache / name, trt_opt={"T": self.spec.sampling.num_frames},
                             threads=threads, **kw)

        self.vision, self.slowfast = engine("vision"), engine("slowfast")
        shared = _shares_buffer(root, comps["llm"])
        # TensorRT takes vision and slowfast; the LLM's GroupQueryAttention (in-place KV buffer)
        # is a CUDA-EP contrib op TensorRT cannot build, so the LLM runs on the CUDA EP.
        llm = engine("llm", "cuda" if provider == "tensorrt" else provider, mem_reuse=shared)
        table = np.load(root / comps["embeddings"]["path"], mmap_mode="r")
        self.decoder = Decoder(llm, table, root / comps["greedy_step"]["path"],
                               kv_names=_kv_names(comps["llm"], model["num_layers"]),
                               num_kv_heads=model["num_kv_heads"], head_dim=model["head_dim"],
                               max_length=model["max_length"], shared=shared)
        self.tokenizer = TextTokenizer(root / comps["tokenizer"]["path"])
        self.bos, self.image_token_id = model.get("bos_token_id"), model["image_token_id"]
        eos = model.get("eos_token_ids", model.get("eos_token_id"))
        self.eos = frozenset([eos] if isinstance(eos, int) else eos or [])
        self.max_frames = model.get("max_frames")

    # --- steps ------------------------------------------------------------------------------

    def prompt_ids(self, question: str, options: Sequence[str] | None = None) -> list[int]:
        """SPEC 5 prompt ids with one image token where the visual tokens go."""
        try:
            prompt = build_prompt(question, options, self.family)
        except ValueError as e:
            raise SfedgeError(str(e)) from None
        return tokenize_prompt(prompt, self.tokenizer.encode, self.bos, self.image_token_id)

    def prepare(self, video: str | Path, question: str, options: Sequence[str] | None = None) -> Prepared:
        """Decode, sample, preprocess, encode and pool the video; splice it into the prompt."""
        timings: dict[str, float] = {}
        ids = self.prompt_ids(question, options)
        t = time.perf_counter()
        clip = load_video(video, self.spec.sampling.num_frames)
        timings["decode_video"] = _ms(t)
        if self.max_frames and len(clip.frames) > self.max_frames:
            raise SfedgeError(f"{len(clip.frames)} frames exceed the engines' max_frames {self.max_frames}")
        t = time.perf_counter()
        pixels = preprocess(clip.frames, self.spec.preprocess)
        timings["preprocess"] = _ms(t)
        visual = self._visual(pixels, timings)
        expected = self.spec.slowfast.num_tokens(len(clip.frames))
        if visual.shape[0] != expected:
            raise SfedgeError(f"the slowfast engine made {visual.shape[0]} visual tokens for {len(clip.frames)} "
                              f"frames, its manifest's settings say {expected}: engines and manifest disagree")
        return Prepared(self.splice(ids, visual), list(clip.indices), int(clip.total), int(visual.shape[0]), timings)

    def splice(self, ids: Sequence[int], visual: np.ndarray) -> np.ndarray:
        """Token embeddings [1, L, D] with the image token replaced by the visual tokens."""
        ids = list(ids)
        if ids.count(self.image_token_id) != 1:
            raise SfedgeError(f"the prompt must hold exactly one image token, found {ids.count(self.image_token_id)}")
        pos = ids.index(self.image_token_id)
        table = self.decoder.table
        return np.concatenate([table[ids[:pos]], visual.astype(table.dtype), table[ids[pos + 1:]]])[None]

    def _visual(self, pixels: np.ndarray, timings: dict[str, float]) -> np.ndarray:
        t = time.perf_counter()
        (features,) = self.vision.infer({next(iter(self.vision.inputs)): pixels}, on_device=True).values()
        timings["vision"] = _ms(t)
        t = time.perf_counter()
        (visual,) = self.slowfast.infer({next(iter(self.slowfast.inputs)): features}).values()
        timings["slowfast"] = _ms(t)
        return visual.reshape(-1, visual.shape[-1])

    # --- questions --------------------------------------------------------------------------

    def ask(self, video: str | Path, question: str, options: Sequence[str] | None = None,
            gen: GenerationSpec = GenerationSpec(), on_token: Callable[[str], None] | None = None, *,
            record_logits: bool = False) -> AskResult:
        """Answer one question about a video file or an image directory. `on_token` receives each
        piece of text as soon as it is complete. With `record_logits`, the result carries the
        first step's logits (a host copy, for parity checks)."""
        for piece in self.stream(video, question, options, gen, record_logits=record_logits):
            if on_token is not None:
                on_token(piece)
        return self.last_result

    def stream(self, video: str | Path, question: str, options: Sequence[str] | None = None,
               gen: GenerationSpec = GenerationSpec(), *, record_logits: bool = False) -> Iterator[str]:
        """Yield the answer's text pieces as the tokens are generated; when the iterator is
        exhausted, `self.last_result` holds the AskResult. Timings: `prefill` is the prompt through
        the LLM up to the first token, `decode` the tokens after it (tokens_per_s counts those);
        the time the caller spends between pieces (printing them, say) is not counted."""
        start = time.perf_counter()
        prep = self.prepare(video, question, options)
        logits: list[np.ndarray] = []
        tokens: list[int] = []
        text: list[str] = []
        detok = self.tokenizer.stream()
        t_prefill = time.perf_counter()
        t_first = None
        paused = 0.0  # seconds the caller held control between pieces
        for token in generate(self.decoder, prep.embeds, gen, self.eos, prefill_chunk=self.prefill_chunk,
                              on_first_logits=logits.append if record_logits else None):
            t_first = t_first or time.perf_counter()
            tokens.append(token)
            if piece := detok.push(token):
                text.append(piece)
                t_yield = time.perf_counter()
                yield piece
                paused += time.perf_counter() - t_yield
        end = time.perf_counter() - paused
        if tail := detok.flush():
            text.append(tail)
            yield tail
        t_first = t_first or end
        timings = dict(prep.timings_ms, prefill=(t_first - t_prefill) * 1e3, decode=(end - t_first) * 1e3,
                       total=(end - start) * 1e3)
        answer = "".join(text).strip()
        steps = max(len(tokens) - 1, 0)  # tokens made by decode steps (the first comes from prefill)
        self.last_result = AskResult(
            answer=answer, token_ids=tokens, frame_indices=prep.frame_indices,
            num_frames_total=prep.num_frames_total, num_visual_tokens=prep.num_visual_tokens,
            timings_ms={k: round(timings.get(k, 0.0), 3) for k in STAGES},
            tokens_per_s=round(steps / (end - t_first), 3) if steps and end > t_first else 0.0,
            stop_reason=("max_new_tokens" if len(tokens) == gen.max_new_tokens else
                         "cache_full" if self.decoder.length >= self.decoder.max_length else "eos"),
            choice=parse_choice(answer, len(options)) if options else None,
            options=list(options) if options else None, first_logits=logits[0] if logits else None,
        )


def parse_options(text: str) -> list[str]:
    """"A|B|C" -> ["A", "B", "C"]; SfedgeError unless there are 2 to 26 non-empty options."""
    options = [o.strip() for o in text.split("|")]
    if any(not o for o in options):
        raise SfedgeError(f"--options has an empty option: {text!r} (separate options with '|')")
    try:
        render_options(options)
    except ValueError as e:
        raise SfedgeError(f"--options: {e}") from None
    return options


def _kv_names(llm: dict, num_layers: int) -> list[tuple[str, str]]:
    """(past input, present output) name pairs from the manifest's printf patterns (builder defaults)."""
    kv = llm.get("kv_cache", {})
    pairs = []
    for i in range(num_layers):
        for kind in ("key", "value"):
            past = kv.get(f"past_{kind}", f"past_key_values.%d.{kind}")
            present = kv.get(f"present_{kind}", f"present.%d.{kind}")
            pairs.append((past % i, present % i))
    return pairs


def _shares_buffer(root: Path, llm: dict) -> bool:
    """Whether the LLM graph updates one max-length KV buffer in place (GroupQueryAttention with
    past_present_share_buffer): the manifest's llm entry says so, else the builder's genai_config."""
    kv = llm.get("kv_cache", {})
    if "past_present_share_buffer" in kv:
        return bool(kv["past_present_share_buffer"])
    config = (root / llm["path"]).parent / "genai_config.json"
    if config.is_file():
        return bool(json.loads(config.read_text())["search"].get("past_present_share_buffer", False))
    raise SfedgeError(f"cannot tell the LLM's KV-cache layout: no past_present_share_buffer in the manifest "
                      f"and no {config}")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
