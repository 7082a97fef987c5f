"""VideoLLaMA3 reference: exactly what transformers computes (`VideoLlama3Processor` + `generate`).

Called as the VideoLLaMA3 paper and the issue describe it: the processor samples the DECODED frames
with do_sample_frames=True at fps=1 (max_frames 180, min_frames 4) from transformers' `VideoMetadata`
(never a path: transformers would decode it with torchcodec, absent here), resizes with its rule (the
per-frame pixel budget is the video budget divided by the frame count, factor 28), normalises,
computes the DiffFP compression mask (threshold 0.1, min_tokens 1: the video processor's defaults)
and expands the checkpoint's own chat template (rendered with jinja2 by `apply_chat_template`) into
"Time t.ts:" + kept visual tokens per frame. `generate` is transformers' own, greedy.

The video processor imports torchvision; `sfedge.torchvision_compat` (installed by `import sfedge`)
lets the CUDA build from PyPI import beside the CPU torch. Frames come from sfedge's own decoder
(`sfedge.runtime.video`: PyAV), all of them, with the stream's frame rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SfedgeError

SAMPLING = {"do_sample_frames": True, "fps": 1, "max_frames": 180, "min_frames": 4}


@dataclass
class VL3Answer:
    answer: str
    token_ids: list[int]
    prompt_ids: list[int]
    frame_indices: list[int]
    timestamps: list[float]
    num_frames_total: int
    grid_thw: list[int]
    visual_tokens_total: int
    visual_tokens_kept: int
    inputs: dict = field(default_factory=dict, repr=False)  # the processor's tensors (for parity checks)


def messages(question: str) -> list[dict]:
    """The conversation handed to the checkpoint's chat template: the video, then the question."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]


def require_torchvision() -> None:
    """SfedgeError (one line) unless torchvision imports: transformers' video processor needs it."""
    try:
        import torchvision  # noqa: F401
    except ImportError as e:
        raise SfedgeError("the VideoLLaMA3 reference needs torchvision, the release matching torch: "
                          "scripts/setup.sh installs it, or pip install --no-deps 'torchvision==0.<torch minor + 15>.*' "
                          f"({e})") from None


def load_processor(ckpt: str | Path):
    require_torchvision()
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(ckpt))


def metadata(num_frames: int, fps: float, height: int, width: int):
    """transformers' `VideoMetadata` of a fully decoded video (frames 0..N-1)."""
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(total_num_frames=num_frames, fps=float(fps), width=width, height=height,
                         duration=num_frames / float(fps), frames_indices=list(range(num_frames)))


def process(processor, frames: np.ndarray, fps: float, question: str, **overrides) -> tuple[dict, list[int], list[float]]:
    """The processor's inputs for one video ([N, H, W, 3] uint8, all decoded frames at `fps`) and a
    question: (BatchFeature of tensors, sampled frame indices, their timestamps)."""
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise SfedgeError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    meta = metadata(len(frames), fps, frames.shape[1], frames.shape[2])
    prompt = processor.apply_chat_template(messages(question), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], videos=[frames], video_metadata=[meta], return_tensors="pt",
                       **{**SAMPLING, **overrides})
    inputs.pop("video_metadata", None)
    settings = {**SAMPLING, **overrides}
    indices = processor.video_processor.sample_frames(
        metadata(len(frames), fps, frames.shape[1], frames.shape[2]), fps=settings["fps"],
        max_frames=settings["max_frames"], min_frames=settings["min_frames"]).tolist()
    if len(indices) != int(inputs["video_grid_thw"][0, 0]):
        raise AssertionError(f"sampled {len(indices)} frames, the processor encoded {int(inputs['video_grid_thw'][0, 0])}")
    return inputs, [int(i) for i in indices], [int(i) / float(fps) for i in indices]


class VideoLlama3Reference:
    """The checkpoint's processor and `VideoLlama3ForConditionalGeneration` in fp32 on the CPU."""

    def __init__(self, ckpt: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        from transformers import VideoLlama3ForConditionalGeneration

        self.ckpt = Path(ckpt)
        self._processor = None  # loaded on first use: it needs torchvision, the model does not
        self._tokenizer = None
        self.model = VideoLlama3ForConditionalGeneration.from_pretrained(str(ckpt), dtype=dtype).to(device).eval()
        self.device = torch.device(device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def processor(self):
        if self._processor is None:
            self._processor = load_processor(self.ckpt)
        return self._processor

    @property
    def tokenizer(self):
        if self._processor is not None:
            return self._processor.tokenizer
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.ckpt))
        return self._tokenizer

    def answer_frames(self, frames: np.ndarray, fps: float, question: str, max_new_tokens: int = 32,
                      **overrides) -> VL3Answer:
        inputs, indices, stamps = process(self.processor, frames, fps, question, **overrides)
        inputs = inputs.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        prompt = inputs["input_ids"][0].tolist()
        new = out[0, len(prompt):].tolist()
        eos = _eos_ids(self.model)
        if new and new[-1] in eos:
            new = new[:-1]
        mask = inputs["video_compression_mask"]
        return VL3Answer(
            answer=self.tokenizer.decode(new, skip_special_tokens=True), token_ids=new, prompt_ids=prompt,
            frame_indices=indices, timestamps=stamps, num_frames_total=len(frames),
            grid_thw=inputs["video_grid_thw"][0].tolist(), visual_tokens_total=int(mask.numel()),
            visual_tokens_kept=int(mask.sum()), inputs={k: v.cpu() for k, v in inputs.items()})

    def answer(self, video: str | Path, question: str, max_new_tokens: int = 32, **overrides) -> VL3Answer:
        frames, fps = decode_all(video)
        return self.answer_frames(frames, fps, question, max_new_tokens, **overrides)

    def video_features(self, pixel_values_videos: torch.Tensor, grid_thw: Sequence[int]) -> torch.Tensor:
        """transformers' own vision path for one video: [T*P, 588] -> [T * tokens, D_text] (before the mask)."""
        grid = torch.tensor([list(grid_thw)], dtype=torch.long)
        merge = torch.tensor([2], dtype=torch.long)
        with torch.inference_mode():
            feats = self.model.model.get_video_features(pixel_values_videos.to(self.device, self.model.dtype),
                                                        grid, merge).pooler_output
        return torch.cat(feats, 0)

    def first_step_logits(self, inputs: dict) -> torch.Tensor:
        """The logits of the first generated position for the processor's inputs (mask applied)."""
        with torch.inference_mode():
            return self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits[0, -1].float()


def decode_all(video: str | Path) -> tuple[np.ndarray, float]:
    """Every frame of `video` as uint8 [N, H, W, 3] and the stream's frame rate (PyAV)."""
    import av

    path = Path(video)
    if not path.is_file():
        raise SfedgeError(f"video {str(path)!r} not found")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or None
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise SfedgeError(f"{path}: no video frames")
    if fps is None:
        raise SfedgeError(f"{path}: the stream has no frame rate")
    return np.stack(frames), fps


def _eos_ids(model) -> frozenset[int]:
    eos = model.generation_config.eos_token_id
    return frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
