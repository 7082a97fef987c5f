"""The runtime chain: video -> frames -> encoder stage -> answer stage -> text.

`Pipeline(engines_dir)` verifies the manifest (schema, every file's sha256) before loading
anything, then opens each engine once. Two stages, shared by every entry point (`ask`, `watch`,
the server):

* encoder.py: frames -> projected features (preprocessing + the vision engine);
* answer.py: the features of a window + a question -> tokens (SlowFast pooling, the prompt, the
  LLM, with prefix reuse and the overflow policy).

`ask` samples a video per SPEC 2 and composes the two; `ask_frames` answers over exactly the frames
it is given (no re-sampling). Both identify frames by content, so a follow-up question about the
same frames reuses the first one's prefill.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SfedgeError
from ..families import family_of_manifest
from ..manifest import RUNTIME_CACHE, load_manifest
from ..prompts import render_options
from ..spec import GenerationSpec, PipelineSpec
from .answer import Answer, Answerer, Visual
from .encoder import frame_key
from .engines import OrtEngine, check_provider
from .generate import Decoder
from .splice import Splicer
from .tokenizer import TextTokenizer, check_canary
from .trt_engine import TrtEngine, native_plan
from .video import load_video

STAGES = ("decode_video", "preprocess", "vision", "slowfast", "prefill", "decode", "ttft", "total")
PREFIX_CACHE_MB = 1024  # host memory for saved KV prefixes beyond the one in the decoder's buffer


@dataclass
class AskResult:
    """One answer, with the fields of `sfedge ask --json` (`choice`, the letter or None when the
    answer names none, only for multiple choice). `timings_ms["ttft"]`: from the call (video in) to
    the first token; `prefill`: the LLM's part of that."""

    answer: str
    token_ids: list[int]
    frame_indices: list[int]
    num_frames_total: int
    num_visual_tokens: int
    prompt_tokens: int
    reused_prompt_tokens: int
    timings_ms: dict[str, float]
    tokens_per_s: float
    stop_reason: str = "eos"  # "eos", "max_new_tokens", "length" (context full), "stop" or "cancelled"
    choice: str | None = None
    options: list[str] | None = field(default=None, repr=False)
    first_logits: np.ndarray | None = field(default=None, repr=False)  # with record_logits only

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["first_logits"], d["options"]
        if self.options is None:
            del d["choice"]
        return d


class Pipeline:
    """Engines opened once from a verified engines directory."""

    def __init__(self, engines_dir: str | Path, provider: str = "cpu", *, trt_cache_dir: str | Path | None = None,
                 prefill_chunk: int | None = None, threads: int = 0, prefix_cache_mb: float = PREFIX_CACHE_MB,
                 prefix_reuse: bool = True, cuda_graph: bool = False, prune: bool = True):
        """`prefix_cache_mb`: host memory for saved KV prefixes besides the decoder's own buffer (0: the
        buffer's alone); `prefix_reuse` False: every prompt is prefilled whole (cold benchmarks);
        `cuda_graph`: on the CUDA provider, capture the LLM's decode step in a CUDA graph (shared KV
        layout only; off by default until tests/test_gpu.py's captured-loop test has run on a GPU);
        `prune` False is refused: SlowFast-LLaVA has no token pruning (VideoLLaMA3's pipeline has)."""
        root = Path(engines_dir)
        self.manifest = load_manifest(root)  # raises ManifestError before anything is loaded
        if "pipeline" not in self.manifest:  # another family's engines (its own pipeline: open_pipeline)
            raise SfedgeError(f"{root} holds {self.manifest.get('family')} engines: `sfedge ask`, `verify`, `bench` and "
                              "`plan` run them; `watch`, `serve` and `demo` run SlowFast-LLaVA engines only for now")
        if not prune:
            raise SfedgeError("--no-prune: these engines prune no tokens (SlowFast-LLaVA pools every frame); "
                              "pruning is VideoLLaMA3's")
        native = self.manifest.get("tensorrt", {}).get("plans", {})
        # native TensorRT plans for both vision stages need only the CUDA EP (for the LLM)
        check_provider("cuda" if provider == "tensorrt" and {"vision", "slowfast"} <= set(native) else provider)
        self.root, self.provider = root, provider
        self.spec = PipelineSpec.from_dict(self.manifest["pipeline"])
        self.family = family_of_manifest(self.manifest)  # what the engines compute (sfedge/families)
        self.prompt_family = self.manifest.get("prompt_family") or self.family.detect_variant(())
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

        self.max_frames = model.get("max_frames")
        self.encoder = self.family.encoder(engine("vision"), self.spec, self.max_frames)
        slowfast = engine("slowfast")
        shared = shares_buffer(root, comps["llm"])
        # TensorRT takes vision and slowfast; the LLM's GroupQueryAttention (in-place KV buffer)
        # is a CUDA-EP contrib op TensorRT cannot build, so the LLM runs on the CUDA EP.
        llm = engine("llm", "cuda" if provider == "tensorrt" else provider, mem_reuse=shared,
                     cuda_graph=cuda_graph and shared and provider == "cuda")
        decoder, tokenizer, splicer, eos = open_llm_parts(root, self.manifest, llm, shared)
        self.answerer = Answerer(slowfast, decoder, tokenizer, splicer, family=self.family, variant=self.prompt_family,
                                 spec=self.spec, bos=model.get("bos_token_id"),
                                 image_token_id=model["image_token_id"], eos=eos, prefill_chunk=prefill_chunk,
                                 prefix_cache_bytes=int(prefix_cache_mb * 2**20), prefix_reuse=prefix_reuse)
        # what makes visual tokens from frames: part of every visual key (the prefix cache's identity)
        files = self.manifest.get("files", {})
        self._visual_salt = json.dumps([self.spec.to_dict(), {k: v for k, v in sorted(files.items())
                                                               if not k.startswith(("llm", "tokenizer"))}],
                                       sort_keys=True, default=str).encode()

    # the stages' parts, by their old names
    vision = property(lambda self: self.encoder.vision)
    slowfast = property(lambda self: self.answerer.slowfast)
    decoder = property(lambda self: self.answerer.decoder)
    tokenizer = property(lambda self: self.answerer.tokenizer)

    def prompt_ids(self, question: str, options: Sequence[str] | None = None) -> list[int]:
        """SPEC 5 prompt ids with one image token where the visual tokens go."""
        return self.answerer.prompt_ids(question, options)

    def visual(self, frames: Sequence[np.ndarray], timings: dict[str, float] | None = None,
               keys: Sequence[bytes] | None = None) -> Visual:
        """The answer stage's view of these frames: their content key, and their features computed by
        the encoder only if the answer stage asks (the prefix cache may already hold their tokens).
        `keys`: the frames' `frame_key`s when the caller has them."""
        keys = keys if keys is not None else [frame_key(f) for f in frames]
        return self.window(keys, lambda: self.encoder.encode(frames, on_device=True, timings=timings))

    def window(self, keys: Sequence[bytes], features) -> Visual:
        """A window of frames already encoded (live video): the frames' content keys, in order, and a
        callable giving their features [T, 576, D] (stacked only if the answer stage needs them)."""
        h = hashlib.blake2b(self._visual_salt, digest_size=16)
        for k in keys:
            h.update(k)
        return Visual(h.digest(), len(keys), features)

    # --- questions --------------------------------------------------------------------------

    def ask(self, video: str | Path, question: str, options: Sequence[str] | None = None,
            gen: GenerationSpec = GenerationSpec(), on_token=None, *, stop: Sequence[str] = (),
            record_logits: bool = False) -> AskResult:
        """Answer one question about a video file or an image directory (frames sampled per SPEC 2).
        `on_token` receives each piece of text as soon as it is complete. With `record_logits`, the
        result carries the first step's logits (a host copy, for parity checks)."""
        return _drain(self.stream(video, question, options, gen, stop=stop, record_logits=record_logits), on_token)

    def ask_frames(self, frames: Sequence[np.ndarray], question: str, options: Sequence[str] | None = None,
                   gen: GenerationSpec = GenerationSpec(), on_token=None, *, stop: Sequence[str] = (),
                   record_logits: bool = False) -> AskResult:
        """Answer over exactly these frames (HxWx3 uint8 RGB, in order; no re-sampling)."""
        return _drain(self.stream_frames(frames, question, options, gen, stop=stop, record_logits=record_logits),
                      on_token)

    def stream(self, video: str | Path, question: str, options: Sequence[str] | None = None,
               gen: GenerationSpec = GenerationSpec(), *, stop: Sequence[str] = (),
               record_logits: bool = False, cancelled=None) -> Generator[str, None, AskResult]:
        """Yield the answer's text pieces as the tokens are generated; when the iterator is
        exhausted, `self.last_result` holds the AskResult (also the generator's return value).
        Timings: `prefill` is the prompt through the LLM up to the first token, `decode` the tokens
        after it (tokens_per_s counts those); the time the caller spends between pieces (printing
        them, say) is not counted. `cancelled`: a callable asked after every token (see
        `Answerer.stream`)."""
        t0 = time.perf_counter()
        self.answerer.prompt_ids(question, options)  # a bad question fails before the video is read
        clip = load_video(video, self.spec.sampling.num_frames)
        timings = {"decode_video": (time.perf_counter() - t0) * 1e3}
        return (yield from self.stream_visual(self.visual(clip.frames, timings), question, options, gen, stop=stop,
                                              record_logits=record_logits, t0=t0, frame_indices=list(clip.indices),
                                              num_frames_total=int(clip.total), timings=timings, cancelled=cancelled))

    def stream_frames(self, frames: Sequence[np.ndarray], question: str, options: Sequence[str] | None = None,
                      gen: GenerationSpec = GenerationSpec(), *, stop: Sequence[str] = (),
                      record_logits: bool = False, keys: Sequence[bytes] | None = None, cancelled=None
                      ) -> Generator[str, None, AskResult]:
        """`stream` over exactly these frames (see `ask_frames`); `keys`: their `frame_key`s, if known."""
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        return (yield from self.stream_visual(self.visual(frames, timings, keys), question, options, gen, stop=stop,
                                              record_logits=record_logits, t0=t0, timings=timings,
                                              cancelled=cancelled))

    def stream_visual(self, visual: Visual, question: str, options: Sequence[str] | None = None,
                      gen: GenerationSpec = GenerationSpec(), *, stop: Sequence[str] = (), record_logits: bool = False,
                      t0: float | None = None, frame_indices: list[int] | None = None,
                      num_frames_total: int | None = None, timings: dict[str, float] | None = None,
                      cancelled=None) -> Generator[str, None, AskResult]:
        """`stream` over a Visual (`visual` or `window`): the answer stage, wrapped into an AskResult.
        `t0`: when the request began (ttft counts from there); `timings`: stages measured before."""
        self._check_frames(visual.num_frames)
        timings = timings if timings is not None else {}
        answer: Answer = yield from self.answerer.stream(visual, question, options, gen, stop=stop,
                                                         record_logits=record_logits, t0=t0, cancelled=cancelled)
        timings.update(answer.timings_ms)
        indices = frame_indices if frame_indices is not None else list(range(visual.num_frames))
        total = num_frames_total if num_frames_total is not None else visual.num_frames
        self.last_result = AskResult(
            answer=answer.text, token_ids=answer.token_ids, frame_indices=indices, num_frames_total=total,
            num_visual_tokens=answer.num_visual_tokens, prompt_tokens=answer.prompt_tokens,
            reused_prompt_tokens=answer.reused_prompt_tokens,
            timings_ms={k: round(timings.get(k, 0.0), 3) for k in STAGES}, tokens_per_s=answer.tokens_per_s,
            stop_reason=answer.stop_reason, choice=answer.choice, options=list(options) if options else None,
            first_logits=answer.first_logits)
        return self.last_result

    def _check_frames(self, n: int) -> None:
        if n == 0:
            raise SfedgeError("no frames to answer about")
        if self.max_frames and n > self.max_frames:
            raise SfedgeError(f"{n} frames exceed the engines' max_frames {self.max_frames}")


def open_pipeline(engines_dir: str | Path, **options):
    """The pipeline of the family the engines' manifest names (`Family.pipeline`), with `options`
    (provider, cuda_graph ...; `prune` only for a family that prunes)."""
    return family_of_manifest(load_manifest(Path(engines_dir), verify_files=False)).pipeline(engines_dir, **options)


def open_llm_parts(root: Path, manifest: dict, llm, shared: bool) -> tuple[Decoder, TextTokenizer, Splicer, list[int]]:
    """What every family's answer stage opens the same way: the decoder over the LLM engine and its
    embedding table, the tokenizer (checked against the export's canaries), the splice graph on the
    decoder's device, and the EOS ids."""
    model, comps = manifest["model"], manifest["components"]
    decoder = open_decoder(root, manifest, llm, shared)
    tokenizer = TextTokenizer(root / comps["tokenizer"]["path"])
    check_canary(tokenizer, manifest)  # the ids the export's tokenizer guard recorded
    splicer = Splicer(root / comps["splice"]["path"], decoder.device_table, decoder.device)
    eos = model.get("eos_token_ids", model.get("eos_token_id"))
    return decoder, tokenizer, splicer, [eos] if isinstance(eos, int) else list(eos or [])


def open_decoder(root: Path, manifest: dict, llm, shared: bool) -> Decoder:
    """The decoder over an opened LLM engine and the engines' embedding table and greedy step."""
    model, comps = manifest["model"], manifest["components"]
    table = np.load(root / comps["embeddings"]["path"], mmap_mode="r")
    return Decoder(llm, table, root / comps["greedy_step"]["path"], kv_names=kv_names(comps["llm"], model["num_layers"]),
                   num_kv_heads=model["num_kv_heads"], head_dim=model["head_dim"], max_length=model["max_length"],
                   shared=shared)


def _drain(stream: Generator[str, None, AskResult], on_token) -> AskResult:
    while True:
        try:
            piece = next(stream)
        except StopIteration as done:
            return done.value
        if on_token is not None:
            on_token(piece)


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


def kv_names(llm: dict, num_layers: int) -> list[tuple[str, str]]:
    """(past input, present output) name pairs from the manifest's printf patterns (builder defaults)."""
    kv = llm.get("kv_cache", {})
    pairs = []
    for i in range(num_layers):
        for kind in ("key", "value"):
            past = kv.get(f"past_{kind}", f"past_key_values.%d.{kind}")
            present = kv.get(f"present_{kind}", f"present.%d.{kind}")
            pairs.append((past % i, present % i))
    return pairs


def shares_buffer(root: Path, llm: dict) -> bool:
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
