"""Video -> sampled RGB frames (SPEC 2), with PyAV. Imports only av, numpy and PIL.

Frame n is the n-th frame in presentation order. Counting never decodes: the container
header is used where it is reliable (MP4/MOV), otherwise packets are demuxed and counted,
which reads the file but decodes nothing. Loading decodes only what the sample needs:
sparse samples seek to the keyframe before each wanted frame (frame index -> pts from the
demuxed packet list, so variable frame rate is handled); dense samples decode sequentially.
Only wanted frames are converted to RGB, and decoded frames are dropped one at a time.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import av
except ImportError:  # image directories need no PyAV (e.g. the GPU benchmark machine has none)
    av = None
import numpy as np
from PIL import Image

from ..errors import SfedgeError
from ..spec import sample_frame_indices

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_HEADER_COUNT_FORMATS = ("mov", "mp4")  # demuxers whose stream.frames counts every sample


@dataclass
class VideoFrames:
    """Sampled frames: frames[k] (HxWx3 uint8 RGB) is frame indices[k] of `total`."""

    frames: list[np.ndarray]
    indices: list[int]
    total: int
    source: str


@dataclass(frozen=True)
class _PacketIndex:
    """One demux pass over a video stream: `total` frames; `pts[n]` is frame n's timestamp
    (None when some packet has no or a duplicate pts, so seeking is off); keyframes in frame indices."""

    total: int
    pts: list[int] | None
    keyframes: list[int]


def count_frames(path: str | Path) -> int:
    """The number of decodable frames of a video file, or of image files in a directory."""
    path = _existing(path)
    if path.is_dir():
        return len(_image_files(path))
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0 and any(f in container.format.name.split(",") for f in _HEADER_COUNT_FORMATS):
            return stream.frames
        return _index_packets(container, stream, path).total


def load_video(path: str | Path, num_frames: int = 50, *, seek: bool | None = None,
               sampler: Callable[[int], list[int]] | None = None) -> VideoFrames:
    """Sample `num_frames` frames (SPEC 2) from a video file or an image directory.

    `sampler(total)` -> frame indices replaces SPEC 2's sampling (another model family's rule).
    `seek` forces keyframe seeking (True) or a sequential decode (False); None picks seeking
    when fewer frames are wanted than there are keyframes and every packet has a pts."""
    path = _existing(path)
    sampler = sampler or (lambda total: sample_frame_indices(total, num_frames))
    if path.is_dir():
        return _load_image_dir(path, sampler)
    with _open(path) as container:
        index = _index_packets(container, container.streams.video[0], path)
    if index.total == 0:
        raise SfedgeError(f"no video frames in {path}")
    indices = sampler(index.total)
    wanted = sorted(set(indices))
    if seek is None:
        seek = index.pts is not None and len(wanted) < len(index.keyframes)
    elif seek and index.pts is None:
        raise SfedgeError(f"cannot seek in {path}: its packets lack unique timestamps")
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            decoded = _decode_seeking(container, stream, wanted, index) if seek else _decode_sequential(container, stream, wanted)
        except av.error.FFmpegError as e:
            raise SfedgeError(f"cannot decode {path}: {e}") from None
    missing = [n for n in wanted if n not in decoded]
    if missing:
        raise SfedgeError(f"cannot decode {path}: frame {missing[0]} of {index.total} never came out of the decoder")
    return VideoFrames([decoded[n] for n in indices], indices, index.total, str(path))


def frame_rate(path: str | Path) -> float | None:
    """The video stream's average frame rate (what transformers' PyAV loader records as the video's
    fps), else its guessed rate; None for an image directory or a stream that states neither."""
    path = _existing(path)
    if path.is_dir():
        return None
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _seek(container, stream, pts: int) -> None:
    container.seek(pts, stream=stream, backward=True, any_frame=False)


def _decode_sequential(container, stream, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decode from the start; frame n is the n-th frame out of the decoder."""
    out, todo = {}, set(wanted)
    for n, frame in enumerate(container.decode(stream)):
        if n in todo:
            out[n] = _to_rgb(frame)
            todo.discard(n)
            if not todo:
                break
    return out


def _decode_seeking(container, stream, wanted: list[int], index: _PacketIndex) -> dict[int, np.ndarray]:
    """For each wanted frame, seek to the keyframe at or before it when that keyframe lies
    ahead of the decoder, else keep decoding forward; frames are identified by their pts.
    Falls back to a sequential decode if a seek lands past its target or a pts is unknown."""
    frame_of_pts = {p: n for n, p in enumerate(index.pts)}
    out, frames, position = {}, None, -1  # position: last frame index decoded
    for target in wanted:
        key = index.keyframes[max(bisect.bisect_right(index.keyframes, target) - 1, 0)]
        if frames is None or key > position:
            _seek(container, stream, index.pts[key])
            frames, position = container.decode(stream), -1
        for frame in frames:
            n = frame_of_pts.get(frame.pts)
            if n is None or (position < 0 and n > target):  # unknown pts, or the seek overshot
                container.seek(0)
                return _decode_sequential(container, stream, wanted)
            position = n
            if n >= target:
                break
        if position == target:
            out[target] = _to_rgb(frame)
    return out


def _index_packets(container, stream, path: Path) -> _PacketIndex:
    """Demux (never decode) every packet of `stream`: frame count, pts per frame, keyframes."""
    pts, key_pts, without_pts = [], [], 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the empty packet that ends the stream
                continue
            if packet.pts is None:
                without_pts += 1
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
    except av.error.FFmpegError as e:
        raise SfedgeError(f"cannot read {path}: {e}") from None
    total = len(pts) + without_pts
    pts.sort()
    if without_pts or len(set(pts)) != len(pts) or not key_pts:
        return _PacketIndex(total, None, [])
    frame_of_pts = {p: n for n, p in enumerate(pts)}
    return _PacketIndex(total, pts, sorted(frame_of_pts[p] for p in key_pts))


def _open(path: Path):
    """av.open with a video stream required; errors become one-line SfedgeErrors."""
    if av is None:
        raise SfedgeError(f"reading the video file {path} needs PyAV (pip install av); a directory of frames does not")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e.__class__.__name__
        raise SfedgeError(f"not a readable video file: {path} ({reason})") from None
    if not container.streams.video:
        container.close()
        raise SfedgeError(f"no video stream in {path}")
    return container


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise SfedgeError(f"video not found: {path}")
    return path


def _image_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SfedgeError(f"no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) in {directory}")
    return files


def _load_image_dir(directory: Path, sampler: Callable[[int], list[int]]) -> VideoFrames:
    """Image files in sorted name order are the frames; only the sampled ones are opened."""
    files = _image_files(directory)
    indices = sampler(len(files))
    loaded = {}
    for n in sorted(set(indices)):
        try:
            with Image.open(files[n]) as im:
                loaded[n] = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise SfedgeError(f"cannot read image {files[n]}: {e}") from None
    return VideoFrames([loaded[n] for n in indices], indices, len(files), str(directory))
