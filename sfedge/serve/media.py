"""A chat request's conversation -> (question, video part), and a video part -> a file the pipeline reads.

Conversation semantics (SF-LLaVA is single-turn, like `sfedge ask`): the last message must be the
user's; its text is the question, answered as a fresh SPEC 5 prompt over the conversation's latest
video (from that message, or an earlier user message when it carries none). Earlier turns are not in
the LLM's context; system / developer messages are ignored.

Videos: `file://` URLs only under an allowed directory (the real path, after `..` and symlinks, must
lie inside one), `data:video/...;base64,` URLs and `input_video` data up to `max_bytes`, written to a
private temporary file that the caller deletes after use (`Media.release`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import ApiError
from .schemas import ChatRequest, InputVideoPart, TextPart, VideoURLPart

DATA_URL = re.compile(r"^data:(video/[A-Za-z0-9.+-]+|application/octet-stream)(;[^,;]*)*;base64,", re.ASCII)


@dataclass
class Conversation:
    question: str
    video: VideoURLPart | InputVideoPart
    video_message: int  # index of the message holding it


def conversation(req: ChatRequest) -> Conversation:
    """The question and the video it is about (ApiError 400 when either is missing or ambiguous)."""
    last = len(req.messages) - 1
    if req.messages[last].role != "user":
        raise ApiError(400, f"the last message must be the user's (got role {req.messages[last].role!r})",
                       param=f"messages.{last}.role", code="invalid_value")
    video, where = None, -1
    for i, m in enumerate(req.messages):
        videos = [p for p in m.parts() if not isinstance(p, TextPart)]
        if videos and m.role != "user":
            raise ApiError(400, f"a video in a {m.role} message: send videos in user messages",
                           param=f"messages.{i}.content", code="invalid_value")
        if len(videos) > 1:
            raise ApiError(400, f"message {i} holds {len(videos)} videos: one video per message",
                           param=f"messages.{i}.content", code="too_many_videos")
        if videos:
            video, where = videos[0], i
    question = "\n".join(p.text for p in req.messages[last].parts() if isinstance(p, TextPart)).strip()
    if not question:
        raise ApiError(400, "the last user message has no text: ask a question",
                       param=f"messages.{last}.content", code="missing_text")
    if video is None:
        raise ApiError(400, "no video in the conversation: add a video_url or input_video part to a user message",
                       param="messages", code="missing_video")
    return Conversation(question, video, where)


class Media:
    """Turns video parts into paths; owns the server's private temporary directory."""

    def __init__(self, allowed_dirs: list[str | Path], max_bytes: int, tmp_root: str | Path | None = None):
        self.allowed = [Path(d).resolve(strict=True) for d in allowed_dirs]
        self.max_bytes = max_bytes
        self.tmp = Path(tempfile.mkdtemp(prefix="sfedge-serve-", dir=tmp_root))  # mode 0700

    def resolve(self, part: VideoURLPart | InputVideoPart, param: str) -> tuple[Path, bool]:
        """(path, whether it is a temporary file to `release`). Raises ApiError 4xx."""
        if isinstance(part, InputVideoPart):
            data = part.input_video.data
            if data.startswith("data:"):
                return self._data_url(data, f"{param}.input_video.data"), True
            return self._write(data, part.input_video.format or "mp4", f"{param}.input_video.data"), True
        url = part.video_url.url
        if url.startswith("data:"):
            return self._data_url(url, f"{param}.video_url.url"), True
        if url.startswith("file:"):
            return self._file(url, f"{param}.video_url.url"), False
        scheme = urlsplit(url).scheme or "a plain path"
        raise ApiError(400, f"video URLs must be file:// (under an --allowed-dir) or data:video/...;base64, "
                            f"not {scheme}", param=f"{param}.video_url.url", code="invalid_url")

    def release(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def close(self) -> None:
        for p in self.tmp.iterdir():
            p.unlink(missing_ok=True)
        self.tmp.rmdir()

    def _file(self, url: str, param: str) -> Path:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ApiError(400, "a file:// URL must name a local path (file:///path/to/video.mp4)",
                           param=param, code="invalid_url")
        denied = ApiError(403, "the video path is outside the server's allowed directories (--allowed-dir)",
                          param=param, code="path_not_allowed")
        if not self.allowed:
            raise denied
        raw = Path(unquote(parts.path))
        if not raw.is_absolute():
            raise ApiError(400, "a file:// URL needs an absolute path", param=param, code="invalid_url")
        try:
            real = raw.resolve(strict=True)  # `..` and every symlink followed
        except (OSError, RuntimeError):
            # say nothing about paths outside the allowed directories
            if any(Path(os.path.normpath(raw)).is_relative_to(d) for d in self.allowed):
                raise ApiError(400, f"video not found: {raw}", param=param, code="invalid_video") from None
            raise denied from None
        if not any(real.is_relative_to(d) for d in self.allowed):
            raise denied
        return real

    def _data_url(self, url: str, param: str) -> Path:
        m = DATA_URL.match(url)
        if not m:
            raise ApiError(400, "a data URL must look like data:video/<type>;base64,<data>", param=param,
                           code="invalid_url")
        subtype = m.group(1).split("/")[1]
        suffix = {"quicktime": "mov", "x-matroska": "mkv", "x-msvideo": "avi", "octet-stream": "bin"}.get(
            subtype, subtype)
        return self._write(url[m.end():], suffix, param)

    def _write(self, b64: str, suffix: str, param: str) -> Path:
        limit_mb = self.max_bytes / 2**20
        if len(b64) * 3 // 4 > self.max_bytes + 2:
            raise ApiError(413, f"the video is larger than the server's limit of {limit_mb:g} MB (--max-upload-mb)",
                           param=param, code="video_too_large")
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "the video data is not valid base64", param=param, code="invalid_base64") from None
        if not data:
            raise ApiError(400, "the video data is empty", param=param, code="invalid_video")
        if len(data) > self.max_bytes:
            raise ApiError(413, f"the video is larger than the server's limit of {limit_mb:g} MB (--max-upload-mb)",
                           param=param, code="video_too_large")
        fd, name = tempfile.mkstemp(suffix=f".{suffix}", dir=self.tmp)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)
