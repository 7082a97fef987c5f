"""The OpenAI chat request as the server accepts it (pydantic, strict types), and the response bodies.

Extensions to OpenAI's format, all optional:
* a video content part: `{"type": "video_url", "video_url": {"url": "file://..." | "data:video/...;base64,..."}}`
  (vLLM / SGLang) or `{"type": "input_video", "input_video": {"data": <base64>, "format": "mp4"}}` (llama.cpp);
* `"options": ["...", ...]`: multiple choice, answered with SPEC 5's multiple-choice prompt;
* `"top_k"`: sample among the k most likely tokens (0: all);
* the response's `"sfedge"` object: token ids, sampled frame indices, visual tokens, reused prompt
  tokens, stop reason, the chosen letter (multiple choice) and per-stage timings.
Unknown top-level fields are ignored (clients send many); `n` must be 1.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(strict=True, extra="ignore")


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class VideoURL(BaseModel):
    model_config = STRICT
    url: str


class VideoURLPart(BaseModel):
    model_config = STRICT
    type: Literal["video_url"]
    video_url: VideoURL


class InputVideo(BaseModel):
    model_config = STRICT
    data: str
    format: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,10}$")


class InputVideoPart(BaseModel):
    model_config = STRICT
    type: Literal["input_video"]
    input_video: InputVideo


Part = Annotated[Union[TextPart, VideoURLPart, InputVideoPart], Field(discriminator="type")]
VideoPart = Union[VideoURLPart, InputVideoPart]


class Message(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None

    def parts(self) -> list:
        if self.content is None:
            return []
        return [TextPart(type="text", text=self.content)] if isinstance(self.content, str) else self.content


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = STRICT
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1)
    options: list[str] | None = Field(None, min_length=2, max_length=26)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


# --- responses --------------------------------------------------------------------------

FINISH = {"eos": "stop", "stop": "stop", "max_new_tokens": "length", "length": "length"}


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(result) -> dict:
    """`prompt_tokens` counts every position the prompt takes, the visual tokens included."""
    completion = len(result.token_ids)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
            "total_tokens": result.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": result.reused_prompt_tokens}}


def extension(result) -> dict:
    """The response's `sfedge` object (see the module docstring)."""
    d = {"token_ids": result.token_ids, "frame_indices": result.frame_indices,
         "num_frames_total": result.num_frames_total, "num_visual_tokens": result.num_visual_tokens,
         "reused_prompt_tokens": result.reused_prompt_tokens, "stop_reason": result.stop_reason,
         "timings_ms": result.timings_ms}
    if result.options is not None:
        d["choice"] = result.choice
    return d


def completion(rid: str, model: str, result) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer, "refusal": None},
                         "logprobs": None, "finish_reason": FINISH[result.stop_reason]}],
            "usage": usage(result), "sfedge": extension(result)}


def chunk(rid: str, model: str, created: int, delta: dict | None, finish: str | None = None, *,
          include_usage: bool = False, **extra) -> dict:
    """One `chat.completion.chunk`; `delta` None: the usage chunk (no choices)."""
    d = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
         "system_fingerprint": None,
         "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                               "finish_reason": finish}]}
    if include_usage:
        d["usage"] = None
    d.update(extra)
    return d
