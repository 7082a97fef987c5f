"""The VideoLLaMA3 runtime chain: video -> frames sampled by time -> kept visual tokens -> answer.

`VideoLlama3Pipeline(engines_dir)` verifies the manifest, then opens the vision engine and the same
LLM parts as SlowFast-LLaVA (pipeline.open_llm_parts: decoder, tokenizer, splice graph) and the same
answer stage (answer.Answerer: the family's prompt with one visual block per frame, the prefix
cache, the overflow policy, greedy generation). What differs is declared by the family
(families/video_llama_3.py) or lives in runtime/videollama3_*.py: sampling at the manifest's fps,
the per-frame pixel budget, the DiffFP mask (`prune` False: every token), the chat template.

`ask` reports the visual tokens kept and pruned; `--no-prune` is `prune=False`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SfedgeError
from ..families import family_of_manifest
from ..families.video_llama_3 import VARIANT, ChatTemplateContext
from ..manifest import load_manifest
from ..spec import GenerationSpec
from .answer import Answer, Answerer, Visual
from .engines import OrtEngine, check_provider
from .pipeline import PREFIX_CACHE_MB, AskResult, _drain, open_llm_parts, shares_buffer
from .videollama3_preprocess import IMAGE_DIR_FPS, VideoInputs, VideoProcessorSpec, preprocess_frames, sample_indices
from .videollama3_prompt import PromptSpec, video_token_id

STAGES = ("decode_video", "preprocess", "vision", "prefill", "decode", "ttft", "total")


@dataclass
class VideoVisual(Visual):
    """A Visual that knows its frames' timestamps and kept-token counts (the family's layout reads them)."""

    video: VideoInputs | None = None


@dataclass
class VideoLlama3AskResult(AskResult):
    """AskResult plus the pruning: tokens kept (the LLM saw them) and pruned, per video and per frame."""

    visual_tokens_kept: int = 0
    visual_tokens_pruned: int = 0
    kept_per_frame: list[int] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    pruning: bool = True


class VideoLlama3Pipeline:
    """Engines opened once from a verified VideoLLaMA3 engines directory."""

    def __init__(self, engines_dir: str | Path, provider: str = "cpu", *, prune: bool = True,
                 prefill_chunk: int | None = None, threads: int = 0, prefix_cache_mb: float = PREFIX_CACHE_MB,
                 prefix_reuse: bool = True, cuda_graph: bool = False, trt_cache_dir=None):
        root = Path(engines_dir)
        self.manifest = load_manifest(root)
        if provider == "tensorrt":
            raise SfedgeError("VideoLLaMA3 engines run on the cpu and cuda providers (TensorRT: not yet)")
        check_provider(provider)
        self.root, self.provider, self.prune = root, provider, prune
        self.family = family_of_manifest(self.manifest)
        self.processor = VideoProcessorSpec.from_manifest(self.manifest["processor"])
        self.prompt = PromptSpec.from_manifest(self.manifest["prompt"], root)
        model, comps = self.manifest["model"], self.manifest["components"]
        fp16 = self.manifest.get("precision") == "fp16"
        self.max_frames = model.get("max_frames")
        vision = OrtEngine(root / comps["vision"]["path"], provider, io=comps["vision"].get("inputs", []), fp16=fp16,
                           threads=threads)
        self.encoder = self.family.encoder(vision, None, self.max_frames)
        shared = shares_buffer(root, comps["llm"])
        llm = OrtEngine(root / comps["llm"]["path"], provider, io=comps["llm"].get("inputs", []), fp16=fp16,
                        threads=threads, mem_reuse=shared, cuda_graph=cuda_graph and shared and provider == "cuda")
        decoder, tokenizer, splicer, eos = open_llm_parts(root, self.manifest, llm, shared)
        video_id = video_token_id(self.prompt, tokenizer)
        self.answerer = Answerer(None, decoder, tokenizer, splicer, family=self.family, variant=VARIANT, spec=None,
                                 bos=model.get("bos_token_id"), image_token_id=video_id, eos=eos,
                                 prefill_chunk=prefill_chunk, prefix_cache_bytes=int(prefix_cache_mb * 2**20),
                                 prefix_reuse=prefix_reuse)
        self.answerer.prompt_context = ChatTemplateContext(tokenizer.encode, model.get("bos_token_id"), video_id,
                                                           VARIANT, prompt=self.prompt)
        files = self.manifest.get("files", {})
        self._visual_salt = json.dumps([self.manifest["processor"], {k: v for k, v in sorted(files.items())
                                                                    if k.startswith("vision")}],
                                       sort_keys=True, default=str).encode()

    vision = property(lambda self: self.encoder.vision)
    decoder = property(lambda self: self.answerer.decoder)
    tokenizer = property(lambda self: self.answerer.tokenizer)

    def prompt_ids(self, question: str, options: Sequence[str] | None = None) -> list[int]:
        """The prompt ids for one frame at 0 s (checks the question)."""
        return self.answerer.prompt_ids(question, options)

    # --- frames -------------------------------------------------------------------------------

    def preprocess(self, frames: Sequence[np.ndarray], indices: Sequence[int], fps: float,
                   prune: bool | None = None) -> VideoInputs:
        """Sampled frames (frame indices[k] of a video at `fps`) -> VideoInputs (the mask unless `prune` False)."""
        return preprocess_frames(frames, list(indices), fps, self.processor, self.prune if prune is None else prune)

    def visual(self, video: VideoInputs, timings: dict[str, float] | None = None) -> VideoVisual:
        """The answer stage's view of a preprocessed video: its key (pixels, grid, mask, times and the
        engines' identity) and its kept tokens, computed only if the prefix cache lacks them."""
        h = hashlib.blake2b(self._visual_salt, digest_size=16)
        for part in (video.pixel_values, video.keep, np.asarray(video.timestamps), np.asarray(video.grid)):
            h.update(np.ascontiguousarray(part).data)
        return VideoVisual(h.digest(), len(video.indices), lambda: self.encoder.kept_tokens(video, timings), video)

    # --- questions ----------------------------------------------------------------------------

    def ask(self, video: str | Path, question: str, options: Sequence[str] | None = None,
            gen: GenerationSpec = GenerationSpec(), on_token=None, *, stop: Sequence[str] = (),
            record_logits: bool = False, prune: bool | None = None) -> VideoLlama3AskResult:
        """Answer one question about a video file or an image directory (read at IMAGE_DIR_FPS)."""
        return _drain(self.stream(video, question, options, gen, stop=stop, record_logits=record_logits, prune=prune),
                      on_token)

    def ask_frames(self, frames: Sequence[np.ndarray], fps: float, question: str,
                   options: Sequence[str] | None = None, gen: GenerationSpec = GenerationSpec(), on_token=None, *,
                   stop: Sequence[str] = (), record_logits: bool = False,
                   prune: bool | None = None) -> VideoLlama3AskResult:
        """Answer over ALL decoded frames of a video at `fps` (sampled here by the processor's rule)."""
        t0 = time.perf_counter()
        indices = sample_indices(len(frames), fps, self.processor)
        stream = self._stream_sampled([frames[i] for i in indices], indices, fps, len(frames), question, options, gen,
                                      stop=stop, record_logits=record_logits, prune=prune, t0=t0, timings={})
        return _drain(stream, on_token)

    def stream(self, video: str | Path, question: str, options: Sequence[str] | None = None,
               gen: GenerationSpec = GenerationSpec(), *, stop: Sequence[str] = (), record_logits: bool = False,
               prune: bool | None = None, cancelled=None) -> Generator[str, None, VideoLlama3AskResult]:
        """Yield the answer's text pieces; the generator's return value is the result."""
        from .video import frame_rate, load_video

        t0 = time.perf_counter()
        self.answerer.prompt_ids(question, options)  # a bad question fails before the video is read
        fps = IMAGE_DIR_FPS if Path(video).is_dir() else frame_rate(video)
        if not fps:
            raise SfedgeError(f"{video} states no frame rate: VideoLLaMA3 samples frames by time and needs one")
        clip = load_video(video, sampler=lambda total: sample_indices(total, fps, self.processor))
        timings = {"decode_video": (time.perf_counter() - t0) * 1e3}
        return (yield from self._stream_sampled(clip.frames, clip.indices, fps, clip.total, question, options, gen,
                                                stop=stop, record_logits=record_logits, prune=prune, t0=t0,
                                                timings=timings, cancelled=cancelled))

    def _stream_sampled(self, frames, indices, fps, total, question, options, gen, *, stop, record_logits, prune,
                        t0, timings, cancelled=None) -> Generator[str, None, VideoLlama3AskResult]:
        t = time.perf_counter()
        video = self.preprocess(frames, indices, fps, prune)
        timings["preprocess"] = (time.perf_counter() - t) * 1e3
        answer: Answer = yield from self.answerer.stream(self.visual(video, timings), question, options, gen, stop=stop,
                                                         record_logits=record_logits, t0=t0, cancelled=cancelled)
        timings.update(answer.timings_ms)
        self.last_result = VideoLlama3AskResult(
            answer=answer.text, token_ids=answer.token_ids, frame_indices=[int(i) for i in indices],
            num_frames_total=int(total), num_visual_tokens=answer.num_visual_tokens,
            prompt_tokens=answer.prompt_tokens, reused_prompt_tokens=answer.reused_prompt_tokens,
            timings_ms={k: round(timings.get(k, 0.0), 3) for k in STAGES}, tokens_per_s=answer.tokens_per_s,
            stop_reason=answer.stop_reason, first_logits=answer.first_logits,
            visual_tokens_kept=video.kept, visual_tokens_pruned=video.pruned, kept_per_frame=video.kept_per_frame,
            timestamps=[round(t, 4) for t in video.timestamps], pruning=bool(self.prune if prune is None else prune))
        return self.last_result
